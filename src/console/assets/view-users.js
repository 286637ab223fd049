// @ts-check
/** Users and roles (admins only): create, change role or password, disable, delete. */
import { h, field } from './dom.js';
import { t } from './i18n.js';
import { api, can, session, qs } from './api.js';
import { page, table, badge, run, toast, confirm, errorBox, message, pager, dialog, fieldRow, when, select, intOrNull } from './ui.js';

const ROLES = ['viewer', 'operator', 'admin'];

/** @type {import('./main.js').View} */
export async function usersView() {
  if (!can('admin')) return page(t('nav.users'), [], errorBox(t('users.admin_only')));
  const list = pager((cursor) => api('GET', `/admin/users${qs({ cursor })}`), (items) => table(items, [
    [t('users.username'), (u) => h('strong', null, u.username)],
    [t('users.role'), (u) => h('select', {
      'aria-label': `${t('users.role')} ${u.username}`, disabled: u.id === session.me?.id,
      onchange: (/** @type {Event} */ e) => run(null, async () => {
        await api('PATCH', `/admin/users/${u.id}`, { role: /** @type {HTMLSelectElement} */ (e.target).value });
        toast(t('common.saved'));
      }),
    }, ROLES.map((r) => h('option', { value: r, selected: r === u.role }, t(`role.${r}`))))],
    [t('users.tenant'), (u) => (u.tenant_id === null ? t('users.global') : String(u.tenant_id))],
    [t('users.state'), (u) => badge(u.disabled ? 'disabled' : 'active')],
    [t('users.created'), (u) => when(u.created_at)],
    ['', (u) => (u.id === session.me?.id ? h('small', { class: 'muted' }, t('users.you')) : h('div', { class: 'row nowrap' },
      h('button', { type: 'button', class: 'ghost small', onclick: (/** @type {Event} */ e) => run(/** @type {HTMLButtonElement} */ (e.target), async () => {
        await api('PATCH', `/admin/users/${u.id}`, { disabled: !u.disabled });
        list.reload();
      }) }, u.disabled ? t('keys.enable') : t('keys.disable')),
      h('button', { type: 'button', class: 'ghost small', onclick: () => {
        const err = h('div');
        const f = h('form', { onsubmit: async (/** @type {Event} */ e) => {
          e.preventDefault();
          try {
            await api('PATCH', `/admin/users/${u.id}`, { password: /** @type {HTMLInputElement} */ (f.elements.namedItem('password')).value });
            d.close();
            toast(t('common.saved'));
          } catch (ex) { err.replaceChildren(errorBox(message(ex))); }
        } }, fieldRow(t('users.new_password'), h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' })), err,
        h('div', { class: 'row end' }, h('button', { type: 'submit' }, t('common.save'))));
        const d = dialog(`${t('users.password')} · ${u.username}`, f);
      } }, t('users.password')),
      h('button', { type: 'button', class: 'ghost small danger-text', onclick: async (/** @type {Event} */ e) => {
        if (!(await confirm(t('users.delete_confirm', { name: u.username })))) return;
        await run(/** @type {HTMLButtonElement} */ (e.target), async () => { await api('DELETE', `/admin/users/${u.id}`); list.reload(); });
      } }, t('common.delete'))))],
  ]));
  const create = () => {
    const err = h('div');
    const f = h('form', { class: 'settings compact', onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      try {
        await api('POST', '/admin/users', {
          username: field(f, 'username'), password: /** @type {HTMLInputElement} */ (f.elements.namedItem('password')).value,
          role: field(f, 'role'), tenant_id: intOrNull(field(f, 'tenant_id')),
        });
        d.close();
        toast(t('common.created'));
        list.first();
      } catch (ex) { err.replaceChildren(errorBox(message(ex))); }
    } },
    fieldRow(t('users.username'), h('input', { name: 'username', required: true, autocomplete: 'off' })),
    fieldRow(t('users.password'), h('input', { name: 'password', type: 'password', required: true, autocomplete: 'new-password' })),
    fieldRow(t('users.role'), select('role', ROLES, 'viewer', (r) => t(`role.${r}`)), t('users.roles_help')),
    fieldRow(t('users.tenant'), h('input', { name: 'tenant_id', type: 'number' }), t('users.tenant_help')),
    err, h('div', { class: 'row end' }, h('button', { type: 'submit' }, t('users.create'))));
    const d = dialog(t('users.new'), f);
  };
  return page(t('nav.users'), [h('button', { type: 'button', onclick: create }, t('users.new'))],
    h('p', { class: 'muted' }, t('users.tenants_note')), list.el);
}

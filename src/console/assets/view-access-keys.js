// @ts-check
/** Access keys (what clients send): create (the key is shown once), limits, budget and spend,
 * allowed slugs, expiry, enable/disable, revoke. */
import { h, field, checked } from './dom.js';
import { t } from './i18n.js';
import { api, can, qs } from './api.js';
import { page, table, badge, run, toast, confirm, errorBox, message, pager, dialog, fieldRow, num, money, when, copyButton, intOrNull, numOrNull } from './ui.js';

/** @param {string | null} iso @returns {string} value for a datetime-local input */
function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

/**
 * Create or edit form.
 * @param {any | null} k
 * @param {string[]} slugs every slug the user can see
 * @param {(r: any) => void} done
 */
function keyForm(k, slugs, done) {
  const err = h('div');
  const form = h('form', {
    class: 'settings compact',
    onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      err.replaceChildren();
      try {
        const exp = field(form, 'expires_at');
        const body = {
          name: field(form, 'name'),
          slugs: slugs.filter((s) => checked(form, `slug:${s}`)),
          rpm: intOrNull(field(form, 'rpm')), tpm: intOrNull(field(form, 'tpm')), rpd: intOrNull(field(form, 'rpd')),
          budget: numOrNull(field(form, 'budget')),
          expires_at: exp ? new Date(exp).toISOString() : null,
          ...(k ? { enabled: checked(form, 'enabled') } : {}),
        };
        const r = k ? await api('PATCH', `/admin/access-keys/${k.id}`, body) : await api('POST', '/admin/access-keys', body);
        done(r);
      } catch (ex) {
        err.replaceChildren(errorBox(message(ex)));
      }
    },
  },
  fieldRow(t('ak.name'), h('input', { name: 'name', required: true, value: k?.name || '' })),
  h('fieldset', null, h('legend', null, t('ak.slugs')), h('small', null, t('ak.slugs_help')),
    h('div', { class: 'checks' }, slugs.map((s) => h('label', null, h('input', { type: 'checkbox', name: `slug:${s}`, checked: k?.slugs?.includes(s) }), s)))),
  h('div', { class: 'grid3' },
    fieldRow(t('ak.rpm'), h('input', { name: 'rpm', type: 'number', min: 0, value: k?.rpm ?? '' })),
    fieldRow(t('ak.tpm'), h('input', { name: 'tpm', type: 'number', min: 0, value: k?.tpm ?? '' })),
    fieldRow(t('ak.rpd'), h('input', { name: 'rpd', type: 'number', min: 0, value: k?.rpd ?? '' }))),
  h('div', { class: 'grid3' },
    fieldRow(t('ak.budget'), h('input', { name: 'budget', type: 'number', step: 'any', min: 0, value: k?.budget ?? '' }), t('ak.blank_unlimited')),
    fieldRow(t('ak.expires'), h('input', { name: 'expires_at', type: 'datetime-local', value: localInput(k?.expires_at) }), t('ak.blank_never')),
    k ? fieldRow(t('ak.enabled'), h('input', { type: 'checkbox', name: 'enabled', checked: k.enabled })) : null),
  err,
  h('div', { class: 'row end' }, h('button', { type: 'submit' }, k ? t('common.save') : t('ak.create'))));
  return form;
}

/** The full key, shown this once. @param {any} r */
function showOnce(r) {
  dialog(t('ak.created_title'), [
    h('p', { class: 'notice' }, t('ak.shown_once')),
    h('div', { class: 'row secret' }, h('code', { 'data-testid': 'new-key' }, r.key), copyButton(r.key)),
  ]);
}

/** @param {any} k */
function spend(k) {
  if (k.budget === null || k.budget === undefined) return h('span', null, money(k.spent), h('small', null, ` / ${t('ak.unlimited')}`));
  const ratio = k.budget > 0 ? Math.min(1, k.spent / k.budget) : 1;
  return h('div', null, `${money(k.spent)} / ${money(k.budget)}`,
    h('progress', { max: 1, value: ratio, class: ratio > 0.9 ? 'hot' : null, 'aria-label': t('ak.spent') }));
}

/** @type {import('./main.js').View} */
export async function accessKeysView() {
  const write = can('operator');
  const services = await api('GET', '/admin/services?limit=1000');
  const slugs = services.items.map((/** @type {any} */ s) => s.slug);
  const list = pager((cursor) => api('GET', `/admin/access-keys${qs({ cursor })}`), (items) => table(items, [
    [t('ak.name'), (k) => h('div', null, h('strong', null, k.name), h('small', null, h('code', null, `${k.prefix}…`)))],
    [t('ak.slugs'), (k) => (k.slugs.length ? k.slugs.join(', ') : h('span', { class: 'muted' }, t('ak.all_slugs')))],
    [t('ak.limits'), (k) => h('small', null, `${num(k.rpm)} ${t('ak.rpm_short')} · ${num(k.tpm)} ${t('ak.tpm_short')} · ${num(k.rpd)} ${t('ak.rpd_short')}`)],
    [t('ak.spent'), spend],
    [t('ak.expires'), (k) => (k.expires_at ? when(k.expires_at) : t('ak.never'))],
    [t('ak.enabled'), (k) => badge(k.enabled && (!k.expires_at || new Date(k.expires_at) > new Date()) ? 'active' : k.enabled ? 'expired' : 'disabled')],
    ['', (k) => (write ? h('div', { class: 'row nowrap' },
      h('button', { type: 'button', class: 'ghost small', onclick: () => {
        const d = dialog(`${t('common.edit')} ${k.name}`, keyForm(k, slugs, () => { d.close(); toast(t('common.saved')); list.reload(); }));
      } }, t('common.edit')),
      h('button', { type: 'button', class: 'ghost small danger-text', onclick: async (/** @type {Event} */ e) => {
        if (!(await confirm(t('ak.revoke_confirm', { name: k.name })))) return;
        await run(/** @type {HTMLButtonElement} */ (e.target), async () => {
          await api('DELETE', `/admin/access-keys/${k.id}`);
          toast(t('ak.revoked'));
          list.reload();
        });
      } }, t('ak.revoke'))) : null)],
  ], t('ak.empty')));
  return page(t('nav.access-keys'), [
    write && h('button', { type: 'button', onclick: () => {
      const d = dialog(t('ak.new'), keyForm(null, slugs, (r) => { d.close(); showOnce(r); list.first(); }));
    } }, t('ak.new')),
  ], list.el);
}

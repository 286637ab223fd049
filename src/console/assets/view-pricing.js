// @ts-check
/** Pricing rules over the built-in defaults, and "which price applies to model X". */
import { h, field, replace } from './dom.js';
import { t } from './i18n.js';
import { api, can, qs } from './api.js';
import { page, table, run, toast, confirm, errorBox, message, pager, dialog, fieldRow, money, numOrNull, intOrNull } from './ui.js';

/** @param {any | null} r @param {string[]} slugs @param {() => void} done */
function ruleForm(r, slugs, done) {
  const err = h('div');
  const num = (/** @type {string} */ name, /** @type {string} */ label) => fieldRow(label, h('input', { name, type: 'number', step: 'any', min: 0, value: r?.[name] ?? '' }));
  const form = h('form', { class: 'settings compact', onsubmit: async (/** @type {Event} */ e) => {
    e.preventDefault();
    try {
      const body = {
        pattern: field(form, 'pattern'), slug: field(form, 'slug') || null, priority: intOrNull(field(form, 'priority')) ?? 0,
        input_per_mtok: numOrNull(field(form, 'input_per_mtok')), output_per_mtok: numOrNull(field(form, 'output_per_mtok')),
        cache_read_per_mtok: numOrNull(field(form, 'cache_read_per_mtok')), cache_write_per_mtok: numOrNull(field(form, 'cache_write_per_mtok')),
        per_request: numOrNull(field(form, 'per_request')),
      };
      if (r) await api('PUT', `/admin/pricing/${r.id}`, body); else await api('POST', '/admin/pricing', body);
      done();
    } catch (ex) { err.replaceChildren(errorBox(message(ex))); }
  } },
  fieldRow(t('price.pattern'), h('input', { name: 'pattern', required: true, value: r?.pattern || '', placeholder: 'gpt-4o*' }), t('price.pattern_help')),
  h('div', { class: 'grid3' },
    fieldRow(t('price.slug'), h('select', { name: 'slug' }, h('option', { value: '' }, t('price.global')), slugs.map((s) => h('option', { value: s, selected: r?.slug === s }, s)))),
    fieldRow(t('price.priority'), h('input', { name: 'priority', type: 'number', min: -1000, max: 1000, value: r?.priority ?? 0 }))),
  h('div', { class: 'grid3' },
    num('input_per_mtok', t('price.input')), num('output_per_mtok', t('price.output')), num('per_request', t('price.per_request')),
    num('cache_read_per_mtok', t('price.cache_read')), num('cache_write_per_mtok', t('price.cache_write'))),
  h('small', { class: 'muted' }, t('price.cache_help')),
  err, h('div', { class: 'row end' }, h('button', { type: 'submit' }, r ? t('common.save') : t('price.create'))));
  return form;
}

/** @type {import('./main.js').View} */
export async function pricingView() {
  const write = can('operator');
  const services = await api('GET', '/admin/services?limit=1000');
  const slugs = services.items.map((/** @type {any} */ s) => s.slug);
  const list = pager((cursor) => api('GET', `/admin/pricing${qs({ cursor })}`), (items) => table(items, [
    [t('price.pattern'), (r) => h('code', null, r.pattern)],
    [t('price.slug'), (r) => r.slug || h('span', { class: 'muted' }, t('price.global'))],
    [t('price.priority'), (r) => String(r.priority)],
    [t('price.input'), (r) => money(r.input_per_mtok)],
    [t('price.output'), (r) => money(r.output_per_mtok)],
    [t('price.cache_rw'), (r) => `${r.cache_read_per_mtok === null ? t('price.as_input') : money(r.cache_read_per_mtok)} / ${r.cache_write_per_mtok === null ? t('price.as_input') : money(r.cache_write_per_mtok)}`],
    [t('price.per_request'), (r) => money(r.per_request)],
    ['', (r) => (write ? h('div', { class: 'row nowrap' },
      h('button', { type: 'button', class: 'ghost small', onclick: () => {
        const d = dialog(`${t('common.edit')} ${r.pattern}`, ruleForm(r, slugs, () => { d.close(); toast(t('common.saved')); list.reload(); }));
      } }, t('common.edit')),
      h('button', { type: 'button', class: 'ghost small danger-text', onclick: async (/** @type {Event} */ e) => {
        if (!(await confirm(t('price.delete_confirm', { p: r.pattern })))) return;
        await run(/** @type {HTMLButtonElement} */ (e.target), async () => { await api('DELETE', `/admin/pricing/${r.id}`); list.reload(); });
      } }, t('common.delete'))) : null)],
  ], t('price.empty')));

  const out = h('div', { 'aria-live': 'polite', 'data-testid': 'price-check' });
  const check = h('form', { class: 'card row check', onsubmit: async (/** @type {Event} */ e) => {
    e.preventDefault();
    try {
      const p = await api('GET', `/admin/pricing/check${qs({ model: field(check, 'model'), slug: field(check, 'slug') })}`);
      replace(out, h('dl', { class: 'facts' },
        [[t('price.source'), p.source === 'rule' ? t('price.src_rule', { id: p.rule_id, slug: p.rule_slug || t('price.global') }) : t('price.src_default', { d: p.prices_taken || '' })],
          [t('price.pattern'), p.pattern], [t('price.priority'), String(p.priority)],
          [t('price.input'), money(p.input_per_mtok)], [t('price.output'), money(p.output_per_mtok)],
          [t('price.cache_read'), p.cache_read_per_mtok === null ? t('price.as_input') : money(p.cache_read_per_mtok)],
          [t('price.cache_write'), p.cache_write_per_mtok === null ? t('price.as_input') : money(p.cache_write_per_mtok)],
          [t('price.per_request'), money(p.per_request)], [t('price.example'), money(p.example_cost_1m_in_1m_out)]]
          .map(([a, b]) => [h('dt', null, a), h('dd', null, b)])));
    } catch (ex) { replace(out, errorBox(ex)); }
  } },
  h('strong', null, t('price.which')),
  h('input', { name: 'model', required: true, placeholder: 'gpt-4o-mini', 'aria-label': t('price.model') }),
  h('select', { name: 'slug', 'aria-label': t('price.slug') }, h('option', { value: '' }, t('price.any_slug')), slugs.map((/** @type {string} */ s) => h('option', { value: s }, s))),
  h('button', { type: 'submit' }, t('price.check')));

  return page(t('nav.pricing'), [
    write && h('button', { type: 'button', onclick: () => {
      const d = dialog(t('price.new'), ruleForm(null, slugs, () => { d.close(); toast(t('common.created')); list.first(); }));
    } }, t('price.new')),
  ], check, out, h('p', { class: 'muted' }, t('price.help')), list.el);
}

// @ts-check
/** The request log: filters kept in the address (so a view can be shared), pages, a detail drawer. */
import { h, field, replace } from './dom.js';
import { t } from './i18n.js';
import { api, qs } from './api.js';
import { page, table, run, errorBox, pager, dialog, num, money, when, download } from './ui.js';

const FILTERS = ['service', 'status', 'model', 'error_kind', 'access_key', 'key', 'streamed', 'from', 'to'];

/** @param {number} s */
function statusBadge(s) {
  const cls = s >= 500 ? 'invalid' : s >= 400 ? 'cooling' : 'active';
  return h('span', { class: ['badge', `b-${cls}`] }, String(s));
}

/** A captured body, indented when it is JSON (it may be cut short, then it stays as it is). @param {string} b */
function pretty(b) {
  try {
    return JSON.stringify(JSON.parse(b), null, 2);
  } catch {
    return b;
  }
}

/** @param {string} id */
async function detail(id) {
  const d = dialog(t('logs.detail'), h('p', null, t('common.loading')), { drawer: true });
  try {
    const r = await api('GET', `/admin/logs/${encodeURIComponent(id)}`);
    const rows = [
      ['id', h('code', null, r.id)], [t('logs.time'), when(r.ts)], [t('logs.service'), r.service],
      [t('logs.target'), r.target], [t('logs.path'), h('code', null, r.path)], [t('logs.status'), statusBadge(r.status)],
      [t('logs.error_kind'), r.error_kind], [t('logs.model'), r.model], [t('logs.upstream_model'), r.upstream_model],
      [t('logs.formats'), r.client_format ? `${r.client_format} → ${r.upstream_format || r.client_format}` : null],
      [t('logs.latency'), `${num(r.latency_ms)} ms`], [t('logs.ttft'), r.ttft_ms === null ? null : `${num(r.ttft_ms)} ms`],
      [t('logs.attempts'), String(r.attempts)],
      [t('logs.key'), r.key ? h('code', null, r.key) : null],
      [t('logs.tried'), r.tried.length ? h('ol', null, r.tried.map((/** @type {any} */ k) => h('li', null, h('code', null, k.key || `#${k.key_id}`)))) : null],
      [t('logs.access_key'), r.access_key_id === null ? null : `#${r.access_key_id}`],
      [t('logs.tokens'), `${num(r.prompt_tokens)} + ${num(r.completion_tokens)}${r.estimated ? ` (${t('logs.estimated')})` : ''}`],
      [t('logs.cache'), `${num(r.cache_read_tokens)} / ${num(r.cache_write_tokens)}`],
      [t('logs.cost'), money(r.cost)],
      [t('logs.flags'), [r.streamed && t('logs.streamed_flag'), r.cancelled && t('logs.cancelled')].filter(Boolean).join(', ') || null],
      [t('logs.request_body'), r.request_body ? h('pre', { class: 'body' }, pretty(r.request_body)) : null],
      [t('logs.response_body'), r.response_body ? h('pre', { class: 'body' }, pretty(r.response_body)) : null],
    ];
    replace(d.body, h('dl', { class: 'facts', 'data-testid': 'log-detail' },
      rows.filter(([, v]) => v !== null && v !== undefined && v !== '').map(([a, b]) => [h('dt', null, a), h('dd', null, b)])));
  } catch (e) {
    replace(d.body, errorBox(e));
  }
}

/** @param {string} iso @returns {string} */
function toLocal(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  return new Date(d.getTime() - d.getTimezoneOffset() * 60000).toISOString().slice(0, 16);
}

/** @type {import('./main.js').View} */
export async function logsView(_params, query) {
  const services = await api('GET', '/admin/services?limit=1000');
  /** @type {Record<string, string>} */
  const f = Object.fromEntries(FILTERS.map((k) => [k, query.get(k) || '']));
  const form = h('form', { class: 'filters card', 'aria-label': t('logs.filters'), onsubmit: (/** @type {Event} */ e) => {
    e.preventDefault();
    /** @type {Record<string, string>} */
    const next = {};
    for (const k of FILTERS) {
      const v = field(form, k);
      if (v) next[k] = (k === 'from' || k === 'to') ? new Date(v).toISOString() : v;
    }
    location.hash = `#/logs${qs(next)}`;
  } },
  h('label', null, t('logs.service'), h('select', { name: 'service' }, h('option', { value: '' }, t('logs.any')),
    services.items.map((/** @type {any} */ s) => h('option', { value: s.slug, selected: s.slug === f.service }, s.slug)))),
  h('label', null, t('logs.status'), h('input', { name: 'status', value: f.status, placeholder: '4xx', size: 5 })),
  h('label', null, t('logs.model'), h('input', { name: 'model', value: f.model })),
  h('label', null, t('logs.error_kind'), h('input', { name: 'error_kind', value: f.error_kind })),
  h('label', null, t('logs.access_key_id'), h('input', { name: 'access_key', value: f.access_key, size: 5, inputmode: 'numeric' })),
  h('label', null, t('logs.key_id'), h('input', { name: 'key', value: f.key, size: 5, inputmode: 'numeric' })),
  h('label', null, t('logs.streamed'), h('select', { name: 'streamed' }, ['', 'true', 'false'].map((v) => h('option', { value: v, selected: v === f.streamed }, v ? t(`common.${v}`) : t('logs.any'))))),
  h('label', null, t('logs.from'), h('input', { name: 'from', type: 'datetime-local', value: toLocal(f.from) })),
  h('label', null, t('logs.to'), h('input', { name: 'to', type: 'datetime-local', value: toLocal(f.to) })),
  h('div', { class: 'row' }, h('button', { type: 'submit' }, t('logs.apply')), h('a', { class: 'button ghost', href: '#/logs' }, t('logs.clear'))));

  const list = pager((cursor) => api('GET', `/admin/logs${qs({ ...f, cursor, limit: 50 })}`), (items) => table(items, [
    [t('logs.time'), (r) => h('button', { type: 'button', class: 'link', onclick: () => detail(r.id) }, when(r.ts))],
    [t('logs.service'), (r) => r.service],
    [t('logs.model'), (r) => r.model || '–'],
    [t('logs.status'), (r) => h('span', null, statusBadge(r.status), r.error_kind ? h('small', null, r.error_kind) : null)],
    [t('logs.latency'), (r) => `${num(r.latency_ms)} ms`],
    [t('logs.tokens'), (r) => `${num(r.prompt_tokens)} + ${num(r.completion_tokens)}`],
    [t('logs.cost'), (r) => money(r.cost)],
    [t('logs.key'), (r) => (r.key ? h('code', null, r.key) : '–')],
  ], t('logs.empty')));

  const exp = h('button', { type: 'button', class: 'ghost', onclick: () => run(exp, async () => {
    const text = await api('GET', `/admin/logs/export${qs({ ...f, format: 'csv' })}`);
    download('keygate-logs.csv', text, 'text/csv');
  }) }, t('logs.export'));
  const refresh = h('button', { type: 'button', class: 'ghost', onclick: () => list.first() }, t('common.refresh'));
  return page(t('nav.logs'), [refresh, exp], form, h('div', { 'data-testid': 'logs-table' }, list.el));
}

// @ts-check
/** Services (slugs): the list, and one form that creates or edits every setting. */
import { h } from './dom.js';
import { t } from './i18n.js';
import { api, can } from './api.js';
import { page, table, badge, run, toast, confirm, errorBox, message, fieldRow, pager } from './ui.js';

export const KINDS = ['openai', 'anthropic', 'gemini', 'rest', 'router'];
const STRATEGIES = ['round_robin', 'weighted', 'least_used', 'random', 'balance', 'latency', 'success_rate', 'cost'];
const ADAPTERS = ['', 'openai_billing', 'openrouter', 'siliconflow', 'deepseek', 'moonshot', 'custom'];

/** @type {import('./main.js').View} */
export async function servicesView() {
  const write = can('operator');
  const list = pager((cursor) => api('GET', `/admin/services${cursor ? `?cursor=${encodeURIComponent(cursor)}` : ''}`), (items) => table(items, [
    [t('svc.slug'), (s) => h('a', { href: `#/services/${s.slug}` }, s.slug)],
    [t('svc.name'), (s) => s.name],
    [t('svc.kind'), (s) => s.kind],
    [t('svc.strategy'), (s) => t(`strategy.${s.strategy}`)],
    [t('svc.enabled'), (s) => badge(s.enabled ? 'active' : 'disabled')],
    ['', (s) => h('div', { class: 'row' },
      h('a', { class: 'button ghost small', href: `#/services/${s.slug}/keys` }, t('svc.keys')),
      h('a', { class: 'button ghost small', href: `#/services/${s.slug}/connect` }, t('svc.connect')),
      write ? h('button', {
        type: 'button', class: 'ghost small danger-text',
        onclick: async (/** @type {Event} */ e) => {
          if (!(await confirm(t('svc.delete_confirm', { slug: s.slug })))) return;
          await run(/** @type {HTMLButtonElement} */ (e.target), async () => {
            await api('DELETE', `/admin/services/${s.slug}`);
            toast(t('common.deleted'));
            list.first();
          });
        },
      }, t('common.delete')) : null)],
  ], t('svc.empty')));
  return page(t('nav.services'), [write && h('a', { class: 'button', href: '#/services/new' }, t('svc.new'))], list.el);
}

/** @param {Record<string, string>} o */
function lines(o) {
  return Object.entries(o || {}).map(([k, v]) => `${k} = ${v}`).join('\n');
}

/**
 * The form's text values for a service (or the defaults of a new one).
 * @param {any} s
 * @returns {Record<string, string>}
 */
function valuesOf(s) {
  const b = s?.balance_sync || {};
  const str = (/** @type {any} */ v) => (v === null || v === undefined ? '' : String(v));
  return {
    slug: str(s?.slug), name: str(s?.name), kind: s?.kind || 'openai', base_url: str(s?.base_url),
    enabled: s ? String(s.enabled) : 'true',
    auth_header: str(s?.auth_header), auth_format: str(s?.auth_format),
    strategy: s?.strategy || 'round_robin', responses: s?.responses || 'auto',
    max_attempts: str(s?.max_attempts), retry_on: (s?.retry_on || []).join(', '),
    request_timeout_ms: str(s?.request_timeout_ms), total_timeout_ms: str(s?.total_timeout_ms),
    queue_timeout_ms: str(s?.queue_timeout_ms), lease_ttl_ms: str(s?.lease_ttl_ms),
    key_concurrency: str(s?.key_concurrency),
    model_aliases: lines(s?.model_aliases), model_allow: (s?.model_allow || []).join('\n'),
    routes: (s?.routes || []).map((/** @type {any} */ r) => `${r.model} -> ${r.targets.join(', ')}`).join('\n'),
    affinity: s?.affinity || 'none', affinity_header: str(s?.affinity_header), affinity_ttl_s: str(s?.affinity_ttl_s),
    validate_interval_s: str(s?.validate_interval_s), validate_concurrency: str(s?.validate_concurrency),
    sync_adapter: str(b.adapter), sync_interval_s: str(b.interval_s), sync_min_balance: str(b.min_balance ?? ''),
    sync_method: str(b.method || ''), sync_path: str(b.path), sync_remaining_pointer: str(b.remaining_pointer),
    sync_total_pointer: str(b.total_pointer), sync_used_pointer: str(b.used_pointer), sync_currency_pointer: str(b.currency_pointer),
    upstream_headers: Object.entries(s?.upstream_headers || {}).map(([k, v]) => `${k}: ${v}`).join('\n'),
    egress_proxy: str(s?.egress_proxy), api_version: str(s?.api_version), deployment_path: str(s?.deployment_path),
    // Only the certificates' hashes come back; the field holds a new bundle to send.
    tls_ca_pem: '',
    capture: s?.capture ? 'true' : 'false', capture_max_bytes: str(s?.capture?.max_bytes),
    capture_redact: (s?.capture?.redact || []).join(', '),
  };
}

/** @param {string} v @param {string} what */
function int(v, what) {
  if (v === '') return null;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(`${what}: ${t('error.integer', { v })}`);
  return n;
}

/** @param {string} text @param {string} sep @returns {[string, string][]} */
function pairs(text, sep) {
  return text.split('\n').map((l) => l.trim()).filter(Boolean).map((l) => {
    const i = l.indexOf(sep);
    if (i < 0) throw new Error(t('svc.bad_line', { line: l, sep }));
    return [l.slice(0, i).trim(), l.slice(i + sep.length).trim()];
  });
}

/**
 * The API body a form's values stand for (every field; a PATCH sends only the changed ones).
 * @param {Record<string, string>} v
 * @returns {Record<string, any>}
 */
function bodyOf(v) {
  const opt = (/** @type {string} */ x) => (x === '' ? null : x);
  const retry = v.retry_on.split(/[,\s]+/).filter(Boolean).map((r) => (/^\d+$/.test(r) ? Number(r) : r));
  const sync = v.sync_adapter === '' ? null : {
    adapter: v.sync_adapter,
    interval_s: int(v.sync_interval_s, 'interval_s'),
    min_balance: v.sync_min_balance === '' ? 0 : Number(v.sync_min_balance),
    ...(v.sync_adapter === 'custom' ? {
      method: opt(v.sync_method), path: opt(v.sync_path), remaining_pointer: opt(v.sync_remaining_pointer),
      total_pointer: opt(v.sync_total_pointer), used_pointer: opt(v.sync_used_pointer), currency_pointer: opt(v.sync_currency_pointer),
    } : {}),
  };
  return {
    name: opt(v.name), base_url: opt(v.base_url), enabled: v.enabled === 'true',
    auth_header: opt(v.auth_header), auth_format: opt(v.auth_format),
    strategy: v.strategy, responses: v.responses,
    max_attempts: int(v.max_attempts, 'max_attempts'), retry_on: retry.length ? retry : null,
    request_timeout_ms: int(v.request_timeout_ms, 'request_timeout_ms'), total_timeout_ms: int(v.total_timeout_ms, 'total_timeout_ms'),
    queue_timeout_ms: int(v.queue_timeout_ms, 'queue_timeout_ms'), lease_ttl_ms: int(v.lease_ttl_ms, 'lease_ttl_ms'),
    key_concurrency: int(v.key_concurrency, 'key_concurrency'),
    model_aliases: Object.fromEntries(pairs(v.model_aliases, '=')),
    model_allow: v.model_allow.split('\n').map((l) => l.trim()).filter(Boolean),
    routes: pairs(v.routes, '->').map(([model, targets]) => ({ model, targets: targets.split(/[,\s]+/).filter(Boolean) })),
    affinity: v.affinity, affinity_header: opt(v.affinity_header), affinity_ttl_s: int(v.affinity_ttl_s, 'affinity_ttl_s'),
    validate_interval_s: int(v.validate_interval_s, 'validate_interval_s'), validate_concurrency: int(v.validate_concurrency, 'validate_concurrency'),
    balance_sync: sync,
    upstream_headers: Object.fromEntries(pairs(v.upstream_headers, ':')),
    egress_proxy: v.egress_proxy, api_version: v.api_version, deployment_path: v.deployment_path,
    tls_ca_pem: v.tls_ca_pem,
    capture: v.capture === 'true' ? {
      ...(v.capture_max_bytes ? { max_bytes: int(v.capture_max_bytes, 'capture.max_bytes') } : {}),
      redact: v.capture_redact.split(/[,\s]+/).filter(Boolean),
    } : null,
  };
}

/** @type {import('./main.js').View} */
export async function serviceFormView(params) {
  const slug = params.slug;
  const svc = slug ? await api('GET', `/admin/services/${encodeURIComponent(slug)}`) : null;
  const write = can('operator');
  const init = valuesOf(svc);
  const err = h('div');

  /** @param {string} name @param {string} label @param {{type?: string, help?: string, options?: string[], optLabel?: (o: string) => string, area?: boolean, placeholder?: string, disabled?: boolean}} [o] */
  const f = (name, label, o = {}) => {
    /** @type {HTMLElement} */
    let control;
    const common = { name, disabled: o.disabled || !write, placeholder: o.placeholder };
    if (o.options) {
      control = h('select', common, o.options.map((x) => h('option', { value: x, selected: x === init[name] }, o.optLabel ? o.optLabel(x) : x)));
    } else if (o.area) {
      control = h('textarea', { ...common, rows: 3 }, init[name]);
    } else {
      control = h('input', { ...common, type: o.type || 'text', value: init[name] });
    }
    return fieldRow(label, control, o.help);
  };
  const routesSet = h('fieldset', { class: 'router-only' }, h('legend', null, t('svc.sec_routes')),
    f('routes', t('svc.routes'), { area: true, help: t('svc.routes_help'), placeholder: 'gpt-* -> openai, backup' }));
  const form = h('form', {
    class: 'settings', 'data-testid': 'service-form',
    onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      err.replaceChildren();
      /** @type {Record<string, string>} */
      const cur = {};
      for (const k of Object.keys(init)) {
        const el = /** @type {HTMLInputElement | null} */ (form.elements.namedItem(k));
        cur[k] = el ? (el.type === 'checkbox' ? String(el.checked) : el.value.trim()) : init[k];
      }
      try {
        const now = bodyOf(cur);
        if (svc) {
          const before = bodyOf(init);
          /** @type {Record<string, any>} */
          const patch = {};
          for (const k of Object.keys(now)) if (JSON.stringify(now[k]) !== JSON.stringify(before[k])) patch[k] = now[k];
          await api('PATCH', `/admin/services/${encodeURIComponent(svc.slug)}`, patch);
          toast(t('common.saved'));
          location.hash = '#/services';
        } else {
          /** @type {Record<string, any>} */
          const body = { slug: cur.slug, kind: cur.kind };
          for (const [k, v] of Object.entries(now)) {
            const empty = v === null || v === '' || (Array.isArray(v) && !v.length) || (typeof v === 'object' && v && !Array.isArray(v) && !Object.keys(v).length);
            if (!empty) body[k] = v;
          }
          await api('POST', '/admin/services', body);
          toast(t('common.created'));
          location.hash = `#/services/${cur.slug}/keys`;
        }
      } catch (ex) {
        err.replaceChildren(errorBox(message(ex)));
      }
    },
  },
  h('fieldset', null, h('legend', null, t('svc.sec_basics')),
    svc ? null : f('slug', t('svc.slug'), { help: t('svc.slug_help'), placeholder: 'openai-main' }),
    f('name', t('svc.name')),
    f('kind', t('svc.kind'), { options: KINDS, disabled: !!svc }),
    f('base_url', t('svc.base_url'), { help: t('svc.base_url_help'), placeholder: 'https://api.openai.com/v1' }),
    fieldRow(t('svc.enabled'), h('input', { type: 'checkbox', name: 'enabled', checked: init.enabled === 'true', disabled: !write }))),
  h('fieldset', null, h('legend', null, t('svc.sec_auth')),
    f('auth_header', t('svc.auth_header'), { placeholder: 'authorization', help: t('svc.auth_help') }),
    f('auth_format', t('svc.auth_format'), { placeholder: 'Bearer {key}' })),
  h('fieldset', null, h('legend', null, t('svc.sec_routing')),
    f('strategy', t('svc.strategy'), { options: STRATEGIES, optLabel: (o) => t(`strategy.${o}`) }),
    f('max_attempts', t('svc.max_attempts'), { type: 'number' }),
    f('retry_on', t('svc.retry_on'), { help: t('svc.retry_help'), placeholder: 'auth, quota, rate_limit, server_error, timeout, connect' }),
    f('key_concurrency', t('svc.key_concurrency'), { type: 'number', help: t('svc.blank_default') }),
    f('request_timeout_ms', t('svc.request_timeout_ms'), { type: 'number' }),
    f('total_timeout_ms', t('svc.total_timeout_ms'), { type: 'number' }),
    f('queue_timeout_ms', t('svc.queue_timeout_ms'), { type: 'number' }),
    f('lease_ttl_ms', t('svc.lease_ttl_ms'), { type: 'number' })),
  h('fieldset', null, h('legend', null, t('svc.sec_models')),
    f('model_aliases', t('svc.model_aliases'), { area: true, placeholder: 'gpt4 = gpt-4o', help: t('svc.aliases_help') }),
    f('model_allow', t('svc.model_allow'), { area: true, placeholder: 'gpt-4o*', help: t('svc.allow_help') })),
  routesSet,
  h('fieldset', null, h('legend', null, t('svc.sec_affinity')),
    f('affinity', t('svc.affinity'), { options: ['none', 'session'], optLabel: (o) => t(`affinity.${o}`) }),
    f('affinity_header', t('svc.affinity_header'), { placeholder: 'x-session-id' }),
    f('affinity_ttl_s', t('svc.affinity_ttl_s'), { type: 'number' })),
  h('fieldset', null, h('legend', null, t('svc.sec_sync')),
    f('sync_adapter', t('svc.sync_adapter'), { options: ADAPTERS, optLabel: (o) => o || t('svc.sync_off') }),
    f('sync_interval_s', t('svc.sync_interval_s'), { type: 'number', help: t('svc.sync_interval_help') }),
    f('sync_min_balance', t('svc.sync_min_balance'), { type: 'number' }),
    f('sync_method', t('svc.sync_method'), { options: ['', 'GET', 'POST'] }),
    f('sync_path', t('svc.sync_path'), { placeholder: '/v1/user/balance' }),
    f('sync_remaining_pointer', t('svc.sync_remaining_pointer'), { placeholder: '/data/balance' }),
    f('sync_total_pointer', t('svc.sync_total_pointer')),
    f('sync_used_pointer', t('svc.sync_used_pointer')),
    f('sync_currency_pointer', t('svc.sync_currency_pointer')),
    f('validate_interval_s', t('svc.validate_interval_s'), { type: 'number', help: t('svc.validate_help') }),
    f('validate_concurrency', t('svc.validate_concurrency'), { type: 'number' })),
  h('fieldset', null, h('legend', null, t('svc.sec_capture')),
    fieldRow(t('svc.capture'), h('input', { type: 'checkbox', name: 'capture', checked: init.capture === 'true', disabled: !write }), t('svc.capture_help')),
    f('capture_max_bytes', t('svc.capture_max_bytes'), { type: 'number', placeholder: '16384' }),
    f('capture_redact', t('svc.capture_redact'), { placeholder: 'messages, input', help: t('svc.capture_redact_help') })),
  h('fieldset', null, h('legend', null, t('svc.sec_advanced')),
    f('responses', t('svc.responses'), { options: ['auto', 'passthrough', 'translate'] }),
    f('upstream_headers', t('svc.upstream_headers'), { area: true, placeholder: 'x-team: research' }),
    f('egress_proxy', t('svc.egress_proxy'), { placeholder: 'socks5h://proxy:1080' }),
    f('api_version', t('svc.api_version')),
    f('deployment_path', t('svc.deployment_path'), { placeholder: 'deployments/{model}' }),
    f('tls_ca_pem', t('svc.tls_ca_pem'), { area: true, placeholder: '-----BEGIN CERTIFICATE-----',
      help: t('svc.tls_ca_help', { n: svc && svc.tls_ca_sha256.length ? svc.tls_ca_sha256.map((/** @type {string} */ h) => h.slice(0, 12)).join(', ') : '–' }) })),
  err,
  write ? h('div', { class: 'row end sticky' },
    h('a', { class: 'button ghost', href: '#/services' }, t('common.cancel')),
    h('button', { type: 'submit' }, svc ? t('common.save') : t('svc.create'))) : null);

  const kindSel = /** @type {HTMLSelectElement} */ (form.elements.namedItem('kind'));
  const syncKind = () => routesSet.classList.toggle('hidden', kindSel.value !== 'router');
  kindSel.addEventListener('change', syncKind);
  syncKind();
  return page(svc ? `${t('svc.edit')} ${svc.slug}` : t('svc.new'), [
    svc && h('a', { class: 'button ghost', href: `#/services/${svc.slug}/keys` }, t('svc.keys')),
    svc && h('a', { class: 'button ghost', href: `#/services/${svc.slug}/connect` }, t('svc.connect')),
  ], form);
}

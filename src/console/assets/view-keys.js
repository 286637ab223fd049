// @ts-check
/** A service's upstream keys: import with a per-line report, status and balance, test and sync,
 * batch actions by selection or by status, per-key stats. Keys are only ever shown masked. */
import { h, replace, field } from './dom.js';
import { t } from './i18n.js';
import { api, can, qs } from './api.js';
import { lineChart } from './charts.js';
import { page, table, badge, run, toast, confirm, errorBox, pager, dialog, fieldRow, num, money, pct, ago, when, download, intOrNull, numOrNull } from './ui.js';

const STATUSES = ['active', 'cooling', 'exhausted', 'invalid', 'disabled'];

/** @param {string} text @param {string} format @returns {string} the import Content-Type for a format */
function typeOf(text, format) {
  if (format === 'json' || (format === 'auto' && /^\s*[[{]/.test(text))) return 'application/json';
  if (format === 'csv') return 'text/csv';
  return 'text/plain';
}

/**
 * The per-line report: each non-blank line of the input with what the gateway said about it.
 * @param {string} text
 * @param {string[]} errors `line N: ...`, `keys[i]: ...` or `body: ...`
 * @param {boolean} json
 */
function lineReport(text, errors, json) {
  /** @type {Map<number, string>} */
  const byLine = new Map();
  const other = [];
  for (const e of errors) {
    const m = /^line (\d+): (.*)$/.exec(e);
    if (m && !json) byLine.set(Number(m[1]), m[2]);
    else other.push(e);
  }
  const rows = json ? [] : text.split('\n').map((l, i) => [i + 1, l.trim()]).filter(([, l]) => l && !String(l).startsWith('#'));
  return h('div', { class: 'report', 'data-testid': 'import-report' },
    other.length ? h('ul', { class: 'bad' }, other.map((e) => h('li', null, e))) : null,
    rows.length ? h('ol', { class: 'lines' }, rows.map(([n, l]) => {
      const bad = byLine.get(/** @type {number} */ (n));
      // Only a prefix of the key is echoed back: enough to find the line, not to use the key.
      const shown = String(l).length > 12 ? `${String(l).slice(0, 8)}…` : String(l);
      return h('li', { class: bad ? 'bad' : 'ok', value: n },
        h('span', { class: 'mark', 'aria-hidden': 'true' }, bad ? '✗' : '✓'),
        h('code', null, shown), bad ? h('span', { class: 'why' }, bad) : h('span', { class: 'why' }, t('keys.line_ok')));
    })) : null);
}

/** @param {string} slug @param {() => void} done */
function importDialog(slug, done) {
  const area = h('textarea', { name: 'keys', rows: 8, 'aria-label': t('keys.paste'), placeholder: 'sk-...\nsk-...,12.5', spellcheck: false, autocomplete: 'off' });
  const format = h('select', { name: 'format', 'aria-label': t('keys.format') },
    ['auto', 'text', 'csv', 'json'].map((f) => h('option', { value: f }, t(`keys.fmt_${f}`))));
  const file = h('input', {
    type: 'file', accept: '.txt,.csv,.json,text/plain,text/csv,application/json', 'aria-label': t('keys.upload'),
    onchange: async () => {
      const f = file.files && file.files[0];
      if (!f) return;
      area.value = await f.text();
      const ext = f.name.split('.').pop();
      if (ext === 'csv' || ext === 'json') format.value = ext;
      else format.value = 'text';
    },
  });
  const out = h('div', { 'aria-live': 'polite' });
  /** @param {boolean} dry */
  const send = (dry) => {
    const text = area.value;
    return api('POST', `/admin/services/${encodeURIComponent(slug)}/keys/import${dry ? '?dry_run=true' : ''}`, text, { contentType: typeOf(text, format.value) });
  };
  const check = h('button', { type: 'button', class: 'ghost', onclick: () => run(check, async () => {
    const text = area.value;
    const r = await send(true);
    const json = typeOf(text, format.value) === 'application/json';
    replace(out,
      h('p', { class: r.errors.length ? 'error' : 'notice', role: 'status' }, r.errors.length
        ? t('keys.check_bad', { n: r.errors.length })
        : t('keys.check_ok', { added: r.added, dup: r.duplicates })),
      lineReport(text, r.errors, json));
  }) }, t('keys.check'));
  const go = h('button', { type: 'button', onclick: () => run(go, async () => {
    const text = area.value;
    // Checked first, so a bad line is reported line by line and nothing is written.
    const dry = await send(true);
    const json = typeOf(text, format.value) === 'application/json';
    if (dry.errors.length) {
      replace(out, h('p', { class: 'error', role: 'alert' }, t('keys.nothing_imported', { n: dry.errors.length })), lineReport(text, dry.errors, json));
      return;
    }
    const r = await send(false);
    replace(out, h('p', { class: 'notice', role: 'status', 'data-testid': 'import-done' }, t('keys.imported', { added: r.added, dup: r.duplicates })), lineReport(text, [], json));
    toast(t('keys.imported', { added: r.added, dup: r.duplicates }));
    done();
  }) }, t('keys.import'));
  dialog(t('keys.import_title'), [
    h('p', { class: 'muted' }, t('keys.import_help')),
    area,
    h('div', { class: 'row' }, format, file),
    h('div', { class: 'row end' }, check, go),
    out,
  ], { wide: true });
  area.focus();
}

/** @param {any} k the reason a key is out of rotation, and since when */
function statusCell(k) {
  const reason = k.status === 'active' ? null : (k.validation_error || k.last_error || k.sync_error);
  // The API keeps no time of the last status change: show the latest event that explains it.
  const since = k.status === 'active' ? null
    : k.status === 'cooling' && k.cooling_until ? t('keys.until', { t: when(k.cooling_until) })
      : k.validated_at ? t('keys.since', { t: ago(k.validated_at) })
        : k.last_used_at ? t('keys.used', { t: ago(k.last_used_at) }) : null;
  return h('div', { class: 'status' }, badge(k.status, reason || undefined),
    reason ? h('small', { class: 'reason' }, reason) : null, since ? h('small', null, since) : null);
}

/** @param {string} slug @param {any} k */
async function statsDrawer(slug, k) {
  const d = dialog(`${t('keys.stats')} ${k.key}`, h('p', null, t('common.loading')), { drawer: true });
  const to = Math.floor(Date.now() / 60000) * 60 + 60;
  let chart = null;
  try {
    const st = await api('GET', `/admin/stats${qs({ service: slug, group_by: 'key', bucket: '1h', from: to - 24 * 3600, to })}`);
    const series = st.series.find((/** @type {any} */ s) => s.group.key_id === k.id);
    /** @type {Map<number, number>} */
    const byT = new Map((series ? series.points : []).map((/** @type {any} */ p) => [new Date(p.t).getTime(), p.requests]));
    const points = [];
    for (let tm = (to - 24 * 3600) * 1000; tm < to * 1000; tm += 3600e3) points.push({ t: tm, v: byT.get(tm) ?? 0 });
    chart = lineChart({ title: t('keys.requests_24h'), points, format: (v) => num(v) });
  } catch (e) {
    chart = errorBox(e);
  }
  replace(d.body,
    h('dl', { class: 'facts' },
      [[t('keys.requests'), num(k.requests)], [t('keys.success_rate'), pct(k.success_rate)],
        [t('keys.fail_4xx'), num(k.failures['4xx'])], [t('keys.fail_5xx'), num(k.failures['5xx'])], [t('keys.fail_net'), num(k.failures.network)],
        [t('keys.by_status'), Object.keys(k.failures_by_status || {}).length
          ? Object.entries(k.failures_by_status).map(([st, n]) => `${st === '0' ? t('keys.fail_net') : st}: ${num(/** @type {number} */ (n))}`).join(', ') : '–'],
        [t('keys.tokens'), num(k.tokens)], [t('keys.cost'), money(k.cost)], [t('keys.in_flight'), num(k.in_flight)],
        [t('keys.consecutive'), num(k.consecutive_failures)], [t('keys.last_used'), ago(k.last_used_at)],
        [t('keys.validated'), ago(k.validated_at)], [t('keys.weight'), num(k.weight)], [t('keys.created'), when(k.created_at)]]
        .map(([a, b]) => [h('dt', null, a), h('dd', null, b)])),
    chart,
    h('a', { class: 'button ghost', href: `#/logs?${new URLSearchParams({ service: slug, key: String(k.id) })}`, onclick: () => d.close() }, t('keys.see_logs')));
}

/**
 * A key's own settings: label, weight, balance, limits, price factor.
 * @param {string} base the keys path of the service
 * @param {any} k
 * @param {() => void} done
 */
function editKey(base, k, done) {
  const err = h('div');
  const num = (/** @type {string} */ name, /** @type {string} */ label, /** @type {any} */ v, /** @type {string} */ help = '') =>
    fieldRow(label, h('input', { name, type: 'number', step: 'any', min: 0, value: v ?? '' }), help || undefined);
  const form = h('form', { class: 'settings compact', onsubmit: async (/** @type {Event} */ e) => {
    e.preventDefault();
    try {
      const v = (/** @type {string} */ n) => field(form, n);
      /** @type {Record<string, any>} */
      const body = { label: v('label'), weight: intOrNull(v('weight')), rpm: intOrNull(v('rpm')) ?? 0, tpm: intOrNull(v('tpm')) ?? 0, cost_factor: numOrNull(v('cost_factor')) };
      if (v('balance') !== '') body.balance = v('balance');
      await api('PATCH', `${base}/${k.id}`, body);
      d.close();
      toast(t('common.saved'));
      done();
    } catch (ex) {
      err.replaceChildren(errorBox(ex));
    }
  } },
  fieldRow(t('keys.label'), h('input', { name: 'label', value: k.label || '' })),
  h('div', { class: 'grid3' },
    num('weight', t('keys.weight'), k.weight), num('balance', t('keys.balance'), k.balance),
    num('cost_factor', t('keys.cost_factor'), k.cost_factor, t('keys.cost_factor_help')),
    num('rpm', t('ak.rpm'), k.rpm, t('ak.blank_unlimited')), num('tpm', t('ak.tpm'), k.tpm, t('ak.blank_unlimited'))),
  err, h('div', { class: 'row end' }, h('button', { type: 'submit' }, t('common.save'))));
  const d = dialog(`${t('common.edit')} ${k.key}`, form);
}

/** @type {import('./main.js').View} */
export async function keysView({ slug }) {
  const svc = await api('GET', `/admin/services/${encodeURIComponent(slug)}`);
  const write = can('operator');
  const base = `/admin/services/${encodeURIComponent(slug)}/keys`;
  /** @type {Set<number>} */
  const selected = new Set();
  /** @type {any[]} */
  let shown = [];
  const filter = h('select', { 'aria-label': t('keys.filter'), onchange: () => list.reload() },
    h('option', { value: '' }, t('keys.all_statuses')), STATUSES.map((s) => h('option', { value: s }, t(`status.${s}`))));
  const count = h('span', { class: 'muted', 'data-testid': 'selected' });
  const refreshCount = () => { count.textContent = t('keys.selected', { n: selected.size }); };

  /** @param {'enable' | 'disable' | 'delete'} action @param {HTMLButtonElement} btn */
  const batch = (action, btn) => run(btn, async () => {
    /** @type {Record<string, any>} */
    const body = { action };
    if (selected.size) body.ids = [...selected];
    else if (filter.value) body.status = filter.value;
    else { toast(t('keys.select_first'), 'error'); return; }
    const what = body.ids ? t('keys.n_selected', { n: body.ids.length }) : t('keys.all_in', { s: t(`status.${filter.value}`) });
    if (action === 'delete' && !(await confirm(t('keys.delete_confirm', { what })))) return;
    const r = await api('POST', `${base}/batch`, body);
    toast(t('keys.batch_done', { n: r.changed }));
    selected.clear();
    list.reload();
  });
  const exportKeys = () => run(null, async () => {
    if (selected.size) {
      const rows = shown.filter((k) => selected.has(k.id));
      const csv = ['id,key,label,status,balance,weight', ...rows.map((k) => [k.id, k.key, k.label || '', k.status, k.balance ?? '', k.weight].map((v) => `"${String(v).replace(/"/g, '""')}"`).join(','))].join('\n');
      download(`${slug}-keys.csv`, `${csv}\n`, 'text/csv');
      return;
    }
    const csv = await api('GET', `${base}/export${qs({ status: filter.value })}`);
    download(`${slug}-keys${filter.value ? `-${filter.value}` : ''}.csv`, csv, 'text/csv');
  });

  /** @param {any} k */
  const actions = (k) => h('div', { class: 'row nowrap' },
    write ? h('button', { type: 'button', class: 'ghost small', onclick: (/** @type {Event} */ e) => run(/** @type {HTMLButtonElement} */ (e.target), async () => {
      const r = await api('POST', `${base}/${k.id}/test`);
      toast(r.ok ? t('keys.test_ok', { ms: r.latency_ms }) : t('keys.test_bad', { e: r.error || r.status }), r.ok ? 'ok' : 'error');
      list.reload();
    }) }, t('keys.test')) : null,
    write && svc.balance_sync ? h('button', { type: 'button', class: 'ghost small', onclick: (/** @type {Event} */ e) => run(/** @type {HTMLButtonElement} */ (e.target), async () => {
      const r = await api('POST', `${base}/${k.id}/sync`);
      toast(r.ok ? t('keys.sync_ok', { b: money(r.balance) }) : t('keys.sync_bad', { e: r.sync_error }), r.ok ? 'ok' : 'error');
      list.reload();
    }) }, t('keys.sync')) : null,
    write ? h('button', { type: 'button', class: 'ghost small', 'data-testid': `toggle-${k.id}`, onclick: (/** @type {Event} */ e) => run(/** @type {HTMLButtonElement} */ (e.target), async () => {
      await api('PATCH', `${base}/${k.id}`, { status: k.status === 'disabled' ? 'active' : 'disabled' });
      list.reload();
    }) }, k.status === 'disabled' ? t('keys.enable') : t('keys.disable')) : null,
    write ? h('button', { type: 'button', class: 'ghost small', onclick: () => editKey(base, k, () => list.reload()) }, t('common.edit')) : null,
    h('button', { type: 'button', class: 'ghost small', onclick: () => statsDrawer(slug, k) }, t('keys.stats')));

  const list = pager((cursor) => api('GET', `${base}${qs({ cursor, limit: 100 })}`), (items) => {
    shown = filter.value ? items.filter((k) => k.status === filter.value) : items;
    for (const id of [...selected]) if (!shown.some((k) => k.id === id)) selected.delete(id);
    refreshCount();
    const all = h('input', { type: 'checkbox', 'aria-label': t('keys.select_all'), onchange: () => {
      for (const k of shown) (all.checked ? selected.add(k.id) : selected.delete(k.id));
      list.el.querySelectorAll('input.pick').forEach((c) => { /** @type {HTMLInputElement} */ (c).checked = all.checked; });
      refreshCount();
    } });
    return table(shown, [
      ...(write ? /** @type {[Node, (k: any) => any][]} */ ([[all, (k) => h('input', { type: 'checkbox', class: 'pick', 'aria-label': k.key, checked: selected.has(k.id), onchange: (/** @type {Event} */ e) => {
        if (/** @type {HTMLInputElement} */ (e.target).checked) selected.add(k.id); else selected.delete(k.id);
        refreshCount();
      } })]]) : []),
      [t('keys.key'), (k) => h('div', null, h('code', { 'data-testid': 'masked-key' }, k.key), k.label ? h('small', null, k.label) : null)],
      [t('keys.status'), statusCell],
      [t('keys.balance'), (k) => h('div', null, money(k.balance), k.balance_synced_at ? h('small', { title: k.sync_error || '' }, t('keys.synced', { t: ago(k.balance_synced_at) })) : null, k.sync_error ? h('small', { class: 'reason' }, k.sync_error) : null)],
      [t('keys.requests'), (k) => h('div', null, num(k.requests), h('small', null, pct(k.success_rate)))],
      [t('keys.tokens'), (k) => num(k.tokens)],
      [t('keys.cost'), (k) => money(k.cost)],
      ['', actions],
    ], t('keys.empty'));
  });

  const bar = write ? h('div', { class: 'batch row', role: 'toolbar', 'aria-label': t('keys.batch') },
    count,
    h('button', { type: 'button', class: 'ghost small', onclick: (/** @type {Event} */ e) => batch('enable', /** @type {HTMLButtonElement} */ (e.target)) }, t('keys.enable')),
    h('button', { type: 'button', class: 'ghost small', onclick: (/** @type {Event} */ e) => batch('disable', /** @type {HTMLButtonElement} */ (e.target)) }, t('keys.disable')),
    h('button', { type: 'button', class: 'ghost small danger-text', onclick: (/** @type {Event} */ e) => batch('delete', /** @type {HTMLButtonElement} */ (e.target)) }, t('common.delete')),
    h('small', { class: 'muted' }, t('keys.batch_help'))) : null;

  const testAll = h('button', { type: 'button', class: 'ghost', onclick: () => run(testAll, async () => {
    const r = await api('POST', `${base}/test${qs({ status: filter.value })}`);
    const ok = r.items.filter((/** @type {any} */ x) => x.ok).length;
    toast(t('keys.tested', { ok, n: r.items.length }));
    list.reload();
  }) }, t('keys.test_all'));
  const syncAll = h('button', { type: 'button', class: 'ghost', onclick: () => run(syncAll, async () => {
    const r = await api('POST', `/admin/services/${encodeURIComponent(slug)}/sync`);
    const ok = r.items.filter((/** @type {any} */ x) => x.ok).length;
    toast(t('keys.synced_all', { ok, n: r.items.length }));
    list.reload();
  }) }, t('keys.sync_all'));

  return page(`${t('keys.title')} · ${svc.slug}`, [
    write && h('button', { type: 'button', onclick: () => importDialog(slug, () => list.reload()) }, t('keys.import')),
    write && testAll,
    write && svc.balance_sync ? syncAll : null,
    h('button', { type: 'button', class: 'ghost', onclick: exportKeys }, t('keys.export')),
    h('a', { class: 'button ghost', href: `#/services/${svc.slug}` }, t('svc.settings')),
    h('a', { class: 'button ghost', href: `#/services/${svc.slug}/connect` }, t('svc.connect')),
  ], h('div', { class: 'row' }, filter), bar, list.el);
}


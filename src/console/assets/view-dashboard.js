// @ts-check
/** Dashboard: live figures, RPM/TPM/cost/success-rate charts over a chosen range, the top
 * services, keys and models, and the keys that need attention. */
import { h, replace } from './dom.js';
import { t } from './i18n.js';
import { api, qs } from './api.js';
import { lineChart } from './charts.js';
import { page, table, badge, errorBox, num, money, pct, ago } from './ui.js';

/** @type {Record<string, {span: number, bucket: string, sec: number}>} */
const RANGES = {
  '1h': { span: 3600, bucket: '1m', sec: 60 },
  '6h': { span: 6 * 3600, bucket: '1m', sec: 60 },
  '24h': { span: 86400, bucket: '1h', sec: 3600 },
  '7d': { span: 7 * 86400, bucket: '1h', sec: 3600 },
  '30d': { span: 30 * 86400, bucket: '1d', sec: 86400 },
};
const RANGE_KEY = 'keygate.range';

/** @param {string} label @param {string} value @param {string} [sub] */
function stat(label, value, sub) {
  return h('div', { class: 'card stat' }, h('span', null, label), h('strong', null, value), sub ? h('small', null, sub) : null);
}

/** @param {any[]} totals @param {(g: any) => any} label @param {string} head */
function top(totals, label, head) {
  return h('div', { class: 'card' }, h('h2', null, head), table(totals.slice(0, 8), [
    [head, label],
    [t('dash.requests'), (g) => num(g.requests)],
    [t('dash.success'), (g) => pct(g.success_rate)],
    [t('dash.tokens'), (g) => num(g.prompt_tokens + g.completion_tokens)],
    [t('dash.cost'), (g) => money(g.cost)],
  ], t('dash.no_traffic')));
}

/** Keys out of rotation across the visible services (the first 20 services). */
async function attention() {
  const svcs = (await api('GET', '/admin/services?limit=20')).items;
  const lists = await Promise.all(svcs.map((/** @type {any} */ s) => api('GET', `/admin/services/${s.slug}/keys?limit=1000`)
    .then((r) => r.items.filter((/** @type {any} */ k) => k.status !== 'active' || (k.balance !== null && k.balance <= 0)).map((/** @type {any} */ k) => ({ ...k, slug: s.slug })))
    .catch(() => [])));
  const keys = lists.flat();
  return h('div', { class: 'card', 'data-testid': 'attention' }, h('h2', null, t('dash.attention')), table(keys.slice(0, 20), [
    [t('dash.service'), (k) => h('a', { href: `#/services/${k.slug}/keys` }, k.slug)],
    [t('keys.key'), (k) => h('code', null, k.key)],
    [t('keys.status'), (k) => badge(k.status, k.last_error || k.validation_error || undefined)],
    [t('keys.reason'), (k) => h('small', null, k.validation_error || k.last_error || k.sync_error || (k.balance !== null && k.balance <= 0 ? t('dash.no_balance') : '–'))],
    [t('keys.last_used'), (k) => ago(k.last_used_at)],
  ], t('dash.all_well')));
}

/** @type {import('./main.js').View} */
export async function dashboardView() {
  const body = h('div', { class: 'dash' }, h('p', { class: 'loading' }, t('common.loading')));
  let range = localStorage.getItem(RANGE_KEY) || '1h';
  if (!RANGES[range]) range = '1h';
  const picker = h('div', { class: 'seg', role: 'group', 'aria-label': t('dash.range') },
    Object.keys(RANGES).map((r) => h('button', {
      type: 'button', class: 'ghost small', 'aria-pressed': String(r === range), 'data-range': r,
      onclick: () => {
        range = r;
        localStorage.setItem(RANGE_KEY, r);
        picker.querySelectorAll('button').forEach((b) => b.setAttribute('aria-pressed', String(b.dataset.range === r)));
        load();
      },
    }, t(`dash.r_${r}`))));

  async function load() {
    const R = RANGES[range];
    const to = Math.ceil(Date.now() / 1000 / R.sec) * R.sec;
    const from = to - R.span;
    const q = (/** @type {string} */ g) => api('GET', `/admin/stats${qs({ group_by: g, bucket: R.bucket, from, to })}`);
    try {
      const [bySvc, byKey, byModel, att] = await Promise.all([q('service'), q('key'), q('model'), attention()]);
      /** @type {Map<number, {req: number, ok: number, tok: number, cost: number}>} */
      const agg = new Map();
      for (let tm = from * 1000; tm < to * 1000; tm += R.sec * 1000) agg.set(tm, { req: 0, ok: 0, tok: 0, cost: 0 });
      for (const s of bySvc.series) {
        for (const p of s.points) {
          const a = agg.get(new Date(p.t).getTime());
          if (!a) continue;
          a.req += p.requests; a.ok += p.successes; a.tok += p.prompt_tokens + p.completion_tokens; a.cost += p.cost;
        }
      }
      const pts = [...agg.entries()];
      const mins = R.sec / 60;
      const sum = bySvc.totals.reduce((/** @type {any} */ a, /** @type {any} */ g) => ({
        req: a.req + g.requests, ok: a.ok + g.successes, tok: a.tok + g.prompt_tokens + g.completion_tokens, cost: a.cost + g.cost,
      }), { req: 0, ok: 0, tok: 0, cost: 0 });
      const live = bySvc.live;
      replace(body,
        h('div', { class: 'stats' },
          stat(t('dash.live_rpm'), num(live.rpm), t('dash.live_tpm', { n: num(live.tpm) })),
          stat(t('dash.in_flight'), num(live.in_flight), t('dash.today', { n: num(live.rpd) })),
          h('div', { class: 'card stat', 'data-testid': 'total-requests' }, h('span', null, t('dash.requests_in', { r: t(`dash.r_${range}`) })), h('strong', null, num(sum.req)), h('small', null, pct(sum.req ? sum.ok / sum.req : null))),
          stat(t('dash.tokens'), num(sum.tok)),
          stat(t('dash.cost'), money(sum.cost))),
        h('div', { class: 'charts' },
          lineChart({ title: t('dash.rpm'), points: pts.map(([tm, a]) => ({ t: tm, v: a.req / mins })), format: num }),
          lineChart({ title: t('dash.tpm'), points: pts.map(([tm, a]) => ({ t: tm, v: a.tok / mins })), format: num }),
          lineChart({ title: t('dash.cost'), points: pts.map(([tm, a]) => ({ t: tm, v: a.cost })), format: money }),
          lineChart({ title: t('dash.success'), points: pts.map(([tm, a]) => ({ t: tm, v: a.req ? a.ok / a.req : null })), format: pct, max: 1 })),
        h('div', { class: 'tops' },
          top(bySvc.totals, (g) => h('a', { href: `#/services/${g.service}/keys` }, g.service), t('dash.top_services')),
          top(byKey.totals, (g) => h('code', null, g.key || `#${g.key_id}`), t('dash.top_keys')),
          top(byModel.totals, (g) => g.model || t('dash.no_model'), t('dash.top_models'))),
        att);
    } catch (e) {
      replace(body, errorBox(e));
    }
  }
  load();
  const refresh = h('button', { type: 'button', class: 'ghost', 'data-testid': 'refresh', onclick: () => load() }, t('common.refresh'));
  return page(t('nav.dashboard'), [picker, refresh], body);
}

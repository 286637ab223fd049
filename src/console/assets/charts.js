// @ts-check
/** Line charts drawn as inline SVG: one series, a few grid lines, the latest value in the title. */
import { h, s } from './dom.js';
import { lang } from './i18n.js';

/**
 * @param {{title: string, points: {t: number, v: number | null}[], format: (v: number) => string, max?: number}} opts
 *   points are time (ms) and value (null = no data in that bucket)
 */
export function lineChart({ title, points, format, max }) {
  const W = 480, H = 160, L = 44, R = 8, T = 10, B = 22;
  const vals = points.map((p) => p.v).filter((v) => v !== null).map(Number);
  const top = max ?? niceMax(Math.max(0, ...vals));
  const t0 = points.length ? points[0].t : 0;
  const t1 = points.length ? points[points.length - 1].t : 1;
  const x = (/** @type {number} */ tm) => L + ((tm - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (/** @type {number} */ v) => T + (1 - v / (top || 1)) * (H - T - B);
  /** @type {string[]} */
  const segs = [];
  /** @type {SVGElement[]} */
  const dots = [];
  let pen = '';
  points.forEach((p, i) => {
    if (p.v === null) { pen = ''; return; }
    segs.push(`${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`);
    // A point with no neighbour draws no line: show it as a dot.
    if (!pen && (points[i + 1]?.v ?? null) === null) dots.push(s('circle', { class: 'dot', cx: x(p.t), cy: y(p.v), r: 3 }));
    pen = 'L';
  });
  const d = segs.join('');
  const drawn = points.filter((p) => p.v !== null);
  const x0 = drawn.length ? x(drawn[0].t) : 0;
  const x1 = drawn.length ? x(drawn[drawn.length - 1].t) : 0;
  // The area is filled only under a line without gaps (a gap would bridge across it).
  const gapless = drawn.length > 1 && segs.filter((g) => g.startsWith('M')).length === 1;
  const grid = [0, 0.5, 1].map((f) => {
    const v = top * f;
    return s('g', { class: 'grid' },
      s('line', { x1: L, x2: W - R, y1: y(v), y2: y(v) }),
      s('text', { x: L - 6, y: y(v) + 4, 'text-anchor': 'end' }, format(v)));
  });
  const span = t1 - t0;
  const tick = (/** @type {number} */ tm) => {
    const dt = new Date(tm);
    const loc = lang() === 'zh' ? 'zh-CN' : 'en-GB';
    return span > 2 * 86400e3 ? dt.toLocaleDateString(loc, { month: 'short', day: 'numeric' }) : dt.toLocaleTimeString(loc, { hour: '2-digit', minute: '2-digit' });
  };
  const axis = points.length ? [t0, (t0 + t1) / 2, t1].map((tm, i) => s('text', { class: 'axis', x: x(tm), y: H - 6, 'text-anchor': ['start', 'middle', 'end'][i] }, tick(tm))) : [];
  const last = vals.length ? vals[vals.length - 1] : null;
  // The caption shows the average over the buckets that had data.
  const total = vals.length ? format(vals.reduce((a, b) => a + b, 0) / vals.length) : '–';
  const svg = s('svg', { viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': `${title}: ${last === null ? '–' : format(last)}`, class: 'chart', preserveAspectRatio: 'none' },
    grid, axis,
    gapless ? s('path', { class: 'area', d: `${d}L${x1},${y(0)}L${x0},${y(0)}Z` }) : null,
    d ? s('path', { class: 'line', d }) : null, dots);
  return h('figure', { class: 'card chart-card' },
    h('figcaption', null, h('span', null, title), h('strong', null, total)),
    svg);
}

/** @param {number} v */
function niceMax(v) {
  if (v <= 0) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

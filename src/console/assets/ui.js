// @ts-check
/** Shared pieces of the screens: page frame, dialogs, badges, pagination, formatting. */
import { h, replace } from './dom.js';
import { t, lang } from './i18n.js';

/**
 * A screen: heading, its actions (buttons) and content.
 * @param {string} title
 * @param {(HTMLElement | null | false)[]} actions
 * @param {...any} content
 */
export function page(title, actions, ...content) {
  return h('section', { class: 'page' },
    h('header', { class: 'page-head' }, h('h1', { tabindex: '-1' }, title), h('div', { class: 'actions' }, actions)),
    content);
}

/** @param {unknown} err */
export function message(err) {
  return err instanceof Error ? err.message : String(err);
}

/** An inline error (problem detail) that screen readers announce. @param {unknown} err */
export function errorBox(err) {
  return h('div', { class: 'error', role: 'alert' }, message(err));
}

const toasts = () => document.getElementById('toasts') || document.body.appendChild(h('div', { id: 'toasts', class: 'toasts', 'aria-live': 'polite' }));

/** A short note at the corner. @param {string} text @param {'ok' | 'error'} [kind] */
export function toast(text, kind = 'ok') {
  const el = h('div', { class: ['toast', kind], role: kind === 'error' ? 'alert' : 'status' }, text);
  toasts().appendChild(el);
  setTimeout(() => el.remove(), kind === 'error' ? 8000 : 3000);
}

/**
 * Runs an action from a button: disabled while it runs, errors shown as a toast.
 * @param {HTMLButtonElement | null} button
 * @param {() => Promise<any>} action
 */
export async function run(button, action) {
  if (button) button.disabled = true;
  try {
    return await action();
  } catch (e) {
    toast(message(e), 'error');
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}

/**
 * A modal dialog (or a drawer from the side): Esc and the close button close it, focus moves in.
 * @param {string} title
 * @param {any} content
 * @param {{drawer?: boolean, wide?: boolean}} [opts]
 * @returns {{el: HTMLDialogElement, close: () => void, body: HTMLElement}}
 */
export function dialog(title, content, opts = {}) {
  const body = h('div', { class: 'dialog-body' }, content);
  const el = h('dialog', { class: ['dialog', opts.drawer && 'drawer', opts.wide && 'wide'], 'aria-label': title },
    h('header', null, h('h2', null, title),
      h('button', { type: 'button', class: 'ghost close', 'aria-label': t('common.close'), onclick: () => el.close() }, '×')),
    body);
  el.addEventListener('close', () => el.remove());
  document.body.appendChild(el);
  el.showModal();
  return { el, body, close: () => el.close() };
}

/** Asks before a destructive action. @param {string} text @returns {Promise<boolean>} */
export function confirm(text) {
  return new Promise((resolve) => {
    let answer = false;
    const yes = h('button', { type: 'button', class: 'danger', onclick: () => { answer = true; d.close(); } }, t('common.confirm'));
    const d = dialog(t('common.are_you_sure'), [
      h('p', null, text),
      h('div', { class: 'row end' },
        h('button', { type: 'button', class: 'ghost', onclick: () => d.close() }, t('common.cancel')), yes),
    ]);
    d.el.addEventListener('close', () => resolve(answer));
    yes.focus();
  });
}

/** A status badge; `title` carries the reason. @param {string} status @param {string} [title] */
export function badge(status, title) {
  return h('span', { class: ['badge', `b-${status}`], title }, t(`status.${status}`) || status);
}

/**
 * Copies text, with a fallback for pages the Clipboard API refuses.
 * @param {string} text
 */
export async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const ta = h('textarea', { class: 'offscreen' }, text);
    document.body.appendChild(ta);
    ta.select();
    document.execCommand('copy');
    ta.remove();
  }
  toast(t('common.copied'));
}

/** @param {string} text @param {string} [label] */
export function copyButton(text, label) {
  return h('button', { type: 'button', class: 'ghost small', onclick: () => copy(text) }, label || t('common.copy'));
}

/**
 * A labelled form control.
 * @param {string} label
 * @param {HTMLElement} control
 * @param {string} [help]
 */
export function fieldRow(label, control, help) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h('div', { class: 'field' }, h('label', { for: id }, label), control, help ? h('small', null, help) : null);
}

/**
 * Cursor pagination over a list endpoint: `load(cursor)` returns `{items, next_cursor}` and
 * `render(items)` draws a page. Previous pages are remembered by their cursors.
 * @param {(cursor: string | null) => Promise<{items: any[], next_cursor?: string | null}>} load
 * @param {(items: any[]) => any} render
 */
export function pager(load, render) {
  const box = h('div', { class: 'paged' });
  /** @type {(string | null)[]} */
  const cursors = [null];
  let at = 0;
  async function show() {
    let r;
    try {
      r = await load(cursors[at]);
    } catch (e) {
      replace(box, errorBox(e));
      return;
    }
    if (r.next_cursor) cursors[at + 1] = r.next_cursor;
    else cursors.length = at + 1;
    const prev = h('button', { type: 'button', class: 'ghost small', disabled: at === 0, onclick: () => { at--; show(); } }, t('common.prev'));
    const next = h('button', { type: 'button', class: 'ghost small', disabled: !r.next_cursor, onclick: () => { at++; show(); } }, t('common.next'));
    replace(box, render(r.items), (at > 0 || r.next_cursor) ? h('nav', { class: 'pager', 'aria-label': t('common.pages') }, prev, h('span', null, t('common.page', { n: at + 1 })), next) : null);
  }
  show();
  return { el: box, reload: () => show(), first: () => { at = 0; cursors.length = 1; return show(); } };
}

/**
 * A table; `cols` are [heading, cell] pairs.
 * @template T
 * @param {T[]} rows
 * @param {[string | Node, (row: T) => any][]} cols
 * @param {string} [empty]
 */
export function table(rows, cols, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty || t('common.none'));
  return h('div', { class: 'table-wrap' }, h('table', null,
    h('thead', null, h('tr', null, cols.map(([head]) => h('th', { scope: 'col' }, head)))),
    h('tbody', null, rows.map((r) => h('tr', null, cols.map(([, cell]) => h('td', null, cell(r))))))));
}

const nf = () => new Intl.NumberFormat(lang() === 'zh' ? 'zh-CN' : 'en-US');

/** @param {number | null | undefined} n */
export function num(n) {
  return n === null || n === undefined ? '–' : nf().format(Math.round(n * 100) / 100);
}

/** Currency units, up to 6 decimals. @param {number | null | undefined} n */
export function money(n) {
  if (n === null || n === undefined) return '–';
  return new Intl.NumberFormat(lang() === 'zh' ? 'zh-CN' : 'en-US', { maximumFractionDigits: n !== 0 && Math.abs(n) < 0.01 ? 6 : 2 }).format(n);
}

/** @param {number | null | undefined} r a ratio 0..1 */
export function pct(r) {
  return r === null || r === undefined ? '–' : `${(r * 100).toFixed(r === 1 ? 0 : 1)}%`;
}

/** A date and time in the reader's zone. @param {string | null | undefined} iso */
export function when(iso) {
  if (!iso) return '–';
  const d = new Date(iso);
  return d.toLocaleString(lang() === 'zh' ? 'zh-CN' : 'en-GB', { dateStyle: 'short', timeStyle: 'medium' });
}

/** "3 min ago". @param {string | null | undefined} iso */
export function ago(iso) {
  if (!iso) return '–';
  const s = Math.round((Date.now() - new Date(iso).getTime()) / 1000);
  const rtf = new Intl.RelativeTimeFormat(lang() === 'zh' ? 'zh-CN' : 'en', { numeric: 'auto' });
  const a = Math.abs(s);
  if (a < 60) return rtf.format(-s, 'second');
  if (a < 3600) return rtf.format(-Math.round(s / 60), 'minute');
  if (a < 86400) return rtf.format(-Math.round(s / 3600), 'hour');
  return rtf.format(-Math.round(s / 86400), 'day');
}

/** @param {string} name @param {string} text @param {string} [type] */
export function download(name, text, type = 'text/plain') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name });
  document.body.appendChild(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** Optional integer from a text field (blank = null). @param {string} v */
export function intOrNull(v) {
  if (v === '') return null;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new Error(t('error.integer', { v }));
  return n;
}

/** Optional number from a text field (blank = null). @param {string} v */
export function numOrNull(v) {
  if (v === '') return null;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(t('error.number', { v }));
  return n;
}

/** A select of options. @param {string} name @param {string[]} options @param {string} [value] @param {(v: string) => string} [label] */
export function select(name, options, value, label) {
  return h('select', { name }, options.map((o) => h('option', { value: o, selected: o === value }, label ? label(o) : o)));
}

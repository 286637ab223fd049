// @ts-check
/** Tiny DOM helpers: the console builds its screens from these, with no framework. */

/**
 * @typedef {string | number | Node | null | undefined | false} Child
 * @typedef {Child | NestedChildren} Children
 * @typedef {Array<Children>} NestedChildren
 * @typedef {Record<string, any>} Attrs
 */

/**
 * Creates an element. `on*` attributes become listeners, `class` may be a list (falsy items
 * dropped), boolean attributes are set when true; children may be nested arrays.
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs | null} [attrs]
 * @param {...Children} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';

/**
 * Creates an SVG element (charts and icons).
 * @param {string} tag
 * @param {Attrs | null} [attrs]
 * @param {...Children} children
 * @returns {SVGElement}
 */
export function s(tag, attrs, ...children) {
  const el = /** @type {SVGElement} */ (document.createElementNS(SVG_NS, tag));
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

/** @param {Element} el @param {Attrs | null | undefined} attrs */
function setAttrs(el, attrs) {
  if (!attrs) return;
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') {
      el.addEventListener(k.slice(2).toLowerCase(), v);
    } else if (k === 'class') {
      const cls = Array.isArray(v) ? v.filter(Boolean).join(' ') : String(v);
      if (cls) el.setAttribute('class', cls);
    } else if (k === 'value' && 'value' in el) {
      /** @type {any} */ (el).value = v;
    } else if (k === 'checked' && 'checked' in el) {
      /** @type {any} */ (el).checked = !!v;
    } else if (v === true) {
      el.setAttribute(k, '');
    } else {
      el.setAttribute(k, String(v));
    }
  }
}

/** @param {Node} el @param {Children[]} children */
function append(el, children) {
  for (const c of children) {
    if (Array.isArray(c)) append(el, c);
    else if (c === null || c === undefined || c === false) continue;
    else el.appendChild(typeof c === 'object' ? c : document.createTextNode(String(c)));
  }
}

/**
 * Replaces an element's children.
 * @param {Element} el
 * @param {...Children} children
 */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/**
 * The value of a named form control.
 * @param {HTMLFormElement} form
 * @param {string} name
 * @returns {string}
 */
export function field(form, name) {
  const el = /** @type {HTMLInputElement | null} */ (form.elements.namedItem(name));
  return el ? el.value.trim() : '';
}

/**
 * Whether a named checkbox is checked.
 * @param {HTMLFormElement} form
 * @param {string} name
 */
export function checked(form, name) {
  const el = /** @type {HTMLInputElement | null} */ (form.elements.namedItem(name));
  return !!el && el.checked;
}

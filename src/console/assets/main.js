// @ts-check
/** Entry point: the shell (navigation, language, theme, session) and the hash router. */
import { h, replace } from './dom.js';
import { t, lang, setLang } from './i18n.js';
import { session, restore, logout, onSessionEnd, can } from './api.js';
import { errorBox } from './ui.js';
import { loginView } from './view-login.js';
import { dashboardView } from './view-dashboard.js';
import { servicesView, serviceFormView } from './view-services.js';
import { keysView } from './view-keys.js';
import { accessKeysView } from './view-access-keys.js';
import { pricingView } from './view-pricing.js';
import { logsView } from './view-logs.js';
import { usersView } from './view-users.js';
import { connectView } from './view-connect.js';

/** @typedef {(params: Record<string, string>, query: URLSearchParams) => Promise<HTMLElement> | HTMLElement} View */

/** @type {[RegExp, View, string][]} pattern, view, nav section */
const ROUTES = [
  [/^\/$/, dashboardView, 'dashboard'],
  [/^\/services$/, servicesView, 'services'],
  [/^\/services\/new$/, serviceFormView, 'services'],
  [/^\/services\/(?<slug>[^/]+)$/, serviceFormView, 'services'],
  [/^\/services\/(?<slug>[^/]+)\/keys$/, keysView, 'services'],
  [/^\/services\/(?<slug>[^/]+)\/connect$/, connectView, 'services'],
  [/^\/access-keys$/, accessKeysView, 'access-keys'],
  [/^\/pricing$/, pricingView, 'pricing'],
  [/^\/logs$/, logsView, 'logs'],
  [/^\/users$/, usersView, 'users'],
];

const THEME = 'keygate.theme';

function applyTheme() {
  const th = localStorage.getItem(THEME);
  if (th) document.documentElement.dataset.theme = th;
  else delete document.documentElement.dataset.theme;
}

function toggleTheme() {
  const dark = document.documentElement.dataset.theme
    ? document.documentElement.dataset.theme === 'dark'
    : matchMedia('(prefers-color-scheme: dark)').matches;
  localStorage.setItem(THEME, dark ? 'light' : 'dark');
  applyTheme();
}

const app = /** @type {HTMLElement} */ (document.getElementById('app'));

function langSwitch() {
  return h('select', {
    class: 'lang', 'aria-label': t('shell.language'), 'data-testid': 'lang',
    onchange: (/** @type {Event} */ e) => { setLang(/** @type {HTMLSelectElement} */ (e.target).value); render(); },
  }, h('option', { value: 'en', selected: lang() === 'en' }, 'English'), h('option', { value: 'zh', selected: lang() === 'zh' }, '简体中文'));
}

function themeButton() {
  return h('button', { type: 'button', class: 'ghost', onclick: toggleTheme, 'aria-label': t('shell.theme'), title: t('shell.theme') }, '◐');
}

/** @param {string} section */
function shell(section) {
  const links = [
    ['dashboard', '#/'], ['services', '#/services'], ['access-keys', '#/access-keys'],
    ['pricing', '#/pricing'], ['logs', '#/logs'],
  ];
  if (can('admin')) links.push(['users', '#/users']);
  const nav = h('nav', { class: 'nav', id: 'nav', 'aria-label': t('shell.menu') },
    links.map(([id, href]) => h('a', { href, 'aria-current': id === section ? 'page' : null }, t(`nav.${id}`))));
  const menu = h('button', {
    type: 'button', class: 'ghost menu', 'aria-controls': 'nav', 'aria-expanded': 'false',
    onclick: () => {
      const open = nav.classList.toggle('open');
      menu.setAttribute('aria-expanded', String(open));
    },
  }, '☰ ', t('shell.menu'));
  const me = session.me;
  return h('header', { class: 'top' },
    h('a', { class: 'skip', href: '#main', onclick: (/** @type {Event} */ e) => { e.preventDefault(); document.getElementById('main')?.focus(); } }, t('shell.skip')),
    h('a', { class: 'brand', href: '#/' }, h('img', { src: document.querySelector('link[rel=icon]')?.getAttribute('href') || '', alt: '' }), 'keygate'),
    menu, nav,
    h('div', { class: 'me' },
      langSwitch(), themeButton(),
      me ? h('span', { class: 'who', 'data-testid': 'who' }, me.username, ' ', h('span', { class: 'role' }, t(`role.${me.role}`))) : null,
      h('button', { type: 'button', class: 'ghost', onclick: () => logout() }, t('shell.logout'))));
}

let rendering = 0;

async function render() {
  const ticket = ++rendering;
  // Dialogs belong to the screen that opened them.
  document.querySelectorAll('dialog[open]').forEach((d) => /** @type {HTMLDialogElement} */ (d).close());
  document.documentElement.lang = lang() === 'zh' ? 'zh-CN' : 'en';
  const [path, query] = (location.hash.slice(1) || '/').split('?');
  if (!session.me) {
    if (path !== '/login') {
      sessionStorage.setItem('keygate.after', location.hash);
      location.replace('#/login');
      return;
    }
    document.title = `${t('login.title')} · keygate`;
    replace(app, h('div', { class: 'login-top' }, langSwitch(), themeButton()), loginView(() => {
      const next = sessionStorage.getItem('keygate.after');
      sessionStorage.removeItem('keygate.after');
      location.hash = next && next !== '#/login' ? next : '#/';
    }));
    // autofocus works once per page load; a login after a logout needs the focus put there.
    /** @type {HTMLInputElement | null} */ (app.querySelector('input[name=username]'))?.focus();
    return;
  }
  if (path === '/login') { location.replace('#/'); return; }
  const found = ROUTES.map(([re, view, section]) => /** @type {const} */ ([re.exec(path), view, section])).find(([m]) => m);
  const main = h('main', { id: 'main', tabindex: '-1' }, h('p', { class: 'loading' }, t('common.loading')));
  replace(app, shell(found ? found[2] : ''), main);
  if (!found) { replace(main, errorBox(t('error.not_found'))); return; }
  const [m, view, section] = found;
  document.title = `${t(`nav.${section}`)} · keygate`;
  try {
    const params = Object.fromEntries(Object.entries(m?.groups || {}).map(([k, v]) => [k, decodeURIComponent(v)]));
    const el = await view(params, new URLSearchParams(query || ''));
    if (ticket === rendering) replace(main, el);
  } catch (e) {
    if (ticket === rendering) replace(main, errorBox(e));
  }
}

onSessionEnd(() => { location.hash = '#/login'; render(); });
addEventListener('hashchange', () => render());
applyTheme();
restore().finally(render);

// @ts-check
/** Login: username and password for a bearer token, kept until it expires or the user logs out. */
import { h, field } from './dom.js';
import { t } from './i18n.js';
import { login, session } from './api.js';
import { errorBox, fieldRow, message } from './ui.js';

/** @param {() => void} done */
export function loginView(done) {
  const err = h('div', { class: 'login-error' }, session.ended ? h('div', { class: 'notice', role: 'status' }, session.ended) : null);
  const button = h('button', { type: 'submit' }, t('login.submit'));
  const form = h('form', {
    class: 'card login', 'aria-labelledby': 'login-h',
    onsubmit: async (/** @type {Event} */ e) => {
      e.preventDefault();
      button.disabled = true;
      err.replaceChildren();
      try {
        await login(field(form, 'username'), /** @type {HTMLInputElement} */ (form.elements.namedItem('password')).value);
        done();
      } catch (ex) {
        err.replaceChildren(errorBox(message(ex)));
      } finally {
        button.disabled = false;
      }
    },
  },
  h('h1', { id: 'login-h' }, h('img', { src: document.querySelector('link[rel=icon]')?.getAttribute('href') || '', alt: '' }), 'keygate'),
  h('p', { class: 'muted' }, t('login.intro')),
  fieldRow(t('login.username'), h('input', { name: 'username', autocomplete: 'username', required: true, autofocus: true })),
  fieldRow(t('login.password'), h('input', { name: 'password', type: 'password', autocomplete: 'current-password', required: true })),
  err, button);
  return h('div', { class: 'login-wrap' }, form);
}

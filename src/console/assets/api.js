// @ts-check
/** The admin API client and the login session (kept in localStorage so a reload keeps it). */
import { t } from './i18n.js';

/**
 * @typedef {'viewer' | 'operator' | 'admin'} Role
 * @typedef {{id: number, username: string, role: Role, tenant_id: number | null}} Me
 * @typedef {{items: any[], next_cursor?: string | null}} List
 */

const TOKEN = 'keygate.token';
const EXPIRES = 'keygate.expires';

/** An admin API failure: the problem+json `detail` when there is one. */
export class ApiError extends Error {
  /** @param {number} status @param {string} detail */
  constructor(status, detail) {
    super(detail);
    this.status = status;
  }
}

export const session = {
  /** @type {string | null} */
  token: localStorage.getItem(TOKEN),
  expires: Number(localStorage.getItem(EXPIRES) || 0),
  /** @type {Me | null} */
  me: null,
  /** @type {string} why the last session ended ('' when the user logged out) */
  ended: '',
};

/** @type {(() => void)[]} */
const onEnd = [];
/** @param {() => void} f called when the session ends (logout or expiry) */
export function onSessionEnd(f) {
  onEnd.push(f);
}

/** @type {number | undefined} */
let expiryTimer;

/** @param {string} why empty for a logout, else the message the login screen shows */
export function endSession(why) {
  session.token = null;
  session.me = null;
  session.expires = 0;
  session.ended = why;
  localStorage.removeItem(TOKEN);
  localStorage.removeItem(EXPIRES);
  clearTimeout(expiryTimer);
  onEnd.forEach((f) => f());
}

function armExpiry() {
  clearTimeout(expiryTimer);
  const left = session.expires - Date.now();
  // setTimeout holds at most ~24.8 days; longer tokens are checked again on the next call.
  if (left > 0 && left < 2 ** 31) expiryTimer = window.setTimeout(() => endSession(t('session.expired')), left);
}

/** Whether the user may do what needs `min`. @param {Role} min */
export function can(min) {
  const order = { viewer: 0, operator: 1, admin: 2 };
  return !!session.me && order[session.me.role] >= order[min];
}

/**
 * Calls the admin API. JSON bodies are sent as JSON, strings with `contentType`. Errors throw
 * `ApiError` with the problem's detail; a 401 on a logged-in call ends the session.
 * @param {string} method
 * @param {string} path
 * @param {any} [body]
 * @param {{contentType?: string, raw?: boolean}} [opts]
 * @returns {Promise<any>}
 */
export async function api(method, path, body, opts = {}) {
  /** @type {Record<string, string>} */
  const headers = { accept: 'application/json' };
  if (session.token) headers.authorization = `Bearer ${session.token}`;
  /** @type {BodyInit | undefined} */
  let payload;
  if (body instanceof FormData) {
    payload = body;
  } else if (typeof body === 'string') {
    headers['content-type'] = opts.contentType || 'text/plain';
    payload = body;
  } else if (body !== undefined) {
    headers['content-type'] = 'application/json';
    payload = JSON.stringify(body);
  }
  let r;
  try {
    r = await fetch(path, { method, headers, body: payload });
  } catch {
    throw new ApiError(0, t('error.network'));
  }
  if (r.status === 401 && session.token) {
    endSession(t('session.expired'));
    throw new ApiError(401, t('session.expired'));
  }
  if (!r.ok) {
    let detail = `${r.status} ${r.statusText}`;
    try {
      const p = await r.json();
      detail = p.detail || p.title || detail;
    } catch {
      /* not problem+json: keep the status line */
    }
    throw new ApiError(r.status, detail);
  }
  if (opts.raw) return r;
  if (r.status === 204) return null;
  const ct = r.headers.get('content-type') || '';
  return ct.includes('json') ? r.json() : r.text();
}

/** Logs out on the server too (every token of this user stops working), then here. */
export async function logout() {
  try {
    await api('POST', '/admin/auth/logout');
  } catch {
    // Already expired or revoked: the local session ends all the same.
  }
  endSession('');
}

/** @param {string} username @param {string} password */
export async function login(username, password) {
  const r = await api('POST', '/admin/auth/login', { username, password });
  session.token = r.access_token;
  session.expires = Date.now() + r.expires_in * 1000;
  localStorage.setItem(TOKEN, r.access_token);
  localStorage.setItem(EXPIRES, String(session.expires));
  session.ended = '';
  await loadMe();
}

/** Restores the session after a reload; false when there is none or it has expired. */
export async function restore() {
  if (!session.token) return false;
  if (session.expires <= Date.now()) {
    endSession(t('session.expired'));
    return false;
  }
  try {
    await loadMe();
    return true;
  } catch {
    return false;
  }
}

async function loadMe() {
  session.me = await api('GET', '/admin/auth/me');
  armExpiry();
}

/**
 * A query string from the set values of `params`.
 * @param {Record<string, string | number | boolean | null | undefined>} params
 */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') u.set(k, String(v));
  const s = u.toString();
  return s ? `?${s}` : '';
}

// Browser tests of the web console: Debian's Chromium driven by playwright-core against the real
// keygate binary (embedded mode, a temp data dir) and the mock upstream, on free loopback ports.
// Run by scripts/e2e.sh. Prints a cargo-style "test result:" line that scripts/test.sh totals.
//
// Environment: KEYGATE_BIN_DIR (where keygate and keygate-mock-upstream are), CHROMIUM (default
// /usr/bin/chromium), SCREENSHOTS (directory for the screenshots; default .cache/e2e/screenshots).
import { spawn } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { chromium } from 'playwright-core';

const BIN = resolve(process.env.KEYGATE_BIN_DIR || 'target/debug');
const SHOTS = resolve(process.env.SCREENSHOTS || '.cache/e2e/screenshots');
const PASSWORD = 'e2e-admin-password';
const VIEWER_PASSWORD = 'e2e-viewer-password';
const DEADLINE_MS = 20_000;
mkdirSync(SHOTS, { recursive: true });

/** @type {import('node:child_process').ChildProcess[]} */
const children = [];
const dataDir = mkdtempSync(join(tmpdir(), 'keygate-e2e-'));

function freePort() {
  return new Promise((ok, fail) => {
    const s = createServer();
    s.on('error', fail);
    s.listen(0, '127.0.0.1', () => {
      const { port } = /** @type {import('node:net').AddressInfo} */ (s.address());
      s.close(() => ok(port));
    });
  });
}

/** Waits for a condition, polling; fails with `what` at the deadline. */
async function until(what, check, ms = DEADLINE_MS) {
  const end = Date.now() + ms;
  let last;
  for (;;) {
    try {
      last = await check();
      if (last) return last;
    } catch (e) {
      last = e;
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what} (last: ${last})`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Starts a binary and resolves once `ready(line)` matches a line of its stdout. */
function start(cmd, args, env, ready) {
  return new Promise((ok, fail) => {
    const p = spawn(cmd, args, { env: { PATH: process.env.PATH, ...env }, cwd: dataDir, stdio: ['ignore', 'pipe', 'inherit'] });
    children.push(p);
    p.on('error', fail);
    p.on('exit', (code) => fail(new Error(`${cmd} exited early with ${code}`)));
    let buf = '';
    p.stdout.on('data', (d) => {
      buf += d;
      const m = buf.split('\n').map(ready).find(Boolean);
      if (m) ok(m);
    });
  });
}

const mockPort = Number(await start(join(BIN, 'keygate-mock-upstream'), ['0'], {}, (l) => /listening on (\d+)/.exec(l)?.[1]));
const port = await freePort();
const base = `http://127.0.0.1:${port}`;
start(join(BIN, 'keygate'), [], {
  PORT: String(port), ADMIN_PASSWORD: PASSWORD, RUST_LOG: 'error',
  KEYGATE__DATABASE__DATA_DIR: join(dataDir, 'data'), KEYGATE__PROXY__REFRESH_INTERVAL_MS: '100',
  // Key totals reach the key list when persisted; often, so the screenshots show them.
  KEYGATE__JOBS__PERSIST_INTERVAL_MS: '200',
  // The mock upstream is on loopback, which the SSRF guard refuses unless allowed.
  KEYGATE__EGRESS__ALLOW: '127.0.0.0/8,::1/128',
}, () => null).catch((e) => { console.error(String(e)); process.exit(1); });
await until('keygate /healthz', async () => (await fetch(`${base}/healthz`)).ok);

/** The admin API from node, to check what the browser did. */
async function admin(method, path, body, token) {
  const r = await fetch(`${base}${path}`, {
    method, headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
    body: body ? JSON.stringify(body) : undefined,
  });
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${await r.text()}`);
  return r.status === 204 ? null : r.json();
}
const adminToken = (await (await fetch(`${base}/admin/auth/login`, {
  method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ username: 'admin', password: PASSWORD }),
})).json()).access_token;

async function chat(key) {
  const r = await fetch(`${base}/llm/mock/v1/chat/completions`, {
    method: 'POST', headers: { authorization: `Bearer ${key}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }] }),
  });
  if (r.status !== 200) throw new Error(`proxied call: ${r.status} ${await r.text()}`);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync'],
});
const context = await browser.newContext({ viewport: { width: 1280, height: 860 }, locale: 'en-US', colorScheme: 'light' });
await context.grantPermissions(['clipboard-read', 'clipboard-write'], { origin: base });
const page = await context.newPage();
page.setDefaultTimeout(Number(process.env.E2E_TIMEOUT_MS || 15000));
/** @type {string[]} */
const pageErrors = [];
page.on('pageerror', (e) => pageErrors.push(String(e)));
page.on('console', (m) => { if (m.type() === 'error' && !/status of 4\d\d/.test(m.text())) pageErrors.push(m.text()); });

const shot = async (name) => {
  // Toasts from earlier steps would cover the screen.
  await page.evaluate(() => document.getElementById('toasts')?.replaceChildren());
  await page.screenshot({ path: join(SHOTS, `${name}.png`) });
};
const goto = async (hash) => {
  await page.goto(`${base}/#${hash}`);
  await page.waitForSelector('main h1');
};

const state = { accessKey: '', keyIds: /** @type {number[]} */ ([]) };
let passed = 0;
let failed = 0;
async function test(name, fn) {
  try {
    await fn();
    passed++;
    console.log(`test console::${name} ... ok`);
  } catch (e) {
    failed++;
    console.log(`test console::${name} ... FAILED\n${e && e.stack ? e.stack : e}`);
    await shot(`failed-${name}`).catch(() => {});
  }
}
const text = (sel) => page.locator(sel).first().innerText();

await test('login_keeps_the_session_across_a_reload', async () => {
  await page.goto(`${base}/`);
  await page.waitForSelector('form.login');
  await shot('login');
  await page.fill('input[name=password]', 'wrong password');
  await page.fill('input[name=username]', 'admin');
  await page.click('form.login button[type=submit]');
  await page.getByRole('alert').filter({ hasText: 'wrong username or password' }).waitFor();
  await page.fill('input[name=password]', PASSWORD);
  // A failed login backs off this address for a second or so (429 "try again in 1 s").
  await until('logged in', async () => {
    await page.click('form.login button[type=submit]');
    await page.locator('[data-testid=who], form.login [role=alert]').first().waitFor();
    return page.locator('[data-testid=who]').isVisible();
  });
  await page.reload();
  await page.waitForSelector('[data-testid=who]');
  if (!(await text('[data-testid=who]')).includes('admin')) throw new Error('not logged in as admin after reload');
});

await test('an_operator_creates_a_service', async () => {
  await goto('/services');
  await page.getByRole('link', { name: 'New service' }).click();
  await page.fill('input[name=slug]', 'mock');
  await page.fill('input[name=name]', 'Mock upstream');
  await page.fill('input[name=base_url]', `http://127.0.0.1:${mockPort}/v1`);
  await page.fill('textarea[name=model_aliases]', 'gpt4 = gpt-4o');
  await page.check('input[name=capture]');
  await shot('service-form');
  await page.getByRole('button', { name: 'Create service' }).click();
  await page.waitForURL(/#\/services\/mock\/keys$/);
  await page.getByText('No keys: import some.').waitFor();
  const svc = await admin('GET', '/admin/services/mock', null, adminToken);
  if (svc.model_aliases.gpt4 !== 'gpt-4o') throw new Error(`aliases not saved: ${JSON.stringify(svc.model_aliases)}`);
});

const GOOD = ['sk-e2e-first-key-000000000001', 'sk-e2e-second-key-00000000002'];

await test('an_import_with_one_bad_line_reports_it_and_imports_nothing', async () => {
  await goto('/services/mock/keys');
  await page.getByRole('button', { name: 'Import keys' }).first().click();
  await page.fill('dialog textarea', `${GOOD[0]}\nsk bad,abc,1\n${GOOD[1]}\n`);
  await page.getByRole('button', { name: 'Check' }).click();
  await page.locator('[data-testid=import-report] li.bad').waitFor();
  await page.locator('dialog').getByRole('button', { name: 'Import keys' }).click();
  await page.getByText('Nothing imported: 1 bad lines.').waitFor();
  const bad = page.locator('[data-testid=import-report] li.bad');
  if ((await bad.count()) !== 1 || (await bad.getAttribute('value')) !== '2') throw new Error('line 2 is not the one marked bad');
  if ((await page.locator('[data-testid=import-report] li.ok').count()) !== 2) throw new Error('the good lines are not marked ok');
  await shot('keys-import-report');
  const keys = await admin('GET', '/admin/services/mock/keys', null, adminToken);
  if (keys.items.length !== 0) throw new Error(`${keys.items.length} keys were imported`);
});

await test('fixing_the_line_imports_the_keys_and_the_list_shows_them_masked', async () => {
  await page.fill('dialog textarea', `${GOOD[0]}\n${GOOD[1]},12.5\n`);
  await page.locator('dialog').getByRole('button', { name: 'Import keys' }).click();
  await page.locator('[data-testid=import-done]').getByText('Imported 2 keys').waitFor();
  await page.keyboard.press('Escape');
  await page.locator('dialog').waitFor({ state: 'detached' });
  await until('two keys listed', async () => (await page.locator('[data-testid=masked-key]').count()) === 2);
  const shown = await page.locator('[data-testid=masked-key]').allInnerTexts();
  for (const k of GOOD) if (shown.some((s) => s.includes(k)) || (await page.content()).includes(k)) throw new Error('a full key is on the page');
  const keys = await admin('GET', '/admin/services/mock/keys', null, adminToken);
  state.keyIds = keys.items.map((k) => k.id);
  await page.getByRole('button', { name: 'Edit' }).first().click();
  await page.fill('dialog input[name=label]', 'primary');
  await page.fill('dialog input[name=weight]', '3');
  await page.locator('dialog').getByRole('button', { name: 'Save' }).click();
  await page.locator('table').getByText('primary').waitFor();
  const edited = (await admin('GET', '/admin/services/mock/keys', null, adminToken)).items[0];
  if (edited.label !== 'primary' || edited.weight !== 3) throw new Error(`key edit not saved: ${JSON.stringify(edited)}`);
});

await test('an_uploaded_csv_is_checked_line_by_line_with_duplicates_counted', async () => {
  await page.getByRole('button', { name: 'Import keys' }).first().click();
  await page.locator('dialog input[type=file]').setInputFiles({
    name: 'keys.csv', mimeType: 'text/csv', buffer: Buffer.from(`key,balance\n${GOOD[0]},1\nsk-e2e-third-key-000000000003,2\n`),
  });
  await until('the file read into the box', async () => (await page.inputValue('dialog textarea')).includes('third'));
  if ((await page.inputValue('dialog select[name=format]')) !== 'csv') throw new Error('the format did not follow the file');
  await page.getByRole('button', { name: 'Check' }).click();
  await page.getByText('All lines are good: 1 new keys, 1 already present.').waitFor();
  await page.keyboard.press('Escape');
  const keys = await admin('GET', '/admin/services/mock/keys', null, adminToken);
  if (keys.items.length !== 2) throw new Error('a check imported keys');
});

await test('an_access_key_is_created_shown_once_and_copied', async () => {
  await goto('/access-keys');
  await page.getByRole('button', { name: 'New access key' }).click();
  await page.fill('dialog input[name=name]', 'e2e client');
  await page.check('dialog input[name="slug:mock"]');
  await page.fill('dialog input[name=budget]', '5');
  await page.getByRole('button', { name: 'Create key' }).click();
  const key = await text('[data-testid=new-key]');
  if (!/^kg-/.test(key)) throw new Error(`unexpected key ${key}`);
  await page.locator('dialog').getByRole('button', { name: 'Copy' }).click();
  await page.getByText('Copied to the clipboard').waitFor();
  const clip = await page.evaluate(() => navigator.clipboard.readText());
  if (clip !== key) throw new Error('the clipboard does not hold the key');
  state.accessKey = key;
  await page.keyboard.press('Escape');
  // The dialog leaves the DOM on its 'close' event, a task queued after the
  // key press returns; reading the page before that saw the dialog still there.
  await page.locator('dialog').waitFor({ state: 'detached' });
  await page.getByText('e2e client').waitFor();
  if ((await page.content()).includes(key)) throw new Error('the key is still on the page after the dialog closed');
  await shot('access-keys');
});

await test('proxied_calls_show_in_the_log_with_a_detail_drawer', async () => {
  for (let i = 0; i < 6; i++) await chat(state.accessKey);
  await goto('/logs');
  await until('6 log rows', async () => {
    await page.getByRole('button', { name: 'Refresh' }).click();
    return (await page.locator('[data-testid=logs-table] tbody tr').count()) >= 6;
  });
  await shot('logs');
  await page.locator('[data-testid=logs-table] tbody tr button.link').first().click();
  await page.locator('[data-testid=log-detail]').getByText(/chat\/completions/).waitFor();
  await page.locator('[data-testid=log-detail] pre.body').first().getByText(/gpt-e2e/).waitFor();
  await shot('log-detail');
  await page.keyboard.press('Escape');
  await page.selectOption('form.filters select[name=service]', 'mock');
  await page.fill('form.filters input[name=status]', '5xx');
  await page.getByRole('button', { name: 'Apply' }).click();
  await page.getByText('No requests match.').waitFor();
  if (!page.url().includes('status=5xx')) throw new Error('filters are not kept in the address');
});

await test('the_dashboard_counts_the_calls', async () => {
  await goto('/');
  await until('dashboard totals', async () => {
    await page.locator('[data-testid=refresh]').click();
    const n = Number((await page.locator('[data-testid=total-requests] strong').innerText().catch(() => '0')).replace(/\D/g, ''));
    return n >= 6;
  });
  await page.locator('svg.chart path.line').first().waitFor();
  await page.getByRole('heading', { name: 'Top models' }).waitFor();
  await page.locator('.tops').getByText('gpt-e2e').waitFor();
  await page.locator('button[data-range="24h"]').click();
  await page.locator('button[data-range="24h"][aria-pressed=true]').waitFor();
  await page.locator('button[data-range="1h"]').click();
  await until('totals again', async () => Number((await page.locator('[data-testid=total-requests] strong').innerText()).replace(/\D/g, '')) >= 6);
  await shot('dashboard');
});

await test('a_disabled_key_is_skipped', async () => {
  const [off, on] = state.keyIds;
  await goto('/services/mock/keys');
  await page.locator(`[data-testid=toggle-${off}]`).click();
  await page.locator(`[data-testid=toggle-${off}]`).getByText('Enable').waitFor();
  await page.locator('.badge.b-disabled').first().waitFor();
  const before = (await admin('GET', '/admin/logs?limit=500', null, adminToken)).items.length;
  // The snapshot the data plane reads refreshes within its interval; wait until the key is out.
  await until('calls after the disable use the other key only', async () => {
    for (let i = 0; i < 4; i++) await chat(state.accessKey);
    const logs = await until('logs written', async () => {
      const l = (await admin('GET', '/admin/logs?limit=500', null, adminToken)).items;
      return l.length >= before + 4 ? l : null;
    });
    return logs.slice(0, 4).every((l) => l.upstream_key_id === on);
  });
  await goto('/services/mock/keys');
  await page.locator('.badge.b-disabled').first().waitFor();
  await shot('keys');
  await page.getByRole('button', { name: 'Stats' }).last().click();
  await page.locator('dialog.drawer').getByText('Requests, last 24 hours').waitFor();
  await page.locator('dialog.drawer svg.chart').waitFor();
  await shot('key-stats');
  await page.keyboard.press('Escape');
  await goto('/');
  await page.locator('[data-testid=attention]').getByText('disabled').waitFor();
  // Batch: select every key on the page and enable them.
  await goto('/services/mock/keys');
  await page.getByRole('checkbox', { name: 'Select all on this page' }).check();
  await page.locator('[data-testid=selected]').getByText('2 selected').waitFor();
  await page.getByRole('toolbar').getByRole('button', { name: 'Enable' }).click();
  await page.getByText('1 keys changed.').waitFor();
  await until('both keys active', async () => (await page.locator('.badge.b-active').count()) === 2);
});

await test('pricing_explains_which_rule_applies', async () => {
  await goto('/pricing');
  await page.getByRole('button', { name: 'New rule' }).click();
  await page.fill('dialog input[name=pattern]', 'gpt-e2e*');
  await page.fill('dialog input[name=input_per_mtok]', '2');
  await page.fill('dialog input[name=output_per_mtok]', '8');
  await page.getByRole('button', { name: 'Create rule' }).click();
  await page.locator('table').getByText('gpt-e2e*').waitFor();
  await page.fill('form.check input[name=model]', 'gpt-e2e-large');
  await page.locator('form.check').getByRole('button', { name: 'Check' }).click();
  await page.locator('[data-testid=price-check]').getByText('gpt-e2e*').waitFor();
  await shot('pricing');
});

await test('an_admin_creates_a_viewer_user', async () => {
  await goto('/users');
  await page.getByRole('button', { name: 'New user' }).click();
  await page.fill('dialog input[name=username]', 'watcher');
  await page.fill('dialog input[name=password]', VIEWER_PASSWORD);
  await page.selectOption('dialog select[name=role]', 'viewer');
  await page.getByRole('button', { name: 'Create user' }).click();
  await page.locator('table').getByText('watcher').waitFor();
  await shot('users');
});

await test('the_connect_panel_gives_the_base_url_and_snippets_and_the_service_form_edits', async () => {
  await goto('/services/mock/connect');
  if ((await text('[data-testid=base-url]')) !== '/llm/mock/v1') throw new Error('wrong base path');
  const snippet = await page.locator('[data-snippet=openai-py] pre').innerText();
  if (!snippet.includes(`${base}/llm/mock/v1`)) throw new Error(`snippet without the base URL: ${snippet}`);
  await page.locator('[data-snippet=claude-code]').getByText('ANTHROPIC_BASE_URL').waitFor();
  await shot('connect');
  await goto('/services/mock');
  await page.locator('[data-testid=service-form]').waitFor();
  await shot('service-edit');
  // An edit sends only what changed: the masked values the form shows are never written back.
  await page.selectOption('select[name=strategy]', 'weighted');
  await page.fill('textarea[name=model_allow]', 'gpt-*\nclaude-*');
  await page.getByRole('button', { name: 'Save' }).click();
  await page.waitForURL(/#\/services$/);
  const svc = await admin('GET', '/admin/services/mock', null, adminToken);
  if (svc.strategy !== 'weighted' || svc.model_allow.join() !== 'gpt-*,claude-*' || svc.model_aliases.gpt4 !== 'gpt-4o') {
    throw new Error(`edit not saved as asked: ${JSON.stringify(svc)}`);
  }
});

await test('a_viewer_logs_in_by_keyboard_and_sees_no_write_buttons', async () => {
  await page.getByRole('button', { name: 'Log out' }).click();
  await page.waitForSelector('form.login');
  // By keyboard only: the username has focus, Tab moves on, Enter submits.
  await page.keyboard.type('watcher');
  await page.keyboard.press('Tab');
  await page.keyboard.type(VIEWER_PASSWORD);
  await page.keyboard.press('Enter');
  await page.waitForSelector('[data-testid=who]');
  await page.keyboard.press('Tab');
  await page.keyboard.press('Enter');
  await until('skip link focuses the content', () => page.evaluate(() => document.activeElement?.id === 'main'));
  for (const [hash, ready] of [['/services', 'table'], ['/services/mock/keys', '[data-testid=masked-key]'], ['/access-keys', 'table'], ['/pricing', 'table']]) {
    await goto(hash);
    await page.locator(ready).first().waitFor();
    const writes = await page.locator('main').getByRole('button', { name: /New|Import|Delete|Disable|Enable|Revoke|Edit|Test/ }).count();
    if (writes) throw new Error(`${hash}: ${writes} write buttons for a viewer`);
  }
  const inputs = await page.locator('main input:not([disabled]), main textarea:not([disabled])').count();
  await goto('/services/mock');
  const editable = await page.locator('[data-testid=service-form] input:not([disabled])').count();
  if (editable) throw new Error(`the service form is editable for a viewer (${editable} inputs, ${inputs})`);
  if (await page.getByRole('link', { name: 'Users' }).count()) throw new Error('a viewer sees the users screen');
});

await test('the_language_switches_to_chinese_and_is_remembered', async () => {
  await goto('/');
  await page.selectOption('[data-testid=lang]', 'zh');
  await page.getByRole('link', { name: '服务' }).waitFor();
  await page.reload();
  await page.getByRole('link', { name: '请求日志' }).waitFor();
  await page.locator('[data-testid=total-requests]').waitFor();
  await shot('dashboard-zh');
  await page.selectOption('[data-testid=lang]', 'en');
  await page.getByRole('link', { name: 'Services' }).waitFor();
});

await test('dark_mode_and_a_phone_width_work', async () => {
  await page.getByRole('button', { name: 'Switch light/dark' }).click();
  await until('dark theme', () => page.evaluate(() => document.documentElement.dataset.theme === 'dark'));
  const bg = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
  if (bg !== 'rgb(17, 20, 24)') throw new Error(`dark background expected, got ${bg}`);
  await goto('/services/mock/keys');
  await page.locator('[data-testid=masked-key]').first().waitFor();
  await shot('keys-dark');
  await page.getByRole('button', { name: 'Switch light/dark' }).click();
  await page.setViewportSize({ width: 390, height: 844 });
  const menu = page.getByRole('button', { name: /Menu/ });
  await menu.waitFor();
  if (await page.getByRole('link', { name: 'Pricing' }).isVisible()) throw new Error('the nav should fold behind the menu');
  await menu.click();
  await page.getByRole('link', { name: 'Pricing' }).waitFor();
  const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
  if (overflow > 1) throw new Error(`the page is ${overflow}px wider than the phone`);
  await shot('phone');
  await page.setViewportSize({ width: 1280, height: 860 });
});

await test('an_expired_session_goes_back_to_login', async () => {
  await page.evaluate(() => localStorage.setItem('keygate.expires', String(Date.now() - 1000)));
  await page.reload();
  await page.waitForSelector('form.login');
  await page.getByText('Your session has expired').waitFor();
  await page.keyboard.press('Tab');
  const focused = await page.evaluate(() => document.activeElement?.tagName);
  if (!focused) throw new Error('nothing takes keyboard focus');
});

await test('no_script_errors_or_csp_violations_happened', async () => {
  if (pageErrors.length) throw new Error(pageErrors.join('\n'));
});

await browser.close();
for (const c of children) c.kill();
rmSync(dataDir, { recursive: true, force: true });
console.log(`\ntest result: ${failed ? 'FAILED' : 'ok'}. ${passed} passed; ${failed} failed; 0 ignored; 0 measured; 0 filtered out`);
process.exit(failed ? 1 : 0);

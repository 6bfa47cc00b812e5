// End-to-end tests of the web console in headless Chromium (Debian's `chromium`, driven by
// playwright-core). Starts the built gateway binary on a fresh PostgreSQL database and a free port,
// with the built-in simulated provider; signs in as a user and as an admin and walks every page.
// Screenshots of each page go to tests/console/artifacts/ (git-ignored); with UPDATE_DOCS=1 the
// console pictures (docs/console-*.png) are retaken too.
//
// Run: (cd tests/console && npm ci && node --test console.test.mjs), after `cargo build`.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { startFakeStripe } from './fake-stripe.mjs';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, '../..');
const binary = join(process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, 'target'), 'debug', 'aio-gateway');
const artifacts = join(here, 'artifacts');
const docs = join(root, 'docs');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Bounds that only stop a hang; nothing passes or fails on time.
const WAIT = { timeout: 30_000 };

const work = mkdtempSync(join(tmpdir(), 'aio-console-'));
const database = `aio_console_${Date.now()}_${process.pid}`;
const databaseUrl = `${process.env.AIO_TEST_POSTGRES || 'postgres://postgres@127.0.0.1:5432'}/${database}`;
let gateway;
let base;
let browser;
let admin; // { key, account }
let user; // { key, account }
let userPage;
let ranTaskId;
let stripe; // the fake Stripe (./fake-stripe.mjs)
const STRIPE_SECRET_KEY = 'sk_test_console_e2e';
const STRIPE_WEBHOOK_SECRET = 'whsec_console_e2e';
// The shipped config and one package on sale (billing.md).
const config = join(work, 'gateway.toml');

function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

const environment = (port) => {
  const env = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('AIO__') && name !== 'AIO_JWT_SECRET'));
  return {
    ...env,
    DATABASE_URL: databaseUrl,
    AIO__SERVER__LISTEN: `127.0.0.1:${port}`,
    AIO__FILES__DIR: join(work, 'files'),
    AIO__CATALOG__MODELS_PATH: join(root, 'config/models.toml'),
    AIO__PROVIDERS__SIMULATED__DELAY_MS: '500',
    AIO__TASKS__TICK_MS: '100',
    AIO__TASKS__POLL_INITIAL_MS: '200',
    AIO__BOOTSTRAP__CREDITS: '1000',
    // The bootstrap account (1) signs in as admin; every other account as a user.
    AIO__AUTH__SESSION__ADMIN_ACCOUNTS: '1',
    AIO__BILLING__STRIPE__API_BASE: stripe ? stripe.base : 'http://127.0.0.1:9',
    STRIPE_SECRET_KEY,
    STRIPE_WEBHOOK_SECRET,
    RUST_LOG: 'warn',
  };
}

async function cli(...args) {
  const { stdout } = await run(binary, ['--config', join(root, 'config/gateway.toml'), '--json', ...args], { env: environment(0), cwd: root });
  return JSON.parse(stdout);
}

// curl itself, as a user of the API would run it: `[status, body]`.
async function curl(...args) {
  const { stdout } = await run('curl', ['-sS', '-w', '\n%{http_code}', ...args]);
  const at = stdout.lastIndexOf('\n');
  return [Number(stdout.slice(at + 1)), stdout.slice(0, at)];
}

async function credits(key) {
  const [status, body] = await curl('-H', `Authorization: Bearer ${key}`, `${base}/api/v1/billing/credits`);
  assert.equal(status, 200, body);
  return JSON.parse(body);
}

async function waitTerminal(key, taskId) {
  for (;;) {
    const [, body] = await curl('-H', `Authorization: Bearer ${key}`, `${base}/api/v1/tasks/${taskId}`);
    const task = JSON.parse(body);
    if (task.status === 'succeeded' || task.status === 'failed') return task;
    await new Promise((r) => setTimeout(r, 200));
  }
}

async function shot(page, name, { docsName } = {}) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
  if (docsName && process.env.UPDATE_DOCS === '1') {
    await page.screenshot({ path: join(docs, docsName), fullPage: true });
  }
}

async function signIn(key, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  // Answers like 401 and 403 are expected; script errors and CSP refusals are not.
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(String(error)));
  page.problems = problems;
  await page.goto(base + '/');
  assert.equal(new URL(page.url()).pathname, '/console', '/ redirects to the console');
  await page.locator('#sign-in-key').waitFor(WAIT);
  await page.fill('#sign-in-key', key);
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#nav').waitFor({ state: 'visible', ...WAIT });
  return page;
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  mkdirSync(docs, { recursive: true });
  const port = await freePort();
  base = `http://127.0.0.1:${port}`;
  writeFileSync(config, readFileSync(join(root, 'config/gateway.toml'), 'utf8') +
    '\n[[billing.packages]]\nid = "starter"\ncredits = 1000\namount = 500\ncurrency = "usd"\nlabel = "1,000 credits"\n');
  stripe = await startFakeStripe({
    root, secretKey: STRIPE_SECRET_KEY, webhookSecret: () => STRIPE_WEBHOOK_SECRET,
    webhookUrl: () => `${base}/api/v1/billing/stripe/webhook`,
  });
  const log = openSync(join(work, 'gateway.log'), 'w');
  const out = openSync(join(work, 'gateway.out'), 'w');
  gateway = spawn(binary, ['--config', config, 'serve'], { env: environment(port), cwd: root, stdio: ['ignore', out, log] });
  for (let i = 0; ; i++) {
    try {
      const response = await fetch(base + '/readyz');
      if (response.ok) break;
    } catch (_) { /* not listening yet */ }
    if (gateway.exitCode !== null || i > 120) throw new Error('the gateway did not start:\n' + readFileSync(join(work, 'gateway.log'), 'utf8'));
    await new Promise((r) => setTimeout(r, 250));
  }
  const bootstrapKey = readFileSync(join(work, 'gateway.out'), 'utf8').match(/aio_[A-Za-z0-9]+/);
  assert.ok(bootstrapKey, 'the bootstrap key is printed');
  admin = { key: bootstrapKey[0], account: 1 };
  const account = await cli('accounts', 'create', '--name', 'e2e-user', '--credits', '500');
  const accountId = account.account_id ?? account.id;
  const key = await cli('keys', 'create', '--account', String(accountId), '--name', 'e2e');
  user = { key: key.api_key, account: accountId };
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
});

after(async () => {
  await browser?.close();
  await stripe?.close();
  if (gateway && gateway.exitCode === null) {
    gateway.kill('SIGTERM');
    await new Promise((r) => gateway.once('exit', r));
  }
  await run('psql', ['-q', '-h', '127.0.0.1', '-U', 'postgres', '-d', 'postgres', '-c', `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`]).catch(() => {});
  rmSync(work, { recursive: true, force: true });
});

test('the console is served with a strict CSP and cache headers on hashed assets', async () => {
  const response = await fetch(base + '/console');
  assert.equal(response.status, 200);
  const csp = response.headers.get('content-security-policy');
  assert.match(csp, /script-src 'self'/);
  assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
  assert.equal(response.headers.get('cache-control'), 'no-cache');
  const html = await response.text();
  const assets = [...html.matchAll(/\/console\/assets\/[\w.]+/g)].map((m) => m[0]);
  assert.ok(assets.length >= 2, 'the page names its assets');
  for (const asset of assets) {
    assert.match(asset, /\.[0-9a-f]{16}\.(js|css)$/, 'asset names carry their content hash');
    const answer = await fetch(base + asset);
    assert.equal(answer.status, 200, asset);
    assert.match(answer.headers.get('cache-control'), /immutable/);
  }
});

test('sign in with a key', async () => {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await context.newPage();
  await page.goto(base + '/console');
  await page.locator('#sign-in-key').waitFor(WAIT);
  await shot(page, '01-sign-in');
  await page.fill('#sign-in-key', 'aio_' + 'x'.repeat(40));
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#sign-in-error').waitFor({ state: 'visible', ...WAIT });
  assert.match(await page.textContent('#sign-in-error'), /unauthorized/);
  await context.close();

  userPage = await signIn(user.key);
  assert.equal(await userPage.textContent('#who-name'), 'e2e-user');
  const cookies = await userPage.context().cookies();
  const session = cookies.find((c) => c.name === 'aio_session');
  assert.ok(session, 'the session cookie is set');
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, 'Strict');
  assert.equal(await userPage.evaluate(() => document.cookie), '', 'scripts cannot read the session');
  const stored = await userPage.evaluate(() => JSON.stringify({ ...localStorage }) + JSON.stringify({ ...sessionStorage }));
  assert.ok(!stored.includes(user.key), 'the key is not kept in storage');
});

test('the catalog shows Seedream 4.5 at 12 credits and the decision panel agrees with GET /api/v1/models', async () => {
  const page = userPage;
  await page.goto(base + '/console#/models');
  const row = page.locator('tr[data-model="seedream-4-5"]');
  await row.waitFor(WAIT);
  assert.match(await row.textContent(), /Seedream 4\.5/);
  assert.equal(await row.locator('td[data-credits]').textContent(), '12');

  const list = await (await fetch(base + '/api/v1/models')).json();
  const summary = list.endpoint_summary;
  const figure = (name) => page.textContent(`[data-figure="${name}"]`);
  assert.equal(await figure('models'), String(summary.models));
  assert.equal(await figure('providers'), String(summary.providers));
  assert.equal(await figure('credit_range'), `${summary.credit_range.min}–${summary.credit_range.max}`);
  assert.equal(await figure('webhook_coverage'), summary.webhook_coverage);
  assert.equal(await figure('lowest_cost_model'), `${summary.lowest_cost_model.name} (${summary.lowest_cost_model.credits})`);
  assert.equal(await page.locator('tr[data-model]').count(), list.data.length, 'one row per model');
  assert.equal(await page.getAttribute('#mode-banner', 'data-mode'), list.mode, 'the console says which mode runs');

  const prices = () => page.$$eval('td[data-credits]', (cells) => cells.map((c) => Number(c.dataset.credits)));
  await page.click('#sort-price');
  const ascending = await prices();
  assert.deepEqual(ascending, [...ascending].sort((a, b) => a - b));
  await page.click('#sort-price');
  const descending = await prices();
  assert.deepEqual(descending, [...descending].sort((a, b) => b - a));
  await page.click('#sort-price');
  await shot(page, '02-models', { docsName: 'console-catalog.png' });

  // 360 px wide: nothing sticks out of the page (wide tables scroll inside their box).
  const phone = await signIn(user.key, { width: 360, height: 740 });
  for (const hash of ['#/models', '#/console', '#/keys', '#/usage']) {
    await phone.goto(base + '/console' + hash);
    await phone.locator('.page').waitFor(WAIT);
    const width = await phone.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 360, `${hash} is ${width} px wide at 360 px`);
    await shot(phone, `phone-${hash.slice(2)}`);
  }
  assert.deepEqual(phone.problems, [], 'no script errors or CSP violations');
  await phone.context().close();
});

test("the API console's curl example, run with curl, gets 200", async () => {
  const page = userPage;
  await page.goto(base + '/console#/console?model=seedream-4-5');
  await page.locator('#example-curl').waitFor(WAIT);
  assert.equal(await page.inputValue('#param-aspect_ratio'), '1:1', 'defaults are filled');
  await page.selectOption('#param-aspect_ratio', '16:9');
  const example = await page.textContent('#example-curl');
  assert.match(example, /"aspect_ratio":"16:9"/, 'the example follows the form');
  const { stdout } = await run('bash', ['-c', example + " -w '\\n%{http_code}'"], { env: { ...process.env, AIO_KEY: user.key } });
  const at = stdout.lastIndexOf('\n');
  assert.equal(stdout.slice(at + 1), '200', stdout);
  const task = JSON.parse(stdout.slice(0, at));
  assert.equal(task.model, 'seedream-4-5');
  assert.equal(task.input.aspect_ratio, '16:9');
  assert.equal((await waitTerminal(user.key, task.task_id)).status, 'succeeded');
  assert.match(await page.textContent('#example-fetch'), /fetch\(/);
  assert.match(await page.textContent('#example-python'), /requests\.post\(/);
});

test('Run completes with an image on the page and the balance 12 lower', async () => {
  const page = userPage;
  const before = (await credits(user.key)).balance;
  await page.click('#run');
  await page.locator('#run-status[data-status="succeeded"]').waitFor(WAIT);
  const image = page.locator('img.result-image');
  await image.waitFor(WAIT);
  await page.waitForFunction(() => {
    const img = document.querySelector('img.result-image');
    return img && img.complete && img.naturalWidth > 0;
  }, null, WAIT);
  await page.locator('#run-balance').waitFor(WAIT);
  assert.equal(await page.textContent('#run-charged'), '12');
  assert.equal(Number(await page.textContent('#run-balance')), before - 12);
  assert.equal((await credits(user.key)).balance, before - 12);
  ranTaskId = await page.textContent('#run-task');
  await shot(page, '03-api-console', { docsName: 'console-api.png' });
});

test('Cancel on a running task ends it cancelled, live, and charges nothing', async () => {
  const page = userPage;
  const before = (await credits(user.key)).balance;
  await page.fill('#param-prompt', 'A slow lake [simulate:delay=60000]');
  await page.click('#run');
  // The status follows the task's event stream: running, then cancelled after the click.
  await page.locator('#run-status[data-status="running"]').waitFor(WAIT);
  await page.click('#run-cancel');
  await page.locator('#run-status[data-status="cancelled"]').waitFor(WAIT);
  await page.locator('#run-cancelled').waitFor(WAIT);
  assert.equal((await credits(user.key)).balance, before);
  assert.equal((await credits(user.key)).held, 0);
});

test('a bad parameter shows the error message', async () => {
  const page = userPage;
  await page.fill('#param-prompt', '');
  await page.click('#run');
  const error = page.locator('#run-result .error');
  await error.waitFor(WAIT);
  assert.equal(await error.getAttribute('data-error-code'), 'invalid_request');
  assert.match(await error.textContent(), /invalid_request.*`prompt`: required/);
  await shot(page, '04-api-console-error');
});

test('create a key, use it from curl, revoke it, and curl gets 401', async () => {
  const page = userPage;
  await page.goto(base + '/console#/keys');
  await page.locator('#key-form').waitFor(WAIT);
  await page.fill('#key-name', 'from-the-console');
  await page.click('#key-form button[type=submit]');
  await page.locator('#new-key').waitFor(WAIT);
  const key = await page.textContent('#new-key');
  assert.match(key, /^aio_[A-Za-z0-9]{32,}$/);
  await shot(page, '05-keys-created');
  const use = () => curl('-H', `Authorization: Bearer ${key}`, `${base}/api/v1/billing/credits`);
  assert.equal((await use())[0], 200);

  const row = page.locator(`tr[data-prefix="${key.slice(0, 12)}"]`);
  await row.waitFor(WAIT);
  page.once('dialog', (dialog) => dialog.accept());
  await row.locator('button[data-revoke]').click();
  await row.locator('.status[data-status="revoked"]').waitFor(WAIT);
  const [status, body] = await use();
  assert.equal(status, 401, body);
  assert.equal(JSON.parse(body).error.code, 'unauthorized');
  await shot(page, '06-keys-revoked');
});

test('the usage page lists the task', async () => {
  const page = userPage;
  await page.goto(base + '/console#/usage');
  await page.locator(`#tasks tr[data-task="${ranTaskId}"]`).waitFor(WAIT);
  assert.match(await page.textContent(`#tasks tr[data-task="${ranTaskId}"]`), /succeeded/);
  assert.equal(Number(await page.textContent('#balance')), (await credits(user.key)).balance);
  await page.selectOption('#filter-status', 'failed');
  await page.locator('#tasks p.muted').waitFor(WAIT);
  assert.equal(await page.locator('#tasks tr[data-task]').count(), 0, 'no failed tasks');
  await page.selectOption('#filter-status', 'succeeded');
  await page.selectOption('#filter-model', 'seedream/4.5-text-to-image');
  await page.locator(`#tasks tr[data-task="${ranTaskId}"]`).waitFor(WAIT);
  assert.match(await page.textContent('#ledger'), /capture|charge/);
  await page.click('#reveal-secret');
  await page.waitForFunction(() => document.querySelector('#webhook-secret').textContent.startsWith('whsec_') && !document.querySelector('#webhook-secret').textContent.includes('•'), null, WAIT);
  await shot(page, '07-usage');
});

test('a user cannot reach the admin page', async () => {
  const page = userPage;
  assert.equal(await page.isVisible('#nav-admin'), false, 'no admin link for a user');
  await page.goto(base + '/console#/admin');
  const refusal = page.locator('#page-admin .error[data-error-code="forbidden"]');
  await refusal.waitFor(WAIT);
  assert.equal(await page.locator('#page-admin table').count(), 0);
  const status = await page.evaluate(async () => (await fetch('/api/v1/admin/accounts')).status);
  assert.equal(status, 403, 'the admin API refuses the user session too');
  await shot(page, '08-admin-refused');

  const adminPage = await signIn(admin.key);
  assert.equal(await adminPage.isVisible('#nav-admin'), true);
  await adminPage.goto(base + '/console#/admin');
  const row = adminPage.locator(`#page-admin tr[data-account="${user.account}"]`);
  await row.waitFor(WAIT);
  const before = Number(await row.locator('td[data-balance]').textContent());
  await row.locator('input.amount').fill('25');
  await row.locator('input[aria-label="Reason"]').fill('e2e grant');
  await row.locator('button[type=submit]').click();
  await adminPage.locator('#admin-message .ok').waitFor(WAIT);
  await adminPage.waitForFunction(([id, value]) => document.querySelector(`tr[data-account="${id}"] td[data-balance]`)?.textContent === String(value), [user.account, before + 25], WAIT);
  assert.equal((await credits(user.key)).balance, before + 25);
  await adminPage.fill('#account-name', 'e2e-created');
  await adminPage.fill('#account-credits', '7');
  await adminPage.click('#account-form button[type=submit]');
  await adminPage.locator('#page-admin tr[data-account] >> text=e2e-created').waitFor(WAIT);
  await shot(adminPage, '09-admin');
  assert.deepEqual(adminPage.problems, [], 'no script errors or CSP violations');
  await adminPage.context().close();
});

test('the audit page is refused to a user and shows an admin who changed what, filtered', async () => {
  const page = userPage;
  assert.equal(await page.isVisible('#nav-audit'), false, 'no audit link for a user');
  await page.goto(base + '/console#/audit');
  await page.locator('#page-audit .error[data-error-code="forbidden"]').waitFor(WAIT);
  const status = await page.evaluate(async () => (await fetch('/api/v1/admin/audit')).status);
  assert.equal(status, 403, 'the audit API refuses the user session too');

  const adminPage = await signIn(admin.key);
  assert.equal(await adminPage.isVisible('#nav-audit'), true);
  await adminPage.goto(base + '/console#/audit');
  await adminPage.locator('#audit-entries tr[data-action="session.sign_in"]').first().waitFor(WAIT);
  // The grant the admin page made above: filtered by action and account.
  await adminPage.selectOption('#audit-action', 'credits.grant');
  await adminPage.fill('#audit-account', String(user.account));
  await adminPage.click('#audit-filters button[type=submit]');
  await adminPage.waitForFunction(() => {
    const rows = [...document.querySelectorAll('#audit-entries tr[data-entry]')];
    return rows.length > 0 && rows.every((row) => row.dataset.action === 'credits.grant')
      && document.querySelector('#audit-entries').textContent.includes('e2e grant');
  }, null, WAIT);
  const text = await adminPage.textContent('#audit-entries');
  assert.match(text, /admin 1 \(aio_/, 'the admin, with the prefix of its key');
  assert.ok(!text.includes(admin.key) && !text.includes(user.key), 'no key on the page');
  // A filter the server refuses shows its message.
  await adminPage.fill('#audit-actor', 'root');
  await adminPage.click('#audit-filters button[type=submit]');
  await adminPage.locator('#audit-message .error[data-error-code="invalid_request"]').waitFor(WAIT);
  await shot(adminPage, '09-audit');
  assert.deepEqual([...page.problems, ...adminPage.problems], [], 'no script errors or CSP violations');
  await adminPage.context().close();
});

test('Buy opens the fake Stripe Checkout; paying sends the signed webhook and the balance goes up once', async () => {
  const page = userPage;
  const before = (await credits(user.key)).balance;
  await page.goto(base + '/console#/billing');
  const buy = page.locator('button[data-buy="starter"]');
  await buy.waitFor(WAIT);
  await shot(page, '08-billing');
  await buy.click();
  await page.waitForURL((url) => url.href.startsWith(stripe.base + '/c/pay/cs_test_'), WAIT);
  assert.match(await page.textContent('h1'), /Pay 5\.00 USD/);
  await page.click('#pay');
  // Back on the console, with the payment confirmed by the webhook (sent before the redirect).
  await page.waitForURL((url) => url.href.startsWith(base + '/console#/billing?order=ord_') && url.href.endsWith('result=paid'), WAIT);
  await page.locator('#billing-message .ok').waitFor(WAIT);
  assert.equal(stripe.deliveries.length, 1);
  assert.equal(stripe.deliveries[0].status, 200);
  assert.equal(await page.textContent('#billing-balance'), String(before + 1000));
  const order = new URL(page.url().replace('#/billing?', '?')).searchParams.get('order');
  await page.locator(`#orders tr[data-order="${order}"] .status[data-status="paid"]`).waitFor(WAIT);
  await shot(page, '09-billing-paid');

  // Stripe delivers the same event again: the balance does not move.
  const replay = await stripe.deliver(stripe.deliveries[0].payload);
  assert.equal(replay.status, 200);
  assert.equal((await replay.json()).outcome, 'duplicate');
  assert.equal((await credits(user.key)).balance, before + 1000);

  // An admin sees every account's orders.
  const adminPage = await signIn(admin.key);
  await adminPage.goto(base + '/console#/billing');
  await adminPage.locator(`#all-orders tr[data-order="${order}"]`).waitFor(WAIT);
  assert.deepEqual([...page.problems, ...adminPage.problems], []);
  await adminPage.context().close();
});

test('sign-out ends the session', async () => {
  const page = userPage;
  await page.click('#sign-out');
  await page.locator('#sign-in').waitFor({ state: 'visible', ...WAIT });
  assert.equal((await page.context().cookies()).some((c) => c.name === 'aio_session'), false, 'the cookie is gone');
  const status = await page.evaluate(async () => (await fetch('/api/v1/session')).status);
  assert.equal(status, 401);
  await page.reload();
  await page.locator('#sign-in').waitFor({ state: 'visible', ...WAIT });
  assert.equal(await page.isVisible('#nav'), false);
  assert.deepEqual(page.problems, [], 'no script errors or CSP violations');
  await shot(page, '10-signed-out');
});

// End-to-end tests of the web console in headless Chromium (Debian's `chromium`, driven by
// playwright-core). Starts the built gateway binary on a fresh PostgreSQL database and a free port,
// with the built-in simulated provider; signs in as a user and as an admin and walks every page.
// Screenshots of each page go to tests/console/artifacts/ (git-ignored); the pictures of the docs come
// from ./screenshots.mjs.
//
// Run: (cd tests/console && npm ci && node --test console.test.mjs), after `cargo build`.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { startFakeStripe } from './fake-stripe.mjs';
import { openConsole, root, startGateway, startReceiver } from './gateway.mjs';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
const artifacts = join(here, 'artifacts');
const chromiumPath = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
// Bounds that only stop a hang; nothing passes or fails on time.
const WAIT = { timeout: 30_000 };

const work = mkdtempSync(join(tmpdir(), 'aio-console-'));
let gateway; // ./gateway.mjs
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

function cli(...args) {
  return gateway.cli(...args);
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

async function shot(page, name) {
  await page.screenshot({ path: join(artifacts, `${name}.png`), fullPage: true });
}

// What sticks out of a page at its width: the page itself scrolling sideways, an element reaching past
// the viewport, or one whose content is wider than the viewport, except inside a declared scroll box
// (`.table-wrap`, `pre`, which scroll sideways by design), and content cut off by `overflow: hidden`.
function overflowing(page) {
  return page.evaluate(() => {
    const width = document.documentElement.clientWidth;
    const scrollBox = '.table-wrap, pre';
    const name = (node) => node.tagName.toLowerCase() + (node.id ? '#' + node.id : '') + (node.className && typeof node.className === 'string' ? '.' + node.className.trim().split(/\s+/).join('.') : '');
    const out = [];
    if (document.documentElement.scrollWidth > width) out.push(`the page is ${document.documentElement.scrollWidth} px wide`);
    for (const node of document.querySelectorAll('body *')) {
      if (node.closest('.offscreen, [hidden]') || node.parentElement.closest(scrollBox)) continue;
      const style = getComputedStyle(node);
      if (style.display === 'none') continue;
      const rect = node.getBoundingClientRect();
      if (rect.width === 0 && rect.height === 0) continue;
      if (rect.right > width + 0.5 || rect.left < -0.5) out.push(`${name(node)} spans ${Math.round(rect.left)}–${Math.round(rect.right)} px`);
      else if (!node.matches(scrollBox) && node.scrollWidth > width) out.push(`${name(node)} holds ${node.scrollWidth} px`);
      else if (!node.matches('input, select, textarea') && /hidden|clip/.test(style.overflowX) && node.scrollWidth > node.clientWidth + 1) {
        out.push(`${name(node)} cuts off ${node.scrollWidth - node.clientWidth} px`);
      }
    }
    return out;
  });
}

// Backticks shown as text, outside code examples (`pre`): texts from the API mark names with them and
// the console renders those as <code>.
function backticks(page) {
  return page.evaluate(() => {
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    const out = [];
    for (let node = walker.nextNode(); node; node = walker.nextNode()) {
      if (node.textContent.includes('`') && !node.parentElement.closest('pre, .offscreen')) out.push(node.textContent.trim());
    }
    return out;
  });
}

async function signIn(key, viewport = { width: 1280, height: 900 }, at = base) {
  const page = await openConsole(browser, at, key, viewport);
  assert.equal(new URL(page.url()).pathname, '/console', '/ redirects to the console');
  return page;
}

before(async () => {
  mkdirSync(artifacts, { recursive: true });
  writeFileSync(config, readFileSync(join(root, 'config/gateway.toml'), 'utf8') +
    '\n[[billing.packages]]\nid = "starter"\ncredits = 1000\namount = 500\ncurrency = "usd"\nlabel = "1,000 credits"\n');
  stripe = await startFakeStripe({
    root, secretKey: STRIPE_SECRET_KEY, webhookSecret: () => STRIPE_WEBHOOK_SECRET,
    webhookUrl: () => `${base}/api/v1/billing/stripe/webhook`,
  });
  gateway = await startGateway({
    name: 'console',
    config,
    env: { AIO__BILLING__STRIPE__API_BASE: stripe.base, STRIPE_SECRET_KEY, STRIPE_WEBHOOK_SECRET },
  });
  base = gateway.base;
  admin = { key: gateway.key, account: 1 };
  const account = await cli('accounts', 'create', '--name', 'e2e-user', '--credits', '500');
  const accountId = account.account_id ?? account.id;
  const key = await cli('keys', 'create', '--account', String(accountId), '--name', 'e2e');
  user = { key: key.api_key, account: accountId };
  browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
});

after(async () => {
  await browser?.close();
  await stripe?.close();
  await gateway?.stop();
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
  assert.equal(await figure('sources'), String(summary.sources));
  assert.equal(await figure('lowest_cost_model'), summary.lowest_cost_model.name);
  assert.equal(await page.textContent('[data-figure-detail="lowest_cost_model"]'), summary.lowest_cost_model.text);
  assert.match(summary.lowest_cost_model.text, /^Zhipu AI \/ \S+ · 4 credits · \$0\.04$/);
  const seedream = list.data.find((m) => m.id === 'seedream-4-5');
  assert.equal(await row.locator('td[data-position]').textContent(), `${seedream.position.rank}/${seedream.position.of}`);
  assert.match(await row.textContent(), /3–10 seconds/);
  assert.equal(await row.locator('td[data-backend-node]').textContent(), seedream.routes[0].backend_node, 'the backend node shows on a single gateway too');
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
  await shot(page, '02-models');

});

test("a model's page has every section, is reached from the catalog, and its request preview's curl gets 200", async () => {
  const page = userPage;
  await page.goto(base + '/console#/models');
  await page.locator('a[data-model-link="seedream-4-5"]').click();
  await page.locator('#page-model[data-model="seedream-4-5"]').waitFor(WAIT);
  assert.equal(new URL(page.url()).pathname, '/console/models/seedream-4-5', 'the page has its own address');
  const model = await (await fetch(base + '/api/v1/models/seedream-4-5')).json();
  const section = (key) => page.locator(`[data-section="${key}"]`);
  const text = (key) => section(key).textContent();
  for (const key of ['header', 'contract', 'runtime', 'request', 'parameters', 'pricing', 'capabilities', 'use-cases', 'faq', 'same-endpoint', 'comparison', 'flow']) {
    assert.equal(await section(key).count(), 1, `the ${key} section`);
    assert.doesNotMatch(await text(key), /`|\[object /, `no raw backticks or unrendered values in ${key}`);
  }
  const header = await text('header');
  for (const part of ['Seedream 4.5', 'ByteDance', 'active', '12 credits', '$0.12']) assert.ok(header.includes(part), `${part} in ${header}`);
  const contract = await text('contract');
  for (const part of [model.contract.api_url, 'Authorization: Bearer', 'POST /api/v1/images/generations', 'GET /api/v1/tasks/{task_id}', 'output.images[].url', 'GET /api/v1/usage']) {
    assert.ok(contract.includes(part), `${part} in ${contract}`);
  }
  const runtime = await text('runtime');
  for (const part of ['3–10 seconds', model.runtime_mode, `${model.position.rank}/${model.position.of}`, model.routes[0].backend_node]) {
    assert.ok(runtime.includes(part), `${part} in ${runtime}`);
  }
  assert.equal(await page.getAttribute('[data-live-route]', 'data-live-route'), model.lowest_cost_route.provider_label);
  assert.equal(await page.getAttribute('[data-parameter="image_urls"] [data-required]', 'data-required'), 'yes for seedream/4.5-edit');
  assert.equal(await page.getAttribute('[data-parameter="prompt"] [data-required]', 'data-required'), 'yes');
  assert.match(await text('parameters'), /21:9/, 'allowed values');
  assert.match(await text('pricing'), /successful requests/);
  for (const line of model.capabilities) assert.ok((await text('capabilities')).includes(line.replaceAll('`', '')), line);
  for (const line of model.use_cases) assert.ok((await text('use-cases')).includes(line.replaceAll('`', '')), line);
  for (const { q } of model.faq) assert.ok((await text('faq')).includes(q.replaceAll('`', '')), q);
  assert.equal(await section('same-endpoint').locator('a[data-model-link]').count(), model.same_endpoint.length);
  assert.equal(await section('comparison').locator('tr[data-model]').count(), model.same_endpoint.length + 1);
  assert.match(await text('flow'), /Create an API key/);
  await shot(page, '02b-model-page');

  // The request preview's curl, run as it is with a real key, creates a task that succeeds.
  const example = await page.textContent('[data-section="request"] pre');
  const { stdout } = await run('bash', ['-c', example + " -w '\\n%{http_code}'"], { env: { ...process.env, AIO_KEY: user.key } });
  const at = stdout.lastIndexOf('\n');
  assert.equal(stdout.slice(at + 1), '200', stdout);
  const task = JSON.parse(stdout.slice(0, at));
  assert.equal(task.input.aspect_ratio, '1:1', 'the defaults');
  assert.equal((await waitTerminal(user.key, task.task_id)).status, 'succeeded');

  // Another model from the same-endpoint list; an unknown one says so; the menu leaves the model's address.
  await section('same-endpoint').locator('a[data-model-link="cogview-4"]').click();
  await page.locator('#page-model[data-model="cogview-4"]').waitFor(WAIT);
  assert.equal(await page.locator('[data-parameter="image_urls"]').count(), 0, 'text-to-image: no image_urls');
  await page.goto(base + '/console/models/no-such-model');
  await page.locator('[data-error-code="not_found"]').waitFor(WAIT);
  await page.click('#nav a[data-page="keys"]');
  await page.locator('#page-keys').waitFor(WAIT);
  assert.equal(new URL(page.url()).pathname, '/console');
  assert.equal(new URL(page.url()).hash, '#/keys');

  // 360 px wide: nothing sticks out of the model's page either.
  const phone = await signIn(user.key, { width: 360, height: 740 });
  await phone.goto(base + '/console/models/seedream-4-5');
  await phone.locator('#page-model').waitFor(WAIT);
  const width = await phone.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 360, `the model page is ${width} px wide at 360 px`);
  await shot(phone, 'phone-model');
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
  await shot(page, '03-api-console');
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
  // The message's `prompt` is shown as code, without its backticks.
  assert.match(await error.textContent(), /invalid_request.*prompt: required/);
  assert.equal(await error.locator('code', { hasText: /^prompt$/ }).count(), 1);
  assert.deepEqual(await backticks(page), []);
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

test('image_urls is shown only for the sub-models that take it, and marked required for edit', async () => {
  const page = userPage;
  await page.goto(base + '/console#/console?model=seedream-4-5');
  await page.locator('#page-console [data-param="prompt"]').waitFor(WAIT);
  const field = page.locator('[data-param="image_urls"]');
  const example = () => page.textContent('#example-curl');
  assert.equal(await page.inputValue('#sub-model'), 'seedream/4.5-text-to-image');
  assert.equal(await field.isVisible(), false, 'text-to-image refuses image_urls: no field');
  await page.selectOption('#sub-model', 'seedream/4.5-edit');
  assert.equal(await field.isVisible(), true);
  assert.equal(await field.locator('.required').isVisible(), true, 'required for edit');
  assert.equal(await page.getAttribute('#param-image_urls', 'aria-required'), 'true');
  await page.fill('#param-image_urls', 'https://example.com/in.png');
  assert.match(await example(), /"image_urls":\["https:\/\/example\.com\/in\.png"\]/);
  await shot(page, '11-api-console-edit');
  await page.selectOption('#sub-model', 'seedream/4.5-text-to-image');
  assert.equal(await field.isVisible(), false);
  assert.doesNotMatch(await example(), /image_urls/, 'a hidden field is not sent');
  // A model whose sub-models take no image has no such field at all; none says "required" wrongly.
  const list = await (await fetch(base + '/api/v1/models')).json();
  const textOnly = list.data.find((m) => !m.parameters.some((p) => p.name === 'image_urls'));
  await page.goto(base + '/console#/console?model=' + encodeURIComponent(textOnly.id));
  await page.waitForFunction((id) => document.querySelector('#model')?.value === id, textOnly.id, WAIT);
  assert.equal(await field.count(), 0);
  assert.deepEqual(await backticks(page), [], 'help texts show code, not backticks');
});

test("the usage page shows a failed task's error, its webhook deliveries and attempts, capture rows explained, and filters by date", async () => {
  const page = userPage;
  // The receiver answers 503 once, then 200: two attempts, one delivery.
  const receiver = await startReceiver([503, 200]);
  try {
    const [status, body] = await curl('-X', 'POST', `${base}/api/v1/images/generations`, '-H', `Authorization: Bearer ${user.key}`,
      '-H', 'Content-Type: application/json',
      '--data-raw', JSON.stringify({ model: 'seedream/4.5-text-to-image', prompt: 'A lake [simulate:fail]', callback_url: receiver.url }));
    assert.equal(status, 200, body);
    const failed = await waitTerminal(user.key, JSON.parse(body).task_id);
    assert.equal(failed.status, 'failed');
    for (let i = 0; receiver.received.length < 2; i++) {
      assert.ok(i < 150, 'the webhook is retried after the 503');
      await new Promise((r) => setTimeout(r, 200));
    }

    await page.goto(base + '/console#/usage');
    const row = page.locator(`#tasks tr[data-task="${failed.task_id}"]`);
    await row.waitFor(WAIT);
    const error = row.locator('.task-error');
    assert.equal(await error.getAttribute('data-error-code'), failed.error.code);
    const shown = await error.textContent();
    assert.ok(shown.includes(failed.error.code) && shown.includes(failed.error.message.replaceAll('`', '')), shown);

    await row.locator(`button[data-deliveries="${failed.task_id}"]`).click();
    const log = page.locator(`tr[data-deliveries-of="${failed.task_id}"]`);
    await log.locator('.delivery .status[data-status="delivered"]').waitFor(WAIT);
    const attempts = log.locator('tr[data-attempt]');
    assert.equal(await attempts.count(), 2);
    assert.match(await attempts.nth(0).textContent(), /HTTP 503/);
    assert.match(await attempts.nth(1).textContent(), /HTTP 200/);
    assert.match(await log.textContent(), new RegExp(receiver.url.replaceAll('.', '\\.')));
    // A task without a callback_url has no log to open.
    assert.equal(await page.locator(`#tasks tr[data-task="${ranTaskId}"] button[data-deliveries]`).count(), 0);

    // A capture row says what it spent; the legend says why its amount is 0.
    const capture = page.locator('#ledger tr[data-kind="capture"]').first();
    await capture.waitFor(WAIT);
    assert.match(await capture.textContent(), /captured 12 \(held at create\)/);
    assert.match(await page.textContent('#ledger-legend'), /capture.*Amount 0/);
    assert.deepEqual(await backticks(page), []);
    await shot(page, '12-usage-deliveries');

    // Dates: from tomorrow nothing matches; from today through today, the task is back.
    const day = (offset) => {
      const date = new Date();
      date.setDate(date.getDate() + offset);
      return `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, '0')}-${String(date.getDate()).padStart(2, '0')}`;
    };
    await page.fill('#filter-from', day(1));
    await page.locator('#tasks p.muted', { hasText: 'No tasks match.' }).waitFor(WAIT);
    await page.locator('#ledger p.muted', { hasText: 'No ledger entries.' }).waitFor(WAIT);
    assert.match(await page.textContent('#usage-summary'), /^0 tasks/);
    await page.fill('#filter-from', day(0));
    await page.fill('#filter-to', day(0));
    await row.waitFor(WAIT);
    assert.equal(await page.locator('#ledger tr[data-kind="hold"]').count() > 0, true);
    assert.deepEqual(page.problems, [], 'no script errors or CSP violations');
  } finally {
    await receiver.close();
  }
});

test('every page fits a 360 px screen: nothing is cut off or sticks out', async () => {
  const userPhone = await signIn(user.key, { width: 360, height: 740 });
  const adminPhone = await signIn(admin.key, { width: 360, height: 740 });
  const pages = ['#/models', '#/console?model=seedream-4-5', '#/keys', '#/usage', '#/billing', '#/admin'];
  for (const hash of pages) {
    // The user's pages hold their tasks; the admin page needs an admin.
    const phone = hash === '#/admin' ? adminPhone : userPhone;
    await phone.goto(base + '/console' + hash);
    await phone.locator('.page').waitFor(WAIT);
    await phone.locator('.page .muted', { hasText: /^Loading…$/ }).waitFor({ state: 'detached', ...WAIT });
    if (hash === '#/usage') {
      // With a task's webhook log open, the widest row there is.
      const open = phone.locator('button[data-deliveries]').first();
      if (await open.count()) {
        await open.click();
        await phone.locator('tr[data-deliveries-of] .delivery, tr[data-deliveries-of] p').first().waitFor(WAIT);
      }
    }
    if (hash.startsWith('#/console')) await phone.selectOption('#sub-model', 'seedream/4.5-edit');
    assert.deepEqual(await overflowing(phone), [], `${hash} at 360 px`);
    await shot(phone, `phone-${hash.slice(2).replace(/\W+/g, '-')}`);
  }
  // The tables stack: no header row, each cell labelled with its column.
  await userPhone.goto(base + '/console#/models');
  const row = userPhone.locator('tr[data-model="seedream-4-5"]');
  await row.waitFor(WAIT);
  assert.equal(await userPhone.locator('.table-wrap thead').first().evaluate((node) => getComputedStyle(node).display), 'none');
  assert.equal(await row.locator('td').first().getAttribute('data-label'), 'Model');
  assert.equal(await row.locator('td[data-credits]').evaluate((node) => getComputedStyle(node, '::before').content), '"Credits"');
  assert.deepEqual([...userPhone.problems, ...adminPhone.problems], [], 'no script errors or CSP violations');
  await userPhone.context().close();
  await adminPhone.context().close();
});

test('a gateway with some providers unconfigured says which models are hidden and why', async () => {
  // Live mode with only KIE's key set (never called: its base URL goes nowhere): nine models hidden.
  const live = await startGateway({
    name: 'console_live',
    env: { KIE_API_KEY: 'console-e2e-unused', AIO__PROVIDERS__KIE__BASE_URL: 'http://127.0.0.1:9' },
  });
  try {
    const list = await (await fetch(live.base + '/api/v1/models')).json();
    assert.equal(list.mode, 'live');
    assert.ok(list.hidden_models.length > 0);
    const page = await signIn(live.key, { width: 1280, height: 900 }, live.base);
    await page.goto(live.base + '/console#/models');
    const notice = page.locator('#hidden-models');
    await notice.waitFor(WAIT);
    assert.equal(await notice.getAttribute('data-count'), String(list.hidden_models.length));
    assert.match(await notice.textContent(), new RegExp(`${list.hidden_models.length} models of the catalog are hidden: no provider that serves them is configured`));
    assert.equal(await page.locator('#hidden-models [data-hidden-model]').count(), list.hidden_models.length);
    assert.equal(await page.locator('tr[data-model]').count(), list.data.length);
    await shot(page, '13-models-hidden');
    assert.deepEqual(page.problems, []);
    await page.context().close();
  } finally {
    await live.stop();
  }
  // Demo mode hides nothing and says nothing.
  await userPage.goto(base + '/console#/models');
  await userPage.locator('tr[data-model]').first().waitFor(WAIT);
  assert.equal(await userPage.locator('#hidden-models').count(), 0);
});

test('dollars print with two decimals', async () => {
  const page = userPage;
  const usd = (value) => page.evaluate((n) => window.AIO.format.usd(n), value);
  assert.deepEqual(
    [await usd(0.04), await usd(0.1), await usd(0.12), await usd(1.2), await usd(25), await usd(0.005), await usd(0.0125)],
    ['$0.04', '$0.10', '$0.12', '$1.20', '$25.00', '$0.005', '$0.0125']);
  const cells = await page.$$eval('tr[data-model] td.num:not([data-credits]):not([data-position])', (tds) => tds.map((td) => td.textContent));
  assert.ok(cells.length > 0 && cells.every((text) => /^\$\d+\.\d\d\d*$/.test(text) && !/^\$0\.0[1-9]0$/.test(text)), cells.join(' '));
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

test('the API console quotes the request live from its price rules', async () => {
  const page = await signIn(user.key);
  try {
    await page.goto(base + '/console#/console?model=gpt-image-2-6-sunburst');
    const quote = page.locator('#quote[data-quote="25"]');
    await quote.waitFor(WAIT);
    await page.selectOption('#param-quality', 'high');
    await page.locator('#quote[data-quote="100"]').waitFor(WAIT);
    await page.selectOption('#param-aspect_ratio', '3:2');
    await page.locator('#quote[data-quote="150"]').waitFor(WAIT);
    assert.match(await page.textContent('#quote'), /quality = high ×4: 100 → aspect_ratio = 3:2 ×1\.5: 150/);
    // What the page quoted is what POST /api/v1/quotes answers for the same body.
    const answer = await page.evaluate(async () => (await fetch('/api/v1/quotes', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ model: 'gpt-image-2-6-sunburst/text-to-image', prompt: 'a cat', quality: 'high', aspect_ratio: '3:2' }),
    })).json());
    assert.equal(answer.credits, 150);
  } finally {
    await page.close();
  }
});

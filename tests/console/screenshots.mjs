// The console's pictures in docs/ (docs/console.md, "The pictures"), run by hand after `cargo build`:
//
//   (cd tests/console && npm ci && node screenshots.mjs)
//
// Starts the built gateway in demo mode (every model of the catalog on the simulated provider) on a
// fresh PostgreSQL database, runs a task from the API console, a failed one whose webhook is answered
// 503 then 200, and saves docs/console-catalog.png, console-api.png, console-usage.png and
// console-phone.png (360 px). pngquant, when installed, keeps them small.
import { execFile } from 'node:child_process';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { chromium } from 'playwright-core';
import { openConsole, root, startGateway, startReceiver } from './gateway.mjs';

const run = promisify(execFile);
const docs = join(root, 'docs');
const WAIT = { timeout: 30_000 };

async function until(check) {
  for (let i = 0; !(await check()); i++) {
    if (i > 300) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 200));
  }
}

const gateway = await startGateway({ name: 'pictures' });
const receiver = await startReceiver([503, 200]);
const browser = await chromium.launch({ executablePath: process.env.CHROMIUM_PATH || '/usr/bin/chromium', args: ['--no-sandbox', '--disable-dev-shm-usage'] });
try {
  const account = await gateway.cli('accounts', 'create', '--name', 'demo-user', '--credits', '500');
  const { api_key: key } = await gateway.cli('keys', 'create', '--account', String(account.account_id ?? account.id), '--name', 'pictures');
  const models = await (await fetch(gateway.base + '/api/v1/models')).json();
  if (models.mode !== 'demo' || models.data.length !== 11) throw new Error(`expected demo mode with 11 models, got ${models.mode} with ${models.data.length}`);

  // A failed task with a webhook: two attempts (503, then 200).
  const headers = { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' };
  const created = await (await fetch(gateway.base + '/api/v1/images/generations', {
    method: 'POST', headers,
    body: JSON.stringify({ model: 'seedream/4.5-text-to-image', prompt: 'A lighthouse at dusk [simulate:fail]', callback_url: receiver.url }),
  })).json();
  await until(() => receiver.received.length >= 2);

  const page = await openConsole(browser, gateway.base, key);
  await page.goto(gateway.base + '/console#/models');
  await page.locator('tr[data-model]').first().waitFor(WAIT);
  await page.screenshot({ path: join(docs, 'console-catalog.png'), fullPage: true });

  await page.goto(gateway.base + '/console#/console?model=seedream-4-5');
  await page.locator('#run').waitFor(WAIT);
  await page.selectOption('#param-aspect_ratio', '16:9');
  await page.click('#run');
  await page.locator('#run-status[data-status="succeeded"]').waitFor(WAIT);
  await page.waitForFunction(() => {
    const img = document.querySelector('img.result-image');
    return img && img.complete && img.naturalWidth > 0;
  }, null, WAIT);
  await page.locator('#run-balance').waitFor(WAIT);
  await page.screenshot({ path: join(docs, 'console-api.png'), fullPage: true });

  await page.goto(gateway.base + '/console#/usage');
  await page.locator(`button[data-deliveries="${created.task_id}"]`).click();
  await page.locator(`tr[data-deliveries-of="${created.task_id}"] tr[data-attempt]`).nth(1).waitFor(WAIT);
  await page.screenshot({ path: join(docs, 'console-usage.png'), fullPage: true });

  // The phone's first screens only: the panel and the first models, their rows stacked.
  const phone = await openConsole(browser, gateway.base, key, { width: 360, height: 1300 });
  await phone.goto(gateway.base + '/console#/models');
  await phone.locator('tr[data-model]').first().waitFor(WAIT);
  await phone.screenshot({ path: join(docs, 'console-phone.png') });

  const problems = [...page.problems, ...phone.problems];
  if (problems.length) throw new Error('script errors: ' + problems.join('\n'));
  await run('pngquant', ['--force', '--skip-if-larger', '--strip', '--ext', '.png',
    ...['catalog', 'api', 'usage', 'phone'].map((name) => join(docs, `console-${name}.png`))]).catch(() => {});
  console.log('saved docs/console-{catalog,api,usage,phone}.png');
} finally {
  await browser.close();
  await receiver.close();
  await gateway.stop();
}

// Starts the built gateway binary for the console's tests and pictures: a fresh PostgreSQL database, a
// free port, the shipped configuration with the built-in simulated provider (demo mode unless a
// provider key is passed in `env`), short engine ticks, and a local webhook receiver allowed as a
// callback. Answers { base, key (the bootstrap admin key), cli(...args), stop() }.
import { execFile, spawn } from 'node:child_process';
import { existsSync, mkdtempSync, openSync, readFileSync, rmSync } from 'node:fs';
import { createServer as createHttpServer } from 'node:http';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';

const run = promisify(execFile);
const here = dirname(fileURLToPath(import.meta.url));
export const root = resolve(here, '../..');
export const binary = join(process.env.CARGO_TARGET_DIR ? resolve(root, process.env.CARGO_TARGET_DIR) : join(root, 'target'), 'debug', 'aio-gateway');
const postgres = process.env.AIO_TEST_POSTGRES || 'postgres://postgres@127.0.0.1:5432';

export function freePort() {
  return new Promise((done, fail) => {
    const server = createServer();
    server.on('error', fail);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => done(port));
    });
  });
}

// The environment of a gateway: this process's, without its AIO__ settings, plus the tests' own.
function environment(work, databaseUrl, port, env) {
  const inherited = Object.fromEntries(Object.entries(process.env).filter(([name]) => !name.startsWith('AIO__') && name !== 'AIO_JWT_SECRET'));
  return {
    ...inherited,
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
    // Webhooks to the local receiver (startReceiver): http on the loopback, a retry after 1 s.
    AIO__WEBHOOKS__ALLOW_HTTP: 'true',
    AIO__WEBHOOKS__ALLOWED_PRIVATE_CIDRS: '127.0.0.0/8',
    AIO__WEBHOOKS__RETRY_SCHEDULE: '0s,1s,1s',
    AIO__WEBHOOKS__TICK_MS: '100',
    RUST_LOG: 'warn',
    ...env,
  };
}

// `config`: the gateway's configuration file; `env`: more variables (provider keys, Stripe's).
export async function startGateway({ name, config = join(root, 'config/gateway.toml'), env = {} }) {
  if (!existsSync(binary)) throw new Error(`${binary} is missing: run \`cargo build\` first (CARGO_TARGET_DIR is honoured)`);
  const work = mkdtempSync(join(tmpdir(), `aio-${name}-`));
  const database = `aio_${name.replace(/\W/g, '_')}_${Date.now()}_${process.pid}`;
  const databaseUrl = `${postgres}/${database}`;
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const log = openSync(join(work, 'gateway.log'), 'w');
  const out = openSync(join(work, 'gateway.out'), 'w');
  const variables = (at) => environment(work, databaseUrl, at, env);
  const gateway = spawn(binary, ['--config', config, 'serve'], { env: variables(port), cwd: root, stdio: ['ignore', out, log] });
  for (let i = 0; ; i++) {
    try {
      const response = await fetch(base + '/readyz');
      if (response.ok) break;
    } catch (_) { /* not listening yet */ }
    if (gateway.exitCode !== null || i > 120) throw new Error('the gateway did not start:\n' + readFileSync(join(work, 'gateway.log'), 'utf8'));
    await new Promise((r) => setTimeout(r, 250));
  }
  const bootstrapKey = readFileSync(join(work, 'gateway.out'), 'utf8').match(/aio_[A-Za-z0-9]+/);
  if (!bootstrapKey) throw new Error('the bootstrap key is not printed');
  return {
    base,
    key: bootstrapKey[0],
    async cli(...args) {
      const { stdout } = await run(binary, ['--config', config, '--json', ...args], { env: variables(0), cwd: root });
      return JSON.parse(stdout);
    },
    async stop() {
      if (gateway.exitCode === null) {
        gateway.kill('SIGTERM');
        await new Promise((r) => gateway.once('exit', r));
      }
      await run('psql', ['-q', '-h', '127.0.0.1', '-U', 'postgres', '-d', 'postgres', '-c', `DROP DATABASE IF EXISTS "${database}" WITH (FORCE)`]).catch(() => {});
      rmSync(work, { recursive: true, force: true });
    },
  };
}

// A browser page signed in to the console of `base` with `key`; `page.problems` collects script errors
// and CSP refusals (answers like 401 and 403 are expected, not problems).
export async function openConsole(browser, base, key, viewport = { width: 1280, height: 900 }) {
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const problems = [];
  page.on('console', (message) => {
    if (message.type() === 'error' && !message.text().startsWith('Failed to load resource')) problems.push(message.text());
  });
  page.on('pageerror', (error) => problems.push(String(error)));
  page.problems = problems;
  await page.goto(base + '/');
  await page.locator('#sign-in-key').waitFor({ timeout: 30_000 });
  await page.fill('#sign-in-key', key);
  await page.click('#sign-in-form button[type=submit]');
  await page.locator('#nav').waitFor({ state: 'visible', timeout: 30_000 });
  return page;
}

// A webhook receiver on the loopback: answers `statuses` in turn (the last one from then on) and keeps
// what it received. `url` is its callback URL.
export async function startReceiver(statuses) {
  const received = [];
  const server = createHttpServer((request, response) => {
    let body = '';
    request.on('data', (chunk) => { body += chunk; });
    request.on('end', () => {
      received.push(body);
      response.writeHead(statuses[Math.min(received.length, statuses.length) - 1], { 'Content-Type': 'text/plain' });
      response.end(received.length < statuses.length ? 'busy, try again' : 'ok');
    });
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  return {
    url: `http://127.0.0.1:${server.address().port}/hook`,
    received,
    close: () => new Promise((done) => server.close(done)),
  };
}

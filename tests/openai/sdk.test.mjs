// The official `openai` npm package against a running gateway (started by .ci/openai).
// Environment: AIO_BASE_URL, AIO_KEY (an account with credits), AIO_BROKE_KEY (one without).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import OpenAI, { toFile } from 'openai';

const BASE = process.env.AIO_BASE_URL;
const client = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: process.env.AIO_KEY, maxRetries: 0 });
const broke = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: process.env.AIO_BROKE_KEY, maxRetries: 0 });
const MODEL = 'seedream-4-5';

/** `promise` rejects with the SDK's own `ErrorType` and `status`; returns the error. */
async function expectError(ErrorType, status, promise) {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof ErrorType, `${error.constructor.name}: ${error.message}`);
    assert.equal(error.status, status);
    return error;
  }
  assert.fail(`expected ${ErrorType.name}`);
}

test('images.generate answers a URL', async () => {
  const result = await client.images.generate({ model: MODEL, prompt: 'A lake at dawn', size: '1024x1024' });
  assert.equal(result.data.length, 1);
  assert.ok(result.data[0].url.startsWith(`${BASE}/files/`), result.data[0].url);
});

test('images.generate answers b64_json', async () => {
  const result = await client.images.generate({ model: MODEL, prompt: 'A fox', response_format: 'b64_json' });
  const png = Buffer.from(result.data[0].b64_json, 'base64');
  assert.deepEqual([...png.subarray(0, 4)], [0x89, 0x50, 0x4e, 0x47]);
});

test('images.edit takes a file', async () => {
  const source = await client.images.generate({ model: MODEL, prompt: 'A chair', response_format: 'b64_json' });
  const image = await toFile(Buffer.from(source.data[0].b64_json, 'base64'), 'chair.png', { type: 'image/png' });
  const result = await client.images.edit({ model: MODEL, image, prompt: 'Make it blue' });
  assert.ok(result.data[0].url.startsWith(`${BASE}/files/`));
});

test('models.list and models.retrieve', async () => {
  const ids = [];
  for await (const model of client.models.list()) ids.push(model.id);
  assert.ok(ids.includes(MODEL), ids.join(','));
  assert.equal((await client.models.retrieve(MODEL)).id, MODEL);
});

test('errors are the SDK\'s own exception types', async () => {
  const stranger = new OpenAI({ baseURL: `${BASE}/v1`, apiKey: `aio_${'0'.repeat(40)}`, maxRetries: 0 });
  await expectError(OpenAI.AuthenticationError, 401, stranger.images.generate({ model: MODEL, prompt: 'x' }));
  const bad = await expectError(OpenAI.BadRequestError, 400, client.images.generate({ model: MODEL, prompt: 'x', size: '7x7' }));
  assert.equal(bad.param, 'size');
  await expectError(OpenAI.NotFoundError, 404, client.models.retrieve('no-such-model'));
  const quota = await expectError(OpenAI.RateLimitError, 429, broke.images.generate({ model: MODEL, prompt: 'x' }));
  assert.equal(quota.code, 'insufficient_quota');
  const slow = await expectError(
    OpenAI.InternalServerError, 504, client.images.generate({ model: MODEL, prompt: 'Slow [simulate:delay=60000]' }),
  );
  assert.equal(slow.code, 'task_pending');
  assert.match(slow.message, /task_/);
});

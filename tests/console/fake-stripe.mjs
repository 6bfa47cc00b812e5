// A fake Stripe for the console's end-to-end test: `POST /v1/checkout/sessions` (form-encoded, the
// secret key as bearer) answers Stripe's Checkout Session object, whose shape is Stripe's own fixture
// (`resources["checkout.session"]` of openapi/fixtures3.json in the stripe/openapi repository, kept in
// tests/billing/stripe-fixtures.json, shared with the Rust fake in tests/api/fakes/stripe.rs); its
// `url` is this fake's hosted checkout page, which has a Pay button. Paying sends the gateway the
// `checkout.session.completed` event signed by the official `stripe` package
// (`stripe.webhooks.generateTestHeaderString`, installed in tests/billing by .ci/billing), then
// redirects to the session's success_url, as Stripe does.
import { createServer } from 'node:http';
import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';

export async function startFakeStripe({ root, secretKey, webhookSecret, webhookUrl }) {
  const require = createRequire(join(root, 'tests/billing/package.json'));
  const Stripe = require('stripe');
  const signer = new Stripe('sk_test_unused_by_signing');
  const fixtures = JSON.parse(readFileSync(join(root, 'tests/billing/stripe-fixtures.json'), 'utf8'));
  const sessions = new Map();
  const deliveries = [];
  let base;

  async function deliver(payload) {
    const signature = signer.webhooks.generateTestHeaderString({ payload, secret: webhookSecret() });
    const response = await fetch(webhookUrl(), { method: 'POST', headers: { 'content-type': 'application/json', 'stripe-signature': signature }, body: payload });
    deliveries.push({ payload, status: response.status });
    return response;
  }

  const server = createServer(async (request, response) => {
    let body = '';
    for await (const chunk of request) body += chunk;
    const url = new URL(request.url, base);
    const pay = url.pathname.match(/^\/c\/pay\/(cs_test_\w+)$/);
    if (request.method === 'POST' && url.pathname === '/v1/checkout/sessions') {
      if (request.headers.authorization !== `Bearer ${secretKey}`) {
        response.writeHead(401, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'Invalid API Key provided.', type: 'invalid_request_error' } }));
        return;
      }
      const form = new URLSearchParams(body);
      const id = 'cs_test_' + randomBytes(24).toString('hex');
      const now = Math.floor(Date.now() / 1000);
      const metadata = Object.fromEntries([...form].filter(([k]) => /^metadata\[\w+\]$/.test(k)).map(([k, v]) => [k.slice(9, -1), v]));
      const amount = Number(form.get('line_items[0][price_data][unit_amount]'));
      const session = {
        ...fixtures['checkout.session'],
        id, url: `${base}/c/pay/${id}`, amount_subtotal: amount, amount_total: amount,
        currency: form.get('line_items[0][price_data][currency]'), client_reference_id: form.get('client_reference_id'),
        metadata, mode: form.get('mode'), success_url: form.get('success_url'), cancel_url: form.get('cancel_url'),
        created: now, expires_at: now + 86400, status: 'open', payment_status: 'unpaid', payment_intent: null,
      };
      sessions.set(id, { session, label: form.get('line_items[0][price_data][product_data][name]') });
      response.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(session));
    } else if (request.method === 'GET' && pay && sessions.has(pay[1])) {
      const { session, label } = sessions.get(pay[1]);
      const price = `${(session.amount_total / 100).toFixed(2)} ${session.currency.toUpperCase()}`;
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' }).end(`<!doctype html><title>Fake Stripe Checkout</title>
<h1>Pay ${price}</h1><p id="item">${label.replace(/[<&]/g, '')}</p>
<form method="post"><button id="pay" type="submit">Pay</button></form>`);
    } else if (request.method === 'POST' && pay && sessions.has(pay[1])) {
      const { session } = sessions.get(pay[1]);
      const paid = { ...session, status: 'complete', payment_status: 'paid', payment_intent: 'pi_' + randomBytes(12).toString('hex') };
      const event = { ...fixtures.event, id: 'evt_' + randomBytes(12).toString('hex'), type: 'checkout.session.completed', created: Math.floor(Date.now() / 1000), data: { object: paid } };
      await deliver(JSON.stringify(event));
      response.writeHead(303, { location: session.success_url }).end();
    } else {
      response.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ error: { message: 'Unrecognized request URL.', type: 'invalid_request_error' } }));
    }
  });
  await new Promise((done) => server.listen(0, '127.0.0.1', done));
  base = `http://127.0.0.1:${server.address().port}`;
  return { base, deliveries, deliver, close: () => new Promise((done) => server.close(done)) };
}

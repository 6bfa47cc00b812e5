// Signs Stripe webhook payloads with the official `stripe` package, for the gateway's billing tests.
// Reads a JSON array of {payload, secrets, timestamp?} from stdin; prints a JSON array of
// `Stripe-Signature` header values: `t=…,v1=…` with one v1 per secret (as Stripe sends during a
// secret roll). Install first with `.ci/billing` (stripe into tests/billing/node_modules).
import Stripe from 'stripe';

const stripe = new Stripe('sk_test_unused_by_signing');
let input = '';
for await (const chunk of process.stdin) input += chunk;
const headers = JSON.parse(input).map(({ payload, secrets, timestamp }) => {
  const [first, ...more] = secrets.map((secret) => stripe.webhooks.generateTestHeaderString({ payload, secret, timestamp }));
  // Each header is `t=…,v1=…`; the later secrets add their v1 to the first header.
  return [first, ...more.map((header) => header.split(',').slice(1).join(','))].join(',');
});
process.stdout.write(JSON.stringify(headers));

import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export interface StripeRequest {
  method: string;
  path: string;
  /** The form-encoded body, as flat `key[sub]=value` pairs. */
  form: Record<string, string>;
  idempotencyKey: string | undefined;
  stripeVersion: string | undefined;
  authorization: string | undefined;
}

/**
 * A stand-in for the slice of Stripe's API the Payment Link command uses
 * (prices and payment links), honouring idempotency keys as Stripe does, and
 * recording every request the SDK sends.
 */
export async function startFakeStripe() {
  const requests: StripeRequest[] = [];
  const objects = new Map<string, Record<string, unknown>>();
  const idempotent = new Map<string, Record<string, unknown>>();
  let counter = 0;

  const server = createServer(async (request, response) => {
    let raw = '';
    for await (const chunk of request) raw += chunk;
    const form = Object.fromEntries(new URLSearchParams(raw));
    const url = new URL(request.url ?? '/', 'http://stripe.local');
    const idempotencyKey = request.headers['idempotency-key'] as string | undefined;
    requests.push({
      method: request.method ?? 'GET', path: url.pathname, form, idempotencyKey,
      stripeVersion: request.headers['stripe-version'] as string | undefined,
      authorization: request.headers.authorization,
    });
    const send = (status: number, body: unknown) => {
      response.writeHead(status, { 'content-type': 'application/json', 'request-id': `req_${++counter}` });
      response.end(JSON.stringify(body));
    };
    const replay = idempotencyKey ? idempotent.get(`${url.pathname}:${idempotencyKey}`) : undefined;
    if (replay) return send(200, replay);

    let result: Record<string, unknown> | undefined;
    const [, , kind, id] = url.pathname.split('/');
    if (request.method === 'POST' && kind === 'prices' && !id) {
      result = {
        id: `price_fake${++counter}`, object: 'price', active: true, currency: form.currency, unit_amount: Number(form.unit_amount),
        product: `prod_fake${counter}`, recurring: form['recurring[interval]'] ? { interval: form['recurring[interval]'] } : null, type: form['recurring[interval]'] ? 'recurring' : 'one_time',
      };
    } else if (request.method === 'POST' && kind === 'payment_links' && !id) {
      const n = ++counter;
      result = { id: `plink_fake${n}`, object: 'payment_link', active: true, url: `https://buy.stripe.com/test_fake${n}` };
    } else if (id && objects.has(id)) {
      result = objects.get(id)!;
      if (request.method === 'POST' && form.active !== undefined) result.active = form.active === 'true';
    }
    if (!result) return send(404, { error: { type: 'invalid_request_error', message: `No such object: ${url.pathname}` } });
    objects.set(String(result.id), result);
    if (idempotencyKey) idempotent.set(`${url.pathname}:${idempotencyKey}`, result);
    send(200, result);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    port,
    requests,
    objects,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

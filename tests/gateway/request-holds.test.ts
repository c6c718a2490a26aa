import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;
let slowGateway: Gateway;
let brokenGateway: Gateway;

const price = { input: 1_000_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  const upstream = { OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url };
  gateway = await startGateway(upstream);
  // authorize_request answers 400 ms late: long enough for a client to give up first.
  slowGateway = await startGateway(upstream, {
    databaseFetch: async (input, init) => {
      if (String(input).endsWith('/rpc/authorize_request')) await new Promise((resolve) => setTimeout(resolve, 400));
      return fetch(input, init);
    },
  });
  // An upstream answer whose headers cannot be read: a failure inside the gateway after the hold.
  brokenGateway = await startGateway(upstream, {
    upstreamFetch: async (input, init) => {
      const response = await fetch(input, init);
      return new Proxy(response, {
        get(target, property) {
          if (property === 'headers') throw new TypeError('injected failure reading the upstream headers');
          const value = Reflect.get(target, property) as unknown;
          return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
        },
      });
    },
  });
});

afterAll(async () => {
  await Promise.all([gateway.close(), slowGateway.close(), brokenGateway.close()]);
  await fake.close();
});

async function eventsOf(accountId: string) {
  const { rows } = await admin().query('select status, charged::int, usage_source from public.usage_events where account_id = $1', [accountId]);
  return rows;
}

async function heldOf(accountId: string) {
  const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [accountId]);
  return account.held as number;
}

const chat = (url: string, apiKey: string, body: unknown, signal?: AbortSignal) =>
  fetch(`${url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: typeof body === 'string' ? body : JSON.stringify(body),
    signal,
  });

describe('no hold outlives its request', () => {
  it('JSON nested deeper than 128 levels is refused before any hold; a deep tool schema passes', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = fake.requestsFor('chat-basic').length;

    const deep = `{"model":"${model}","messages":[{"role":"user","content":"hi"}],"metadata":${'['.repeat(10_000)}${']'.repeat(10_000)}}`;
    const refused = await chat(gateway.url, customer.apiKey, deep);
    expect(refused.status).toBe(400);
    expect(await refused.json()).toMatchObject({ error: { code: 'invalid_request', message: expect.stringContaining('128') } });

    // A tool whose parameters nest 60 levels (far more than any real schema) is forwarded.
    let schema: Record<string, unknown> = { type: 'string' };
    for (let level = 0; level < 30; level++) schema = { type: 'object', properties: { inner: schema } };
    const tools = [{ type: 'function', function: { name: 'nested', parameters: schema } }];
    const accepted = await chat(gateway.url, customer.apiKey, { model, messages: [{ role: 'user', content: 'hi' }], tools });
    expect(accepted.status).toBe(200);
    await gateway.settled();
    expect(fake.requestsFor('chat-basic').length).toBe(before + 1);
    expect(await eventsOf(customer.accountId)).toEqual([{ status: 'completed', charged: 55, usage_source: 'provider' }]);
  });

  it('a failure after the hold releases it: nothing charged, the upstream call aborted', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await chat(brokenGateway.url, customer.apiKey, { model, messages: [{ role: 'user', content: 'hi' }], stream: true });
    expect(response.status).toBe(500);
    expect(await response.json()).toMatchObject({ error: { code: 'internal_error' } });
    await brokenGateway.settled();
    expect(await eventsOf(customer.accountId)).toEqual([{ status: 'failed', charged: 0, usage_source: null }]);
    expect(await heldOf(customer.accountId)).toBe(0);
  });

  it.each([false, true])('a client that leaves while authorize runs is never sent upstream nor charged (stream: %s)', async (stream) => {
    const model = await createModel(price, { upstreamModel: stream ? 'chat-long' : 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = fake.requests.length;
    const controller = new AbortController();
    setTimeout(() => controller.abort(), 100);
    await expect(chat(slowGateway.url, customer.apiKey, { model, messages: [{ role: 'user', content: 'hi' }], stream }, controller.signal)).rejects.toThrow();
    // authorize answers at 400 ms; the gateway must then give the hold back instead of going on.
    await new Promise((resolve) => setTimeout(resolve, 600));
    await slowGateway.settled();
    expect(fake.requests.length).toBe(before);
    expect(await eventsOf(customer.accountId)).toEqual([{ status: 'aborted', charged: 0, usage_source: null }]);
    expect(await heldOf(customer.accountId)).toBe(0);
  });

  it('a route that cannot serve the model refuses it inside authorize: nothing is held or written', async () => {
    const claude = await createModel(price, { provider: 'anthropic', upstreamModel: 'messages-cache' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: claude, input: 'hello' }),
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: 'unsupported_provider', param: 'model' } });
    await gateway.settled();
    expect(await eventsOf(customer.accountId)).toEqual([]);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeFetch } from '../../node/http-fetch.ts';
import { splitEvents, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// The gateway as the Node.js function runs it: every call to the database and
// the upstream through node/http-fetch.ts. The paths where a fetch's details
// decide the bill: a whole stream, a client leaving mid-stream, an upstream
// breaking off, a database that stalls past its deadline.

let fake: FakeUpstream;
let gateway: Gateway;
const price = { input: 1_000_000, output: 4_000_000 };
let stallDatabase = false;

beforeAll(async () => {
  fake = await startFakeUpstream();
  const nodeFetch = createNodeFetch();
  gateway = await startGateway(
    { OPENAI_BASE_URL: `${fake.url}/v1`, DATABASE_TIMEOUT_MS: '500' },
    {
      upstreamFetch: nodeFetch,
      databaseFetch: async (input, init) => {
        if (stallDatabase && String(input).includes('/rpc/authorize_request')) {
          // A database that never answers: only the deadline's abort ends the call.
          await new Promise((resolve) => init?.signal?.addEventListener('abort', resolve, { once: true }));
        }
        return nodeFetch(input, init);
      },
    },
  );
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const chat = (apiKey: string, model: string, signal?: AbortSignal) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    ...(signal ? { signal } : {}),
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Count to eighty.' }], stream: true, max_tokens: 500 }),
  });

async function eventOf(requestId: string | null) {
  const { rows: [event] } = await admin().query('select status, usage_source, charged::int from public.usage_events where request_id = $1', [requestId]);
  return event;
}

describe('the gateway over the Node.js HTTP client', () => {
  it('a whole stream is forwarded and charged from the provider\'s usage', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-long' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await chat(customer.apiKey, model);
    expect(response.status).toBe(200);
    const events = splitEvents(await response.text());
    expect(events.at(-1)).toBe('data: [DONE]\n\n');
    await gateway.settled();
    const event = await eventOf(response.headers.get('x-request-id'));
    expect(event).toMatchObject({ status: 'completed', usage_source: 'provider' });
    expect(event.charged).toBeGreaterThan(0);
  });

  it('a client leaving mid-stream closes the upstream connection and is charged as aborted', async () => {
    const upstreamModel = `slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', eventDelayMs: 20 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const controller = new AbortController();
    const response = await chat(customer.apiKey, model, controller.signal);
    const reader = response.body!.getReader();
    for (let read = 0; read < 3; read++) await reader.read();
    controller.abort();
    await expect.poll(() => fake.requestsFor(upstreamModel)[0]?.clientClosed, { timeout: 5000 }).toBe(true);
    expect(fake.requestsFor(upstreamModel)[0]!.eventsSent).toBeLessThan(60);
    await gateway.settled();
    await expect.poll(async () => (await eventOf(response.headers.get('x-request-id')))?.status, { timeout: 5000 }).toBe('aborted');
  });

  it('an upstream that breaks off mid-stream ends the answer with an error event; what was delivered is billed', async () => {
    const upstreamModel = `cut-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', disconnectAfterEvents: 6, eventDelayMs: 10 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await chat(customer.apiKey, model);
    expect(response.status).toBe(200);
    expect(splitEvents(await response.text()).at(-1)).toMatch(/"code":"upstream_unavailable"/);
    await gateway.settled();
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({ status: 'failed', usage_source: 'tokenizer' });
  });

  it('a database that stalls: 503 within the deadline, nothing sent upstream, nothing held', async () => {
    const upstreamModel = `never-${crypto.randomUUID()}`;
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    stallDatabase = true;
    try {
      const started = performance.now();
      const response = await chat(customer.apiKey, model);
      expect(response.status).toBe(503);
      expect(performance.now() - started).toBeLessThan(2_000);
    } finally {
      stallDatabase = false;
    }
    await gateway.settled();
    expect(fake.requestsFor(upstreamModel)).toEqual([]);
    const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe(0);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, type Customer } from '../support/supabase.ts';

// A warm key: its upstream call starts while authorize_request runs, and
// nothing reaches the client before the hold is taken.

const authorizeDelayMs = 300;
const price = { input: 1_000_000, output: 4_000_000 };

let fake: FakeUpstream;
/** authorize_request answers 300 ms late: time enough to see what runs meanwhile. */
let gateway: Gateway;
let authorizeAnswers: number[];

beforeAll(async () => {
  fake = await startFakeUpstream();
  authorizeAnswers = [];
  gateway = await startGateway(
    { OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url },
    {
      databaseFetch: async (input, init) => {
        if (!String(input).endsWith('/rpc/authorize_request')) return fetch(input, init);
        await new Promise((resolve) => setTimeout(resolve, authorizeDelayMs));
        const response = await fetch(input, init);
        authorizeAnswers.push(performance.now());
        return response;
      },
    },
  );
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const chat = (customer: Customer, model: string, extra: Record<string, unknown> = {}) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50, ...extra }),
  });

/** When the last request's first upstream call went out, and when its authorize answered. */
function lastTimings(mark: number) {
  const events = gateway.events.slice(mark);
  const upstream = events.find((event) => event.kind === 'upstream')!;
  const authorize = events.find((event) => event.kind === 'database' && event.url.endsWith('/rpc/authorize_request'))!;
  return { upstreamAt: upstream.at, authorizeSentAt: authorize.at, authorizeAnsweredAt: authorizeAnswers.at(-1)! };
}

async function usage(customer: Customer) {
  const { rows } = await admin().query(
    `select status, charged::int from public.usage_events where account_id = $1 order by created_at`,
    [customer.accountId],
  );
  return rows;
}

describe('a key this instance has not authorized', () => {
  it('goes upstream only after its hold is taken', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const mark = gateway.events.length;
    expect((await chat(customer, model)).status).toBe(200);
    const { upstreamAt, authorizeAnsweredAt } = lastTimings(mark);
    expect(upstreamAt).toBeGreaterThanOrEqual(authorizeAnsweredAt);
    await gateway.settled();
  });
});

describe('a warm key', () => {
  it('starts the upstream call while authorize runs, answers only after the hold, and is billed once', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    expect((await chat(customer, model)).status).toBe(200);

    for (const stream of [false, true]) {
      const mark = gateway.events.length;
      const sent = performance.now();
      const response = await chat(customer, model, { stream });
      const answered = performance.now();
      expect(response.status).toBe(200);
      expect(await response.text()).toContain('Hello');
      const { upstreamAt, authorizeSentAt, authorizeAnsweredAt } = lastTimings(mark);
      // The upstream call went out before authorize answered (it was sent with it)...
      expect(upstreamAt).toBeLessThan(authorizeAnsweredAt);
      expect(upstreamAt - authorizeSentAt).toBeLessThan(authorizeDelayMs / 2);
      // ...and the client got its answer only after the hold was taken.
      expect(answered).toBeGreaterThanOrEqual(authorizeAnsweredAt);
      expect(answered - sent).toBeGreaterThanOrEqual(authorizeDelayMs);
    }
    await gateway.settled();
    // 19 prompt tokens at $1/M + 9 completion tokens at $4/M = 55 micro-dollars each.
    expect(await usage(customer)).toEqual(Array(3).fill({ status: 'completed', charged: 55 }));
  });

  it('refused by authorize (the key revoked meanwhile): the upstream call is aborted, the refusal answered, nothing charged, the key cold again', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-slow' });
    fake.scenarios.set('chat-slow', { fixture: 'chat-basic', headerDelayMs: authorizeDelayMs * 2 });
    const customer = await createCustomer({ balance: 100_000_000 });
    expect((await chat(customer, model)).status).toBe(200);
    await createApiKeyManager(customer.client).revokeApiKey(customer.apiKeyId);

    const upstreamBefore = fake.requestsFor('chat-slow').length;
    const refused = await chat(customer, model);
    expect(refused.status).toBe(401);
    expect(await refused.json()).toMatchObject({ error: { code: 'api_key_revoked' } });
    // It had gone upstream, and was cut off there.
    await new Promise((resolve) => setTimeout(resolve, 100));
    const speculative = fake.requestsFor('chat-slow').slice(upstreamBefore);
    expect(speculative).toHaveLength(1);
    expect(speculative[0]!.clientClosed).toBe(true);
    expect(gateway.logs.some((entry) => entry.event === 'speculation_aborted' && entry.reason === 'api_key_revoked')).toBe(true);

    // Cold now: the next request does not go upstream at all.
    expect((await chat(customer, model)).status).toBe(401);
    expect(fake.requestsFor('chat-slow').length).toBe(upstreamBefore + 1);
    await gateway.settled();
    expect(await usage(customer)).toEqual([{ status: 'completed', charged: 55 }]);
  });

  it('authorized for a different upstream request (the model moved meanwhile): the speculative call is aborted and the right one sent', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-slow-2' });
    fake.scenarios.set('chat-slow-2', { fixture: 'chat-basic', headerDelayMs: authorizeDelayMs * 2 });
    const customer = await createCustomer({ balance: 100_000_000 });
    expect((await chat(customer, model)).status).toBe(200);
    await admin().query(`update public.models set upstream_model = 'chat-basic' where id = $1`, [model]);

    const before = { moved: fake.requestsFor('chat-slow-2').length, now: fake.requestsFor('chat-basic').length };
    const response = await chat(customer, model);
    expect(response.status).toBe(200);
    await response.text();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(fake.requestsFor('chat-slow-2').slice(before.moved).map((request) => request.clientClosed)).toEqual([true]);
    expect(fake.requestsFor('chat-basic').length).toBe(before.now + 1);
    expect(gateway.logs.some((entry) => entry.event === 'speculation_resent')).toBe(true);
    await gateway.settled();
    expect(await usage(customer)).toEqual(Array(2).fill({ status: 'completed', charged: 55 }));
  });

  it('is not speculated on without 20 times the hold available', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    // The hold of one request: about 25 input tokens at $1/M + 50 output at $4/M ≈ 225 micro-units.
    const customer = await createCustomer({ balance: 3_000 });
    expect((await chat(customer, model)).status).toBe(200);
    const mark = gateway.events.length;
    expect((await chat(customer, model)).status).toBe(200);
    const { upstreamAt, authorizeAnsweredAt } = lastTimings(mark);
    expect(upstreamAt).toBeGreaterThanOrEqual(authorizeAnsweredAt);
    await gateway.settled();
  });

  it('never with SPECULATIVE_UPSTREAM=off', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const off = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, SPECULATIVE_UPSTREAM: 'off' });
    try {
      const customer = await createCustomer({ balance: 100_000_000 });
      for (let attempt = 0; attempt < 3; attempt++) {
        const mark = off.events.length;
        const response = await fetch(`${off.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 }),
        });
        expect(response.status).toBe(200);
        await off.settled();
        const kinds = off.events.slice(mark).map((event) => (event.kind === 'upstream' ? 'upstream' : new URL(event.url).pathname));
        expect(kinds).toEqual(['/rest/v1/rpc/authorize_request', 'upstream', '/rest/v1/rpc/settle_requests']);
      }
      await off.settled();
    } finally {
      await off.close();
    }
  });

  it('64 concurrent requests on one warm key: every one answered and billed once, no hold left', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000_000 });
    expect((await chat(customer, model)).status).toBe(200);
    const responses = await Promise.all(Array.from({ length: 64 }, (_, index) => chat(customer, model, { stream: index % 2 === 1 })));
    expect(responses.map((response) => response.status)).toEqual(Array(64).fill(200));
    await Promise.all(responses.map((response) => response.text()));
    await gateway.settled();
    const { rows: [books] } = await admin().query(
      `select count(*)::int as requests, coalesce(sum(charged), 0)::int as charged, (select held::int from public.accounts where id = $1) as held
         from public.usage_events where account_id = $1 and status = 'completed'`,
      [customer.accountId],
    );
    expect(books).toEqual({ requests: 65, charged: 65 * 55, held: 0 });
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, type Customer } from '../support/supabase.ts';

// What a coding agent does to one key: many calls at once.

let fake: FakeUpstream;
let gateway: Gateway;

const price = { input: 1_000_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1` });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

/** `count` requests at once on the customer's key, half of them streamed; the statuses that came back. */
async function burst(customer: Customer, model: string, count: number) {
  const responses = await Promise.all(
    Array.from({ length: count }, async (_, index) => {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream: index % 2 === 1, max_tokens: 50 }),
      });
      const body = await response.text();
      return { status: response.status, body };
    }),
  );
  await gateway.settled();
  return responses;
}

async function books(customer: Customer) {
  const { rows: [totals] } = await admin().query(
    `select count(*)::int as requests, count(*) filter (where status = 'held')::int as open,
            count(*) filter (where status = 'completed')::int as completed, coalesce(sum(charged), 0)::int as charged,
            (select held::int from public.accounts where id = $1) as held
       from public.usage_events where account_id = $1`,
    [customer.accountId],
  );
  return totals;
}

describe('64 concurrent requests on one key', () => {
  it('no deadlock, no 5xx, every hold settled, every answer billed', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const responses = await burst(customer, model, 64);
    expect(responses.map((response) => response.status)).toEqual(Array(64).fill(200));
    // 19 prompt tokens at $1/M + 9 completion tokens at $4/M = 55 micro-dollars each.
    expect(await books(customer)).toEqual({ requests: 64, open: 0, completed: 64, charged: 64 * 55, held: 0 });
    expect(gateway.logs.filter((entry) => entry.level === 'error')).toEqual([]);
  });

  it('with an in-flight cap of 16: the rest are refused with 429, never a 5xx, and nothing is left held', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { max_concurrent: 16 });
    const responses = await burst(customer, model, 64);
    const statuses = responses.map((response) => response.status);
    expect(statuses.every((status) => status === 200 || status === 429)).toBe(true);
    const served = statuses.filter((status) => status === 200).length;
    expect(served).toBeGreaterThanOrEqual(16);
    for (const refused of responses.filter((response) => response.status === 429)) {
      expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'too_many_concurrent_requests' } });
    }
    expect(await books(customer)).toEqual({ requests: served, open: 0, completed: served, charged: served * 55, held: 0 });
  });
});

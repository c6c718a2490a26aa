import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createSettlementBatcher, type DeliveryOutcome } from '../../lib/gateway/settlement-batcher.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger, type Customer } from '../support/supabase.ts';

let fake: FakeUpstream;
const gateways: Gateway[] = [];
const price = { input: 1_000_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
});

afterAll(async () => {
  await Promise.all(gateways.map((gateway) => gateway.close()));
  await fake.close();
});

async function gatewayWith(options: Parameters<typeof startGateway>[1] = {}) {
  const gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, SETTLE_BATCH_WINDOW_MS: '20' }, options);
  gateways.push(gateway);
  return gateway;
}

const chat = (gateway: Gateway, customer: Customer, model: string, stream = false) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50, stream }),
  }).then(async (response) => ({ status: response.status, body: await response.text() }));

async function books(customer: Customer) {
  const { rows: [totals] } = await admin().query(
    `select count(*) filter (where status = 'completed')::int as completed, coalesce(sum(charged), 0)::int as charged,
            (select held::int from public.accounts where id = $1) as held
       from public.usage_events where account_id = $1`,
    [customer.accountId],
  );
  return totals;
}

const rpcCalls = (gateway: Gateway, name: string, mark = 0) => gateway.events.slice(mark).filter((event) => event.url.endsWith(`/rpc/${name}`)).length;

describe('settlements of one instance go to the database together', () => {
  it('64 requests at once on one key: far fewer settle_requests calls than requests settle them all, each charged once', async () => {
    const gateway = await gatewayWith();
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const responses = await Promise.all(Array.from({ length: 64 }, (_, index) => chat(gateway, customer, model, index % 2 === 1)));
    expect(responses.map((response) => response.status)).toEqual(Array(64).fill(200));
    await gateway.settled();
    expect(await books(customer)).toEqual({ completed: 64, charged: 64 * 55, held: 0 });
    expect(rpcCalls(gateway, 'settle_request')).toBe(0);
    const batches = rpcCalls(gateway, 'settle_requests');
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(batches).toBeLessThanOrEqual(32);
  });

  it('a batch call that keeps failing: its settlements go again in batches, then alone, and none is lost', { timeout: 60_000 }, async () => {
    let refusedBatches = 0;
    const gateway = await gatewayWith({
      databaseFetch: async (input, init) => {
        if (String(input).endsWith('/rpc/settle_requests')) {
          refusedBatches++;
          return new Response('{"message":"injected"}', { status: 503, headers: { 'content-type': 'application/json' } });
        }
        return fetch(input, init);
      },
    });
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const responses = await Promise.all(Array.from({ length: 8 }, () => chat(gateway, customer, model)));
    expect(responses.map((response) => response.status)).toEqual(Array(8).fill(200));
    await gateway.settled();
    expect(refusedBatches).toBeGreaterThanOrEqual(1);
    expect(rpcCalls(gateway, 'settle_request')).toBe(8);
    expect(gateway.logs.some((entry) => entry.event === 'settlement_batch_failed')).toBe(true);
    expect(await books(customer)).toEqual({ completed: 8, charged: 8 * 55, held: 0 });
  });
});

describe('the batcher', () => {
  it('settles each item on its own: one the database refuses is reported, the others settle; a batch goes at once when full', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 100_000_000 });
    const { rows: [key] } = await admin().query('select key_hash from public.api_keys where id = $1', [customer.apiKeyId]);
    const requestIds = Array.from({ length: 3 }, () => crypto.randomUUID());
    for (const requestId of requestIds) {
      const authorized = await ledger.authorizeRequest({ requestId, keyHash: key.key_hash, model, maxInputTokens: 100, maxOutputTokens: 100 });
      expect(authorized.status).toBe('authorized');
    }
    const logs: Record<string, unknown>[] = [];
    const single: string[] = [];
    let calls = 0;
    const batcher = createSettlementBatcher({
      settleMany: (settlements) => {
        calls++;
        return ledger.settleRequests(settlements);
      },
      deliverOne: async (settlement): Promise<DeliveryOutcome> => {
        single.push(settlement.requestId);
        return 'settled';
      },
      log: (entry) => logs.push(entry),
      windowMs: 60_000,
      maxBatch: 4,
    });
    // Four settlements fill the batch: it goes without waiting out the (long) window.
    const outcomes = await Promise.all([
      ...requestIds.map((requestId) => batcher.deliver({ requestId, outcome: 'completed', usage: { input: 10, output: 10 }, usageSource: 'provider' })),
      batcher.deliver({ requestId: 'never-authorized', outcome: 'completed', usage: { input: 1 } }),
    ]);
    expect(outcomes).toEqual(['settled', 'settled', 'settled', 'refused']);
    expect(calls).toBe(1);
    expect(single).toEqual([]);
    expect(logs).toEqual([expect.objectContaining({ event: 'settlement_refused', requestId: 'never-authorized' })]);
    // 10 input at $1/M + 10 output at $4/M = 50 micro-dollars each.
    expect(await books(customer)).toEqual({ completed: 3, charged: 150, held: 0 });
  });
});

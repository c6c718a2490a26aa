import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { LedgerError, type Authorization, type AuthorizeRequestInput, type BatchAuthorization } from '../../lib/billing/ledger.ts';
import { createAuthorizationBatcher } from '../../lib/gateway/authorization-batcher.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger, stack, type Customer } from '../support/supabase.ts';

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

const chat = (gateway: Gateway, customer: Customer, model: string, stream = false) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50, stream }),
  }).then(async (response) => ({ status: response.status, body: await response.text() }));

const rpcCalls = (gateway: Gateway, name: string) => gateway.events.filter((event) => event.url.endsWith(`/rpc/${name}`)).length;

describe('authorizations of one instance go to the database together when it is busy', () => {
  it('64 requests at once on one key: fewer authorization calls than requests, every request held, served and charged once', async () => {
    const gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, AUTHORIZE_IN_FLIGHT: '2' });
    gateways.push(gateway);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const responses = await Promise.all(Array.from({ length: 64 }, (_, index) => chat(gateway, customer, model, index % 2 === 1)));
    expect(responses.map((response) => response.status)).toEqual(Array(64).fill(200));
    await gateway.settled();
    const single = rpcCalls(gateway, 'authorize_request');
    const batches = rpcCalls(gateway, 'authorize_requests');
    expect(batches).toBeGreaterThanOrEqual(1);
    expect(single + batches).toBeLessThan(64);
    const { rows: [books] } = await admin().query(
      `select count(*) filter (where status = 'completed')::int as completed, coalesce(sum(charged), 0)::int as charged,
              (select held::int from public.accounts where id = $1) as held, (select balance::int from public.accounts where id = $1) as balance
         from public.usage_events where account_id = $1`,
      [customer.accountId],
    );
    expect(books).toEqual({ completed: 64, charged: 64 * 55, held: 0, balance: 100_000_000 - 64 * 55 });
  });

  it('one idle request goes alone, at once: no batch call', async () => {
    const gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1` });
    gateways.push(gateway);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 3; index++) expect((await chat(gateway, customer, model)).status).toBe(200);
    expect(rpcCalls(gateway, 'authorize_request')).toBe(3);
    expect(rpcCalls(gateway, 'authorize_requests')).toBe(0);
  });
});

describe('authorize_requests', () => {
  it('answers each item on its own, in order: holds, refusals, a replay, and a failing item rolled back alone', async () => {
    const model = await createModel(price);
    const rich = await createCustomer({ balance: 10_000_000 });
    const poor = await createCustomer({ balance: 10 });
    const replayed = crypto.randomUUID();
    const first = await ledger.authorizeRequest({ requestId: replayed, keyHash: rich.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
    expect(first.status).toBe('authorized');
    const item = (customer: Customer, extra: Partial<AuthorizeRequestInput> = {}): AuthorizeRequestInput => ({
      requestId: crypto.randomUUID(),
      keyHash: customer.keyHash,
      model,
      maxInputTokens: 100,
      maxOutputTokens: 100,
      ...extra,
    });
    const items = [
      item(rich),
      item(poor),
      item(rich, { keyHash: 'not-a-key' }),
      item(rich, { requestId: replayed }),
      item(rich, { clientIp: 'not an address' }),
      item(rich, { maxOutputTokens: 200 }),
    ];
    const results = await ledger.authorizeRequests(items);
    expect(results.map((result) => result.request_id)).toEqual(items.map((each) => each.requestId));
    const outcome = (index: number) => {
      const result = results[index]!;
      return result.ok ? (result.result.status === 'authorized' ? `authorized ${result.result.hold}${result.result.replayed ? ' replayed' : ''}` : result.result.code) : `failed ${result.code}`;
    };
    // 100 input at $1/M + 100 output at $4/M = 500 micro-units; 200 output: 900.
    expect(results.map((_, index) => outcome(index))).toEqual([
      'authorized 500',
      'insufficient_credits',
      'invalid_api_key',
      'authorized 500 replayed',
      'failed 22P02',
      'authorized 900',
    ]);
    const { rows } = await admin().query(
      `select request_id, hold::int from public.usage_events where request_id = any ($1) order by hold, request_id`,
      [items.map((each) => each.requestId)],
    );
    expect(rows.map((row) => row.hold)).toEqual([500, 500, 900]);
    const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [rich.accountId]);
    expect(account.held).toBe(500 + 500 + 900);
    await ledger.settleRequests([replayed, items[0]!.requestId, items[5]!.requestId].map((requestId) => ({ requestId, outcome: 'failed', usage: {} })));
  });

  it('concurrent batches over the same accounts, with settlements running beside them: no deadlock, every hold counted', async () => {
    const model = await createModel(price);
    const customers = await Promise.all(Array.from({ length: 4 }, () => createCustomer({ balance: 100_000_000 })));
    // Keys whose policy counts what is in flight are locked by authorize, as accounts are.
    await admin().query('update public.api_keys set spend_limit = 50000000, max_concurrent = 1000 where id = any ($1)', [customers.slice(0, 2).map((customer) => customer.apiKeyId)]);
    const pool = new pg.Pool({ connectionString: stack.adminDatabaseUrl, max: 12 });
    try {
      const authorizedIds: string[] = [];
      const errors: string[] = [];
      const batchOf = () =>
        Array.from({ length: 12 }, () => {
          const customer = customers[Math.floor(Math.random() * customers.length)]!;
          return { request_id: crypto.randomUUID(), key_hash: customer.keyHash, model, max_input_tokens: 100, max_output_tokens: 100 };
        });
      const authorizeWorker = async () => {
        for (let round = 0; round < 8; round++) {
          try {
            const { rows: [{ result }] } = await pool.query('select public.authorize_requests($1::jsonb) as result', [JSON.stringify(batchOf())]);
            for (const item of result as BatchAuthorization) {
              if (item.ok && item.result.status === 'authorized') authorizedIds.push(item.result.request_id);
              else errors.push(JSON.stringify(item));
            }
          } catch (error) {
            errors.push((error as Error).message);
          }
        }
      };
      const settleWorker = async () => {
        for (let round = 0; round < 30; round++) {
          const ids = authorizedIds.splice(0, 10);
          if (!ids.length) {
            await new Promise((resolve) => setTimeout(resolve, 5));
            continue;
          }
          try {
            await pool.query('select public.settle_requests($1::jsonb)', [JSON.stringify(ids.map((request_id) => ({ request_id, outcome: 'completed', usage: { input: 10, output: 10 }, usage_source: 'provider' })))]);
          } catch (error) {
            errors.push((error as Error).message);
          }
        }
      };
      await Promise.all([...Array.from({ length: 6 }, authorizeWorker), ...Array.from({ length: 3 }, settleWorker)]);
      expect(errors).toEqual([]);
      // Settle what is left, then every account's held is zero and each charge is exact.
      while (authorizedIds.length) {
        const ids = authorizedIds.splice(0, 100);
        await pool.query('select public.settle_requests($1::jsonb)', [JSON.stringify(ids.map((request_id) => ({ request_id, outcome: 'completed', usage: { input: 10, output: 10 }, usage_source: 'provider' })))]);
      }
      const { rows } = await admin().query(
        `select a.held::int, a.balance::int, (select count(*)::int from public.usage_events e where e.account_id = a.id and e.status = 'completed') as completed
           from public.accounts a where a.id = any ($1)`,
        [customers.map((customer) => customer.accountId)],
      );
      expect(rows.reduce((sum, row) => sum + row.completed, 0)).toBe(6 * 8 * 12);
      for (const row of rows) expect(row).toEqual({ held: 0, balance: 100_000_000 - row.completed * 50, completed: row.completed });
    } finally {
      await pool.end();
    }
  });
});

describe('a hold given back while its batch is open', () => {
  async function openBatch(requestId: string) {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const batch = new pg.Client({ connectionString: stack.adminDatabaseUrl });
    await batch.connect();
    await batch.query('begin');
    const item = JSON.stringify([{ request_id: requestId, key_hash: customer.keyHash, model, max_input_tokens: 100, max_output_tokens: 100 }]);
    const { rows: [{ result }] } = await batch.query('select public.authorize_requests($1::jsonb) as result', [item]);
    expect(result[0].result.status).toBe('authorized');
    return { customer, batch };
  }

  async function afterGiveBack(requestId: string, accountId: string) {
    const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [accountId]);
    const { rows: cancelled } = await admin().query('select 1 from public.cancelled_requests where request_id = $1', [requestId]);
    const { rows: [event] } = await admin().query('select status from public.usage_events where request_id = $1', [requestId]);
    return { held: account.held, cancelled: cancelled.length, status: event?.status };
  }

  it('in SQL: waits for the batch, then fails with a passing error; given back again, the hold is released', async () => {
    const requestId = crypto.randomUUID();
    const { customer, batch } = await openBatch(requestId);
    const other = new pg.Client({ connectionString: stack.adminDatabaseUrl });
    await other.connect();
    try {
      let done = false;
      const giveBack = other
        .query(`select public.settle_request($1, 'failed', '{}'::jsonb)`, [requestId])
        .then(() => 'settled', (error: { code: string }) => error.code)
        .finally(() => (done = true));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(done).toBe(false);
      await batch.query('commit');
      expect(await giveBack).toBe('40001');
      await other.query(`select public.settle_request($1, 'failed', '{}'::jsonb)`, [requestId]);
      expect(await afterGiveBack(requestId, customer.accountId)).toEqual({ held: 0, cancelled: 0, status: 'failed' });
    } finally {
      await other.end();
      await batch.end();
    }
  });

  it('through PostgREST, as the gateway gives it back: one call, the hold released (PostgREST runs the transaction again)', async () => {
    const requestId = crypto.randomUUID();
    const { customer, batch } = await openBatch(requestId);
    try {
      const giveBack = ledger.settleRequest({ requestId, outcome: 'failed', usage: {} });
      await new Promise((resolve) => setTimeout(resolve, 300));
      await batch.query('commit');
      expect((await giveBack).status).toBe('failed');
      expect(await afterGiveBack(requestId, customer.accountId)).toEqual({ held: 0, cancelled: 0, status: 'failed' });
    } finally {
      await batch.end();
    }
  });

  it('a single authorization waiting for its account row: a give-back meanwhile is seen at the end, and the hold goes back', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const requestId = crypto.randomUUID();
    const blocker = new pg.Client({ connectionString: stack.adminDatabaseUrl });
    const authorizer = new pg.Client({ connectionString: stack.adminDatabaseUrl });
    await Promise.all([blocker.connect(), authorizer.connect()]);
    try {
      // Another transaction holds the account row, as other requests of the account do.
      await blocker.query('begin');
      await blocker.query('select 1 from public.accounts where id = $1 for no key update', [customer.accountId]);
      let done = false;
      const authorization = authorizer
        .query(`select public.authorize_request($1, $2, $3, 100, 100) as result`, [requestId, customer.keyHash, model])
        .then(({ rows: [{ result }] }) => result)
        .finally(() => (done = true));
      await new Promise((resolve) => setTimeout(resolve, 300));
      expect(done).toBe(false);
      // The gateway gave up on it and gives the hold back: nothing committed to find yet.
      expect((await ledger.settleRequest({ requestId, outcome: 'failed', usage: {} })).status).toBe('cancelled');
      await blocker.query('commit');
      expect(await authorization).toMatchObject({ status: 'refused', code: 'request_cancelled' });
      const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [customer.accountId]);
      const { rows: events } = await admin().query('select 1 from public.usage_events where request_id = $1', [requestId]);
      expect({ held: account.held, events: events.length }).toEqual({ held: 0, events: 0 });
    } finally {
      await blocker.end();
      await authorizer.end();
    }
  });

  it('given back before its batch: the batch refuses it', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const requestId = crypto.randomUUID();
    expect((await ledger.settleRequest({ requestId, outcome: 'failed', usage: {} })).status).toBe('cancelled');
    const [result] = await ledger.authorizeRequests([{ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 }]);
    expect(result!.ok && result!.result.status === 'refused' && result!.result.code).toBe('request_cancelled');
  });
});

describe('the authorization batcher', () => {
  const authorized = (requestId: string) => ({ status: 'authorized', request_id: requestId }) as unknown as Authorization;

  it('sends alone while calls are free, together once they are all out; an item the batch failed goes again alone', async () => {
    const calls: string[][] = [];
    let release: () => void = () => {};
    const gate = new Promise<void>((resolve) => (release = resolve));
    const batcher = createAuthorizationBatcher({
      inFlight: 1,
      maxWaitMs: 60_000,
      authorizeOne: async (input) => {
        calls.push([input.requestId]);
        if (input.requestId === 'a') await gate;
        return authorized(input.requestId);
      },
      authorizeMany: async (inputs) => {
        calls.push(inputs.map((input) => input.requestId));
        return inputs.map((input) =>
          input.requestId === 'c' ? { request_id: 'c', ok: false as const, code: '40P01', message: 'deadlock' } : { request_id: input.requestId, ok: true as const, result: authorized(input.requestId) },
        );
      },
    });
    const input = (requestId: string) => ({ requestId, keyHash: 'k', model: 'm', maxInputTokens: 1 });
    const answers = ['a', 'b', 'c', 'd'].map((requestId) => batcher.authorize(input(requestId)));
    release();
    expect((await Promise.all(answers)).map((answer) => (answer as { request_id: string }).request_id)).toEqual(['a', 'b', 'c', 'd']);
    expect(calls).toEqual([['a'], ['b', 'c', 'd'], ['c']]);
  });

  it('a failed call fails every authorization it carried; one that no call takes in time fails unsent', async () => {
    let calls = 0;
    const batcher = createAuthorizationBatcher({
      inFlight: 1,
      maxWaitMs: 50,
      authorizeOne: async () => {
        calls++;
        await new Promise((resolve) => setTimeout(resolve, 200));
        throw new Error('stalled');
      },
      authorizeMany: async () => {
        throw new Error('unreachable');
      },
    });
    const input = (requestId: string) => ({ requestId, keyHash: 'k', model: 'm', maxInputTokens: 1 });
    const [first, second] = [batcher.authorize(input('a')), batcher.authorize(input('b'))];
    await expect(second).rejects.toThrow('did not take the authorization within 50 ms');
    await expect(first).rejects.toThrow('stalled');
    expect(calls).toBe(1);

    const failing = createAuthorizationBatcher({
      inFlight: 1,
      maxWaitMs: 60_000,
      authorizeOne: () => new Promise((resolve) => setTimeout(() => resolve(authorized('x')), 20)),
      authorizeMany: async () => {
        throw new Error('batch refused');
      },
    });
    const results = await Promise.allSettled(['x', 'y', 'z'].map((requestId) => failing.authorize(input(requestId))));
    expect(results.map((result) => result.status)).toEqual(['fulfilled', 'rejected', 'rejected']);
  });

  it('a call the database refuses as a whole (the batch function not deployed yet): each authorization goes again alone', async () => {
    const alone: string[] = [];
    const batcher = createAuthorizationBatcher({
      inFlight: 1,
      maxWaitMs: 60_000,
      authorizeOne: async (input) => {
        alone.push(input.requestId);
        await new Promise((resolve) => setTimeout(resolve, 10));
        return authorized(input.requestId);
      },
      authorizeMany: async () => {
        throw new LedgerError('Could not find the function public.authorize_requests(p_items) in the schema cache', 'PGRST202', 404);
      },
    });
    const input = (requestId: string) => ({ requestId, keyHash: 'k', model: 'm', maxInputTokens: 1 });
    const answers = await Promise.all(['a', 'b', 'c'].map((requestId) => batcher.authorize(input(requestId))));
    expect(answers.map((answer) => (answer as { request_id: string }).request_id)).toEqual(['a', 'b', 'c']);
    expect(alone).toEqual(['a', 'b', 'c']);
  });
});

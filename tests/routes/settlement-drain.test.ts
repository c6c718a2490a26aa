import { createClient } from 'redis';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

let upstash: LocalUpstash;
let gateway: Gateway;
let closed: Gateway;
const secret = 'drain-test-secret';

beforeAll(async () => {
  upstash = await startLocalUpstash();
  const redis = { UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token };
  gateway = await startGateway({ ...redis, CRON_SECRET: secret });
  closed = await startGateway(redis);
});

afterAll(async () => {
  await Promise.all([gateway.close(), closed.close()]);
  await upstash.stop();
});

const drain = (url: string, authorization?: string) =>
  fetch(`${url}/internal/settlements/drain`, { method: 'POST', headers: authorization ? { authorization } : {} });

describe('/internal/settlements/drain', () => {
  it('is closed without CRON_SECRET, and refuses any other secret', async () => {
    const unconfigured = await drain(closed.url, `Bearer ${secret}`);
    expect(unconfigured.status).toBe(503);
    expect(await unconfigured.json()).toMatchObject({ error: { code: 'not_configured' } });
    for (const authorization of [undefined, 'Bearer nope', secret, `Bearer ${secret}x`]) {
      const refused = await drain(gateway.url, authorization);
      expect(refused.status).toBe(401);
    }
  });

  it('settles what waits, sets aside what the database refuses for good, and charges nothing twice', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
    const outbox = gateway.services.outbox!;
    await outbox.put({ requestId, outcome: 'completed', usage: { input: 40, output: 20 }, usageSource: 'provider' }, 'database away');
    // Delivered twice (the function and a retry): stored once.
    await outbox.put({ requestId, outcome: 'completed', usage: { input: 40, output: 20 }, usageSource: 'provider' }, 'database away');
    await outbox.put({ requestId: 'never-authorized', outcome: 'completed', usage: { input: 1 } }, 'database away');
    const redis = createClient({ url: `redis://127.0.0.1:${upstash.redisPort}` });
    await redis.connect();
    await redis.hSet('tollgate:settlements:pending', 'garbled', '{not json');
    await redis.quit();

    const first = await drain(gateway.url, `Bearer ${secret}`);
    expect(await first.json()).toEqual({ status: 'drained', settled: 1, replayed: 0, setAside: 2, kept: 0, pending: 0 });
    expect(await outbox.size()).toEqual({ pending: 0, setAside: 2 });
    expect(gateway.logs.filter((entry) => entry.event === 'settlement_set_aside').map((entry) => entry.requestId).sort()).toEqual(['garbled', 'never-authorized']);

    // Delivered again later (a log replay, say): the database already has it.
    await outbox.put({ requestId, outcome: 'completed', usage: { input: 40, output: 20 }, usageSource: 'provider' }, 'database away');
    expect(await (await drain(gateway.url, `Bearer ${secret}`)).json()).toMatchObject({ settled: 0, replayed: 1, pending: 0 });
    const { rows } = await admin().query(`select amount::int from public.credit_ledger where reason = 'usage' and reference = $1`, [requestId]);
    expect(rows).toEqual([{ amount: -60 }]);
  });

  it('settles an entry whose error text PostgreSQL cannot store as such (a NUL, half an emoji) beside the others: neither stops the drain', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const ids = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
    for (const requestId of ids) await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
    const outbox = gateway.services.outbox!;
    const errors = [undefined, 'upstream said \u0000 something', `${'x'.repeat(10)} \ud83d`];
    for (const [index, requestId] of ids.entries()) {
      await outbox.put({ requestId, outcome: errors[index] ? 'failed' : 'completed', usage: { input: 40, output: 20 }, usageSource: 'provider', ...(errors[index] ? { error: errors[index] } : {}) }, 'database away');
    }
    const answer = await drain(gateway.url, `Bearer ${secret}`);
    expect([answer.status, await answer.json()]).toEqual([200, { status: 'drained', settled: 3, replayed: 0, setAside: 0, kept: 0, pending: 0 }]);
    const { rows } = await admin().query('select request_id, status, charged::int, error from public.usage_events where request_id = any($1) order by status, error', [ids]);
    expect(rows.map(({ status, charged, error }) => ({ status, charged, error }))).toEqual([
      { status: 'completed', charged: 60, error: null },
      { status: 'failed', charged: 60, error: 'upstream said  something' },
      { status: 'failed', charged: 60, error: 'xxxxxxxxxx \ufffd' },
    ]);
  });

  it('an instance that left settlements in the outbox drains them when the database answers it again, and tries again when another drain was under way', async () => {
    const instance = await startGateway({ UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token, CRON_SECRET: secret });
    try {
      const { outbox } = instance.services;
      const model = await createModel({ input: 1_000_000, output: 1_000_000 });
      const customer = await createCustomer({ balance: 1_000_000 });
      const requestId = crypto.randomUUID();
      await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
      // The scheduled drain is under way, and has read the outbox already.
      const scheduled = await outbox!.lock(60_000);
      expect(scheduled).not.toBeNull();
      // This instance puts a settlement there (the database was away).
      await outbox!.put({ requestId, outcome: 'completed', usage: { input: 40, output: 20 }, usageSource: 'provider' }, 'database away');
      // The database answers it again: its drain finds the other one under way.
      await instance.services.listModels();
      await instance.settled();
      await outbox!.unlock(scheduled!);
      expect((await outbox!.size()).pending).toBe(1);
      // A second later, the next answer drains it: before, nothing did until the next scheduled drain.
      await new Promise((resolve) => setTimeout(resolve, 1_100));
      await instance.services.listModels();
      await instance.settled();
      expect(instance.logs.filter((entry) => entry.event === 'settlement_outbox_caught_up').map((entry) => entry.status)).toEqual(['busy', 'drained']);
      expect((await outbox!.size()).pending).toBe(0);
      const { rows } = await admin().query(`select amount::int from public.credit_ledger where reason = 'usage' and reference = $1`, [requestId]);
      expect(rows).toEqual([{ amount: -60 }]);
    } finally {
      await instance.close();
    }
  });

  it('answers 503 with Retry-After while Redis (the outbox) does not answer, not a 500', async () => {
    const own = await startLocalUpstash();
    const redisGone = await startGateway({ UPSTASH_REDIS_REST_URL: own.url, UPSTASH_REDIS_REST_TOKEN: own.token, CRON_SECRET: secret });
    try {
      await own.stopRedis();
      const answer = await drain(redisGone.url, `Bearer ${secret}`);
      expect([answer.status, answer.headers.get('retry-after'), ((await answer.json()) as { error: { code: string } }).error.code]).toEqual([503, '60', 'outbox_unavailable']);
      expect(redisGone.logs).toContainEqual(expect.objectContaining({ event: 'settlement_outbox_unavailable' }));
    } finally {
      await redisGone.close();
      await own.stop();
    }
  });
});

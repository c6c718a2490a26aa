import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { admin, createCustomer, createModel, ledger, stack, type Customer } from '../support/supabase.ts';

// 100 input tokens at 1,000,000/M + 100 output tokens at 2,000,000/M: a hold of exactly 300.
const price = { input: 1_000_000, output: 2_000_000 };
const holdSize = 300;

describe('authorize_request under real concurrency', () => {
  it('100 concurrent holds on 100 separate connections against a balance for exactly 10: 10 succeed', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10 * holdSize });
    const clients = Array.from({ length: 100 }, () => new pg.Client({ connectionString: stack.databaseUrl }));
    await Promise.all(clients.map((client) => client.connect()));
    try {
      // Each connection calls the function as the service role, as PostgREST would.
      await Promise.all(clients.map((client) => client.query('set role service_role')));
      const results = await Promise.all(
        clients.map((client) =>
          client
            .query<{ result: { status: string; code?: string; hold?: number } }>(
              'select public.authorize_request($1, $2, $3, 100, 100) as result',
              [crypto.randomUUID(), customer.keyHash, model],
            )
            .then(({ rows }) => rows[0]!.result),
        ),
      );
      const authorized = results.filter((result) => result.status === 'authorized');
      const refused = results.filter((result) => result.status === 'refused');
      expect(authorized).toHaveLength(10);
      expect(authorized.every((result) => result.hold === holdSize)).toBe(true);
      expect(refused).toHaveLength(90);
      expect(new Set(refused.map((result) => result.code))).toEqual(new Set(['insufficient_credits']));
    } finally {
      await Promise.all(clients.map((client) => client.end()));
    }

    const { rows: [account] } = await admin().query('select balance, held from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: String(10 * holdSize), held: String(10 * holdSize) });

    // Settle half as completed (charged less than the hold), half as failed (nothing).
    const { rows: open } = await admin().query<{ request_id: string }>(
      `select request_id from public.usage_events where account_id = $1 and status = 'held' order by request_id`,
      [customer.accountId],
    );
    await Promise.all(
      open.map(({ request_id }, index) =>
        index % 2 === 0
          ? ledger.settleRequest({ requestId: request_id, outcome: 'completed', usage: { input: 50, output: 25 }, usageSource: 'provider' })
          : ledger.settleRequest({ requestId: request_id, outcome: 'failed', usage: {} }),
      ),
    );
    // 5 × (50 × 1 + 25 × 2) = 500 charged; everything else released.
    const { rows: [after] } = await admin().query('select balance, held from public.accounts where id = $1', [customer.accountId]);
    expect(after).toEqual({ balance: String(10 * holdSize - 500), held: '0' });
  });

  it('100 concurrent holds through supabase-js and PostgREST: exactly 10 succeed', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10 * holdSize });
    const results = await Promise.all(
      Array.from({ length: 100 }, () =>
        ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 }),
      ),
    );
    expect(results.filter((result) => result.status === 'authorized')).toHaveLength(10);
    const refusals = results.filter((result) => result.status === 'refused');
    expect(refusals).toHaveLength(90);
    expect(refusals[0]).toMatchObject({ code: 'insufficient_credits', required: holdSize, available: 0 });

    const { rows: open } = await admin().query<{ request_id: string }>(
      `select request_id from public.usage_events where account_id = $1 and status = 'held'`,
      [customer.accountId],
    );
    await Promise.all(open.map(({ request_id }) => ledger.settleRequest({ requestId: request_id, outcome: 'aborted', usage: {} })));
    const { rows: [after] } = await admin().query('select balance, held from public.accounts where id = $1', [customer.accountId]);
    expect(after).toEqual({ balance: String(10 * holdSize), held: '0' });
  });

  it('concurrent settles of the same request charge it once', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
    const settlements = await Promise.all(
      Array.from({ length: 20 }, () =>
        ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 100, output: 100 }, usageSource: 'provider' }),
      ),
    );
    expect(settlements.filter((settlement) => !settlement.replayed)).toHaveLength(1);
    expect(settlements.every((settlement) => settlement.status === 'completed' && settlement.charged === 300)).toBe(true);
    const { rows } = await admin().query(`select amount from public.credit_ledger where reason = 'usage' and reference = $1`, [requestId]);
    expect(rows).toEqual([{ amount: '-300' }]);
  });
});

/**
 * `clients` real connections, each running authorize then settle on the same
 * key in a loop for `seconds`: what a coding agent's parallel calls do to one
 * account. Refusals (a cap reached) are counted; anything thrown is an error.
 */
async function hammer(customer: Customer, model: string, { clients = 32, seconds = 3, overruns = true } = {}) {
  const connections = await Promise.all(
    Array.from({ length: clients }, async () => {
      const client = new pg.Client({ connectionString: stack.databaseUrl });
      await client.connect();
      await client.query('set role service_role');
      return client;
    }),
  );
  const deadline = Date.now() + seconds * 1000;
  let pairs = 0;
  const refusals = new Map<string, number>();
  const errors: string[] = [];
  try {
    await Promise.all(
      connections.map(async (client, index) => {
        while (Date.now() < deadline) {
          const requestId = crypto.randomUUID();
          try {
            const { rows: [authorized] } = await client.query<{ result: { status: string; code?: string } }>(
              'select public.authorize_request($1, $2, $3, 100, 100) as result',
              [requestId, customer.keyHash, model],
            );
            if (authorized!.result.status !== 'authorized') {
              refusals.set(authorized!.result.code!, (refusals.get(authorized!.result.code!) ?? 0) + 1);
              continue;
            }
            // Usage inside the hold, and now and then beyond it (an overrun charged from the balance).
            const usage = overruns && index % 8 === 0 ? { input: 100, output: 150 } : { input: 60, output: 40 };
            await client.query(`select public.settle_request($1, 'completed', $2, 'provider')`, [requestId, usage]);
            pairs++;
          } catch (error) {
            errors.push((error as Error).message);
          }
        }
      }),
    );
  } finally {
    await Promise.all(connections.map((client) => client.end()));
  }
  return { pairs, refusals, errors };
}

describe('one busy key: 32 concurrent authorize+settle pairs on one account and one key', () => {
  it('without caps: no deadlock, no error, every hold settled, the key counts every charge', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 1_000_000_000 });
    const { pairs, refusals, errors } = await hammer(customer, model);
    expect(errors).toEqual([]);
    expect(refusals.size).toBe(0);
    expect(pairs).toBeGreaterThan(100);
    const { rows: [totals] } = await admin().query(
      `select count(*) filter (where e.status = 'held') as open, count(*) as requests, sum(e.charged) as charged,
              (select spent from public.api_keys where id = $2) as key_spent
         from public.usage_events e where e.account_id = $1`,
      [customer.accountId, customer.apiKeyId],
    );
    expect(totals).toMatchObject({ open: '0', requests: String(pairs) });
    expect(totals.key_spent).toBe(totals.charged);
  });

  it('with caps (in-flight and total spend): refusals only, never past a cap, no error', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 1_000_000_000 });
    // Pairs cost 140 each, inside their holds of 300: the spend cap (100 pairs) is reached within the run.
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { max_concurrent: 8, spend_limit: 14_000 });
    const { pairs, refusals, errors } = await hammer(customer, model, { overruns: false });
    expect(errors).toEqual([]);
    // The last holds count at their worst case (300), so the cap stops a little before 100 pairs.
    expect(pairs).toBeGreaterThan(90);
    expect(pairs).toBeLessThanOrEqual(100);
    expect([...refusals.keys()].every((code) => ['too_many_concurrent_requests', 'key_spend_limit_reached'].includes(code))).toBe(true);
    expect(refusals.get('key_spend_limit_reached')).toBeGreaterThan(0);
    const { rows: [totals] } = await admin().query(
      `select count(*) filter (where e.status = 'held') as open, sum(e.charged) as charged,
              (select spent from public.api_keys where id = $2) as key_spent
         from public.usage_events e where e.account_id = $1`,
      [customer.accountId, customer.apiKeyId],
    );
    expect(totals.open).toBe('0');
    expect(totals.key_spent).toBe(totals.charged);
    expect(Number(totals.charged)).toBeLessThanOrEqual(14_000);
  });
});

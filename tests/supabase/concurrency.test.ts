import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { admin, createCustomer, createModel, ledger, stack } from '../support/supabase.ts';

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
    expect(settlements.every((settlement) => settlement.charged === 300)).toBe(true);
    const { rows } = await admin().query(`select amount from public.credit_ledger where reason = 'usage' and reference = $1`, [requestId]);
    expect(rows).toEqual([{ amount: '-300' }]);
  });
});

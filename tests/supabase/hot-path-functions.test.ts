import { describe, expect, it } from 'vitest';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// A SQL-language function with `set search_path` is never inlined, and
// PostgreSQL before 18 plans its body again at every call; PL/pgSQL keeps its
// plans for the session. What every request runs (authorize, settle, holds
// taken ahead and given back) calls no SQL-language function, counted by
// PostgreSQL itself (track_functions) in a transaction that is rolled back.

describe('the functions every request runs', () => {
  it('call no SQL-language function, which would be planned again at each call', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const model = await createModel({ input: 1_000_000, output: 2_000_000 });
    const item = (requestId: string) => ({ request_id: requestId, key_hash: customer.keyHash, model, max_input_tokens: 100, max_output_tokens: 50 });
    const settlement = (requestId: string) => ({ request_id: requestId, outcome: 'completed', usage: { input: 10, output: 20 }, usage_source: 'provider' });
    const client = await admin().connect();
    // One of each call the gateway makes for its requests.
    const requests = async () => {
      const [one, batched, ahead] = [crypto.randomUUID(), crypto.randomUUID(), crypto.randomUUID()];
      const { rows: [authorized] } = await client.query('select public.authorize_request($1, $2, $3, 100, 50) as result', [one, customer.keyHash, model]);
      expect(authorized.result.status).toBe('authorized');
      const { rows: [settled] } = await client.query('select public.settle_requests($1) as result', [JSON.stringify([settlement(one)])]);
      expect(settled.result).toEqual([expect.objectContaining({ ok: true })]);
      const { rows: [batch] } = await client.query('select public.authorize_requests($1) as result', [JSON.stringify([item(batched)])]);
      expect(batch.result).toEqual([expect.objectContaining({ ok: true, result: expect.objectContaining({ status: 'authorized' }) })]);
      await client.query(`select public.settle_request($1, 'completed', '{"input": 10, "output": 20}', 'provider', null)`, [batched]);
      const { rows: [taken] } = await client.query('select public.authorize_ahead($1, 10) as result', [JSON.stringify([item(ahead)])]);
      expect(taken.result).toEqual([expect.objectContaining({ ok: true, result: expect.objectContaining({ status: 'authorized' }) })]);
      const { rows: [returned] } = await client.query('select public.return_ready_holds($1) as result', [[ahead]]);
      expect(returned.result).toBe(1);
    };
    const counted = async () => {
      const { rows } = await client.query<{ name: string; language: string; calls: string }>(
        `select p.oid::regprocedure::text as name, l.lanname as language, s.calls
           from pg_stat_xact_user_functions s
           join pg_proc p on p.oid = s.funcid
           join pg_language l on l.oid = p.prolang`,
      );
      return rows;
    };
    try {
      await client.query('begin');
      await client.query(`set local track_functions = 'all'`);
      // The first round plans each statement of the session, and planning folds
      // immutable calls with constant arguments (private.token_buckets()) once;
      // what the second round calls is what every request calls.
      await requests();
      const before = new Map((await counted()).map((row) => [row.name, Number(row.calls)]));
      await requests();
      const each = (await counted()).filter((row) => Number(row.calls) > (before.get(row.name) ?? 0));
      const called = each.map((row) => row.name);
      // What was counted is what ran: the entry points and the helpers under them.
      expect(called).toEqual(expect.arrayContaining([
        expect.stringMatching(/^authorize_request\(/),
        'settle_requests(jsonb)',
        'authorize_requests(jsonb)',
        expect.stringMatching(/^authorize_ahead\(/),
        expect.stringMatching(/^return_ready_holds\(/),
        expect.stringMatching(/^private\.apply_price_multiplier\(/),
        expect.stringMatching(/^private\.settle_one\(/),
      ]));
      expect(each.filter((row) => row.language === 'sql').map((row) => row.name)).toEqual([]);
    } finally {
      await client.query('rollback');
      client.release();
    }
  });

  it('that take a list of ids or keys run with generic plans, so their lock queries are planned once per session', async () => {
    const { rows } = await admin().query<{ name: string; config: string[] | null }>(
      `select proname as name, proconfig as config from pg_proc
        where pronamespace = 'public'::regnamespace and proname in ('authorize_requests', 'settle_requests', 'return_ready_holds')
        order by proname`,
    );
    expect(rows.map((row) => row.name)).toEqual(['authorize_requests', 'return_ready_holds', 'settle_requests']);
    for (const row of rows) expect(row.config).toContain('plan_cache_mode=force_generic_plan');
  });

  it('write each row of a batch under one transaction id, so no row version carries a multixact', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const model = await createModel({ input: 1_000_000, output: 2_000_000 });
    const requestIds = Array.from({ length: 3 }, () => crypto.randomUUID());
    // A refusal (a model that does not exist) is an answer, not a failure: the batch stays in its one subtransaction.
    const items = JSON.stringify([
      ...requestIds.map((request_id) => ({ request_id, key_hash: customer.keyHash, model, max_input_tokens: 100, max_output_tokens: 50 })),
      { request_id: crypto.randomUUID(), key_hash: customer.keyHash, model: 'no-such-model', max_input_tokens: 100, max_output_tokens: 50 },
    ]);
    const settlements = JSON.stringify(requestIds.map((request_id) => ({ request_id, outcome: 'completed', usage: { input: 10, output: 20 }, usage_source: 'provider' })));
    const client = await admin().connect();
    // Runs one batch in a transaction that is then rolled back, and reads every version
    // of the customer's account and key rows that the batch made or replaced from their
    // tables' pages (pageinspect, installed in that transaction only): how many, and how
    // many have a multixact as their xmax (HEAP_XMAX_IS_MULTI). While the transaction is
    // open none of them can be pruned.
    const inspected = async (batch: string, argument: string) => {
      const live = async (table: string, id: string) => (await client.query(`select ctid::text from ${table} where id = $1`, [id])).rows[0].ctid as string;
      const versions = async (table: string, id: string, before: string, firstXid: string) => {
        const { rows } = await client.query<{ multixact: boolean }>(
          `select (t_infomask & 4096) <> 0 as multixact
             from generate_series(0, pg_relation_size($1::regclass) / 8192 - 1) as page,
                  tollgate_pages.heap_page_items(tollgate_pages.get_raw_page($1::text, page::integer))
            where substring(t_data from 1 for 16) = uuid_send($2::uuid)
              and (format('(%s,%s)', page, lp) = $3 or t_xmin::text::bigint >= $4::bigint)`,
          [table, id, before, firstXid],
        );
        return { versions: rows.length, multixacts: rows.filter((row) => row.multixact).length };
      };
      try {
        await client.query('begin');
        await client.query('create schema tollgate_pages');
        await client.query('create extension pageinspect schema tollgate_pages');
        const { rows: [{ xid }] } = await client.query(`select (pg_current_xact_id()::text::bigint % 4294967296)::text as xid`);
        const before = { account: await live('public.accounts', customer.accountId), key: await live('public.api_keys', customer.apiKeyId) };
        const { rows: [{ result }] } = await client.query(`select public.${batch}($1${batch === 'authorize_ahead' ? ', 10' : ''}) as result`, [argument]);
        expect(result.map((item: { ok: boolean }) => item.ok)).toEqual(batch === 'settle_requests' ? [true, true, true] : [true, true, true, true]);
        if (batch !== 'settle_requests') expect(result[3].result).toMatchObject({ status: 'refused', code: 'model_not_found' });
        return {
          account: await versions('public.accounts', customer.accountId, before.account, xid),
          key: await versions('public.api_keys', customer.apiKeyId, before.key, xid),
        };
      } finally {
        await client.query('rollback');
      }
    };
    try {
      // Three holds: the account's version before, then one per hold; taken ahead, the same.
      expect(await inspected('authorize_requests', items)).toEqual({ account: { versions: 4, multixacts: 0 }, key: { versions: 1, multixacts: 0 } });
      expect(await inspected('authorize_ahead', items)).toEqual({ account: { versions: 4, multixacts: 0 }, key: { versions: 1, multixacts: 0 } });
      await client.query('select public.authorize_requests($1)', [items]);
      // Three charges: one version of the account and one of the key per charge.
      expect(await inspected('settle_requests', settlements)).toEqual({ account: { versions: 4, multixacts: 0 }, key: { versions: 4, multixacts: 0 } });
      await client.query('select public.settle_requests($1)', [settlements]);
    } finally {
      client.release();
    }
  });
});

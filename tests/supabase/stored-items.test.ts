import { describe, expect, it } from 'vitest';
import { admin, createCustomer } from '../support/supabase.ts';

// stored_elsewhere, behind every /v1/responses turn that sends earlier items back by id:
// the first id recorded as another account's, found through the index on item_ids.

describe('stored_elsewhere', () => {
  it('answers 300 ids among 100,000 stored responses well within the gateway\'s deadline, even where the statistics know one account only', async () => {
    const [busy, other] = [await createCustomer({ balance: 1 }), await createCustomer({ balance: 1 })];
    const { rows: [key] } = await admin().query('select key_hash from public.api_keys where account_id = $1 limit 1', [other.accountId]);
    const client = await admin().connect();
    // All in one transaction, rolled back: the rows, the statistics and the column's setting.
    await client.query('begin');
    try {
      await client.query(
        `insert into public.stored_responses (response_id, account_id, request_id, item_ids)
         select 'resp_many_' || g, $1, 'many', array['msg_many_' || g, 'rs_many_' || g] from generate_series(1, 100000) g`,
        [busy.accountId],
      );
      // As after weeks of one busy agent: every stored response the statistics know of is one account's.
      await client.query('alter table public.stored_responses alter column account_id set (n_distinct = 1)');
      await client.query('analyze public.stored_responses');
      // The gateway's deadline is 3 s; a plan that scans the table per id took 5 s here.
      await client.query(`set local statement_timeout = '1s'`);
      const own = Array.from({ length: 300 }, (_, index) => `msg_${String(index).padStart(32, '0')}`);
      // More than five calls: past them a function's plan may be a generic one.
      for (let call = 0; call < 7; call++) {
        const { rows: [none] } = await client.query('select public.stored_elsewhere($1, null, $2) as found', [key.key_hash, own]);
        expect(none.found).toBeNull();
      }
      const { rows: [found] } = await client.query('select public.stored_elsewhere($1, null, $2) as found', [key.key_hash, [...own, 'msg_many_77', 'msg_many_5']]);
      expect(found.found).toBe('msg_many_77');
      // The busy account's own ids are its own.
      const { rows: [busyKey] } = await client.query('select key_hash from public.api_keys where account_id = $1 limit 1', [busy.accountId]);
      const { rows: [mine] } = await client.query('select public.stored_elsewhere($1, $2, $3) as found', [busyKey.key_hash, 'resp_many_3', ['msg_many_77', 'rs_many_5']]);
      expect(mine.found).toBeNull();
    } finally {
      await client.query('rollback');
      client.release();
    }
  });
});

import type pg from 'pg';
import { admin } from './supabase.ts';

export interface InvariantViolation {
  invariant: string;
  subject: string;
  details: Record<string, unknown>;
}

/**
 * The money invariants, checked with the tests' own SQL (independent of the
 * functions under test), in one statement so they read one consistent snapshot:
 * - balance = sum of the account's ledger amounts
 * - held = sum of the account's open holds
 * - balance - held >= -credit_limit
 * - a settled request's charge equals minus its usage ledger row
 * - what is left of the account's grants not yet expired = the balance, or 0 below zero
 */
export async function findInvariantViolations(pool: pg.Pool = admin()): Promise<InvariantViolation[]> {
  const { rows } = await pool.query<InvariantViolation>(`
    with totals as (
      select a.id, a.balance, a.held, a.credit_limit,
             coalesce((select sum(l.amount) from public.credit_ledger l where l.account_id = a.id), 0) as ledger_sum,
             coalesce((select sum(e.hold) from public.usage_events e where e.account_id = a.id and e.status = 'held'), 0) as open_holds,
             coalesce((select sum(g.remaining) from public.credit_grants g where g.account_id = a.id and g.expired_at is null), 0) as grants_left
        from public.accounts a
    )
    select 'balance equals ledger' as invariant, id::text as subject,
           jsonb_build_object('balance', balance, 'ledger_sum', ledger_sum) as details
      from totals where balance <> ledger_sum
    union all
    select 'held equals open holds', id::text, jsonb_build_object('held', held, 'open_holds', open_holds)
      from totals where held <> open_holds
    union all
    select 'within credit limit', id::text, jsonb_build_object('balance', balance, 'held', held, 'credit_limit', credit_limit)
      from totals where balance - held < -credit_limit
    union all
    select 'grants left equal the balance', id::text, jsonb_build_object('balance', balance, 'grants_left', grants_left)
      from totals where grants_left <> greatest(balance, 0)
    union all
    select 'charge equals usage ledger row', e.request_id,
           jsonb_build_object('charged', e.charged, 'ledger', coalesce(-l.amount, 0))
      from public.usage_events e
      left join public.credit_ledger l on l.reason = 'usage' and l.reference = e.request_id
     where e.status <> 'held' and coalesce(e.charged, 0) <> coalesce(-l.amount, 0)
  `);
  return rows;
}

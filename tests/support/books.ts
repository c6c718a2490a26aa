import { expect } from 'vitest';
import { findInvariantViolations } from './invariants.ts';
import { admin, type Customer } from './supabase.ts';

/** The suite's invariants hold, and the books check (reconcile_books) finds nothing wrong with the account. */
export async function booksBalanced(customer: Customer): Promise<void> {
  expect(await findInvariantViolations()).toEqual([]);
  await admin().query('select public.reconcile_books(now())');
  const { rows } = await admin().query(
    `select kind, details from public.alerts where account_id = $1 and kind in ('ledger_mismatch', 'holds_mismatch', 'stripe_mismatch')`,
    [customer.accountId],
  );
  expect(rows).toEqual([]);
}

/** The account's ledger rows from Stripe events, as [reason, amount], in order. */
export async function stripeLedger(customer: Customer): Promise<Array<[string, number]>> {
  const { rows } = await admin().query(
    `select reason, amount::bigint from public.credit_ledger
      where account_id = $1 and reason in ('purchase', 'refund', 'dispute', 'dispute_won') order by id`,
    [customer.accountId],
  );
  return rows.map((row) => [row.reason as string, Number(row.amount)]);
}

import { readdir, readFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';
import { inRolledBackTransaction } from '../support/pg-net.ts';
import { admin, createCustomer, ledger, stack, type Customer } from '../support/supabase.ts';

// A customer reads their own alerts, payments and invoices straight from
// PostgREST; what the operator keeps about them there (reconciliation's
// findings, the outbox's bookkeeping, why a payment was not credited) is not
// theirs to read (20261129003300_internal_columns_stay_private). Operators read
// it all through their functions.

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

/** The kinds of alert a customer sees about their own account. */
const customerKinds = ['low_balance', 'balance_depleted', 'stale_hold'];
/** The kinds written for the operator: reconciliation, Stripe's loose ends, disputes, prices. */
const operatorKinds = [
  'ledger_mismatch', 'holds_mismatch', 'stripe_mismatch',
  'unmatched_payment', 'invoice_not_credited', 'unmatched_subscription', 'subscription_replaced', 'refund_unmatched', 'clawback_shortfall',
  'payment_disputed', 'price_below_cost', 'unpriced_usage',
];

/** The operator's columns, by table: refused to a customer, by name or with `*`. */
const hiddenColumns: Record<string, string[]> = {
  alerts: ['dedupe_key', 'delivery_status', 'delivery_attempts', 'net_request_id', 'sent_at', 'delivered_at', 'resolved_at'],
  stripe_payments: ['problem', 'uncollected'],
  stripe_invoices: ['problem', 'customer_id'],
};
const visibleColumns: Record<string, string> = {
  alerts: 'id,account_id,kind,message,details,created_at',
  stripe_payments: 'id,checkout_session_id,payment_intent_id,account_id,credit_pack_id,amount_total,currency,credits,status,refunded_amount,disputed_amount,debited,created_at,updated_at,quantity,amount_subtotal,amount_discount,amount_tax,invoice_id',
  stripe_invoices: 'id,subscription_id,price_id,account_id,plan_id,amount_paid,credits,status,created_at',
};

let customer: Customer;
let operator: SupabaseClient;
let operatorClaims: Record<string, unknown>;
let sessionId: string;
let invoiceId: string;

beforeAll(async () => {
  const operatorEmail = `operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
  const operatorId = await createAuthUser(stack.authAdminDatabaseUrl, operatorEmail);
  operatorClaims = { sub: operatorId, role: 'authenticated', email: operatorEmail, app_metadata: { provider: 'email', role: 'admin' } };
  const token = signUserJwt(operatorId, stack.jwtSecret, { email: operatorEmail, appMetadata: { provider: 'email', role: 'admin' } });
  operator = createClient(stack.supabaseUrl, stack.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: WebSocket as never },
    accessToken: async () => token,
  });

  // A real low-balance alert: the balance crosses below the default 1,000,000 threshold.
  customer = await createCustomer({ balance: 2_000_000 });
  await ledger.grantCredits({ accountId: customer.accountId, amount: -1_500_000, reason: 'adjustment' });

  // A real unmatched payment: paid through a Payment Link of no pack. Its row records the
  // problem, and an unmatched_payment alert about the account repeats it.
  sessionId = `cs_test_${crypto.randomUUID().replaceAll('-', '')}`;
  const { rows: [checkout] } = await admin().query(`select public.apply_stripe_checkout($1, 'checkout.session.completed', $2) as result`, [
    `evt_${crypto.randomUUID().replaceAll('-', '')}`,
    JSON.stringify({
      id: sessionId, mode: 'payment', payment_status: 'paid', payment_intent: `pi_${crypto.randomUUID().replaceAll('-', '')}`,
      payment_link: `plink_${crypto.randomUUID().replaceAll('-', '')}`, client_reference_id: customer.accountId,
      amount_total: 1000, amount_subtotal: 1000, currency: 'usd',
    }),
  ]);
  expect(checkout.result).toMatchObject({ status: 'unmatched' });

  // An invoice the operator chose not to credit, with the operator's reason.
  invoiceId = `in_${crypto.randomUUID().replaceAll('-', '')}`;
  await admin().query(
    `insert into public.stripe_invoices (id, customer_id, account_id, amount_paid, status, problem)
     values ($1, 'cus_internal_columns', $2, 0, 'not_credited', 'a $0 invoice (a trial or a full discount)')`,
    [invoiceId, customer.accountId],
  );

  // One alert of every other kind about the account, sent to the operator's webhook already.
  const { rows: present } = await admin().query<{ kind: string }>('select kind from public.alerts where account_id = $1', [customer.accountId]);
  for (const kind of [...customerKinds, ...operatorKinds].filter((kind) => !present.some((row) => row.kind === kind))) {
    await admin().query(
      `insert into public.alerts (account_id, kind, message, details, dedupe_key, delivery_status, delivery_attempts, sent_at)
       values ($1, $2, $3, '{"checked_at": "2026-11-29T00:00:00Z"}', $4, 'sent', 1, now())`,
      // A dedupe key of its own: reconcile_books's own finding below is raised beside it.
      [customer.accountId, kind, `A ${kind} alert about this account.`, `internal-columns:${kind}:${customer.accountId}`],
    );
  }
});

describe('a signed-in customer', () => {
  it.each(Object.keys(hiddenColumns))('is refused the operator\'s columns of %s, asked for by name or with select=*', async (table) => {
    for (const columns of [...hiddenColumns[table]!, `id,${hiddenColumns[table]![0]}`, '*']) {
      const result = await customer.client.from(table).select(columns).eq('account_id', customer.accountId);
      expect({ columns, status: result.status, code: result.error?.code }).toEqual({ columns, status: 403, code: '42501' });
    }
  });

  it('reads the columns meant for them', async () => {
    const { data: alerts, error: alertsError } = await customer.client.from('alerts').select(visibleColumns.alerts!).eq('kind', 'low_balance');
    expect(alertsError).toBeNull();
    expect(alerts).toEqual([{
      id: expect.any(Number), account_id: customer.accountId, kind: 'low_balance', message: 'Your balance is below your alert threshold.',
      details: { balance: 500_000, threshold: 1_000_000 }, created_at: expect.any(String),
    }]);

    const { data: payments, error: paymentsError } = await customer.client.from('stripe_payments').select(visibleColumns.stripe_payments!);
    expect(paymentsError).toBeNull();
    expect(payments).toEqual([expect.objectContaining({ checkout_session_id: sessionId, account_id: customer.accountId, amount_total: 1000, status: 'unmatched', credits: 0 })]);

    const { data: invoices, error: invoicesError } = await customer.client.from('stripe_invoices').select(visibleColumns.stripe_invoices!);
    expect(invoicesError).toBeNull();
    expect(invoices).toEqual([expect.objectContaining({ id: invoiceId, account_id: customer.accountId, amount_paid: 0, status: 'not_credited' })]);
  });

  it('sees the alerts meant for them about their account, and none of the operator\'s', async () => {
    const { rows: written } = await admin().query<{ kind: string }>('select distinct kind from public.alerts where account_id = $1', [customer.accountId]);
    expect(written.map((row) => row.kind).sort()).toEqual([...customerKinds, ...operatorKinds].sort());

    const { data: seen, error } = await customer.client.from('alerts').select('kind').eq('account_id', customer.accountId);
    expect(error).toBeNull();
    expect(seen!.map((row) => row.kind).sort()).toEqual([...customerKinds].sort());
    // Asked for by kind, an operator's alert is simply not there.
    for (const kind of ['ledger_mismatch', 'stripe_mismatch', 'unmatched_payment']) {
      expect(await customer.client.from('alerts').select('id,message').eq('kind', kind)).toMatchObject({ error: null, data: [] });
    }
  });

  it('does not see what reconcile_books finds wrong with their account, where the operator does', async () => {
    await inRolledBackTransaction(async (client) => {
      await client.query('update public.accounts set balance = balance + 7, held = held + 3 where id = $1', [customer.accountId]);
      await client.query('select public.reconcile_books(now())');
      await client.query('set local role authenticated');
      await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify({ sub: customer.userId, role: 'authenticated' })]);
      const { rows: seen } = await client.query(`select kind from public.alerts where account_id = $1`, [customer.accountId]);
      expect(seen.map((row) => row.kind).sort()).toEqual([...customerKinds].sort());
      await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify(operatorClaims)]);
      const { rows: [found] } = await client.query('select public.operator_alerts(1000) as alerts');
      const aboutAccount = (found.alerts as Array<{ account_id: string; kind: string; details: Record<string, unknown> }>)
        .filter((alert) => alert.account_id === customer.accountId);
      expect(aboutAccount).toEqual(expect.arrayContaining([
        expect.objectContaining({ kind: 'ledger_mismatch', details: expect.objectContaining({ balance: 500_007, ledger_sum: 500_000 }) }),
        expect.objectContaining({ kind: 'holds_mismatch', details: expect.objectContaining({ held: 3, open_holds: 0 }) }),
      ]));
    });
  });

  it('gets what every select of these tables in the console asks for', async () => {
    const selects: Array<{ table: string; columns: string }> = [];
    for (const name of (await readdir(join(projectRoot, 'console'))).filter((file) => file.endsWith('.ts'))) {
      const source = await readFile(join(projectRoot, 'console', name), 'utf8');
      for (const match of source.matchAll(/\.from\('(alerts|stripe_payments|stripe_invoices)'\)\s*\.select\(([^)]*)\)/g)) {
        selects.push({ table: match[1]!, columns: match[2]!.trim().replace(/^['"`]|['"`]$/g, '') });
      }
    }
    expect(selects.map((entry) => entry.table)).toContain('stripe_payments');
    for (const { table, columns } of selects) {
      // An empty select() is select=*, refused on these tables.
      expect(columns).not.toMatch(/^\*?$/);
      const result = await customer.client.from(table).select(columns).limit(1);
      expect({ table, columns, error: result.error }).toEqual({ table, columns, error: null });
    }
  });
});

describe('the operator', () => {
  it('reads every alert about the account, with its delivery, through operator_alerts', async () => {
    const { data, error } = await operator.rpc('operator_alerts', { p_limit: 1000 });
    expect(error).toBeNull();
    const aboutAccount = (data as Array<Record<string, unknown>>).filter((alert) => alert.account_id === customer.accountId);
    expect(aboutAccount.map((alert) => alert.kind).sort()).toEqual([...customerKinds, ...operatorKinds].sort());
    expect(aboutAccount.find((alert) => alert.kind === 'ledger_mismatch')).toMatchObject({ delivery_status: 'sent', resolved_at: null });
    expect(aboutAccount.find((alert) => alert.kind === 'unmatched_payment')).toMatchObject({
      message: 'A Stripe payment was not credited: no credit pack matches the payment link.',
    });
  });

  it('reads why a payment was not credited, and what was written off, through operator_payments', async () => {
    const { data, error } = await operator.rpc('operator_payments', { p_limit: 1000 });
    expect(error).toBeNull();
    expect((data as Array<Record<string, unknown>>).find((payment) => payment.account_id === customer.accountId)).toMatchObject({
      status: 'unmatched', problem: 'no credit pack matches the payment link', uncollected: 0,
    });
  });

  it('resolves an operator\'s alert about the account, which the customer never saw', async () => {
    const { rows: [alert] } = await admin().query(`select id::int from public.alerts where account_id = $1 and kind = 'stripe_mismatch'`, [customer.accountId]);
    const { data, error } = await operator.rpc('operator_resolve_alert', { p_alert_id: alert.id });
    expect(error).toBeNull();
    expect(data).toMatchObject({ id: alert.id, resolved_at: expect.any(String) });
    expect(await customer.client.from('alerts').select('id').eq('id', alert.id)).toMatchObject({ error: null, data: [] });
  });
});

describe('every alert kind the migrations write', () => {
  it('is either a customer\'s or the operator\'s, so the alerts policy has decided about it', async () => {
    const directory = join(projectRoot, 'supabase/migrations');
    const written = new Set<string>();
    for (const name of (await readdir(directory)).filter((file) => file.endsWith('.sql'))) {
      const source = await readFile(join(directory, name), 'utf8');
      for (const match of source.matchAll(/raise_alert(?:_once)?\(\s*[^,()']+,\s*'([a-z_]+)'/g)) written.add(match[1]!);
      for (const match of source.matchAll(/insert into public\.alerts \(account_id, kind[^)]*\)\s*values \([^,]+,\s*'([a-z_]+)'/g)) written.add(match[1]!);
    }
    expect([...written].sort()).toEqual([...customerKinds, ...operatorKinds].sort());
  });
});

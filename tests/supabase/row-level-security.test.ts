import type { SupabaseClient } from '@supabase/supabase-js';
import pg from 'pg';
import { beforeAll, describe, expect, it } from 'vitest';
import { admin, anonClient, createCustomer, createModel, ledger, serviceClient, stack, type Customer } from '../support/supabase.ts';

type Role = 'anon' | 'alice' | 'bob' | 'service';
/** 'denied' is a privilege error (42501); a number is how many of Alice's rows were seen or touched. */
type Outcome = 'denied' | number | `error:${string}`;

const roles: Role[] = ['anon', 'alice', 'bob', 'service'];

let alice: Customer;
let bob: Customer;
let clients: Record<Role, SupabaseClient>;
let model: string;
let packId: string;
let eventId: string;
let planId: string;
let cancelledId: string;

beforeAll(async () => {
  // Well above the low-balance threshold, so the only alert is the one made below.
  alice = await createCustomer({ balance: 10_000_000 });
  bob = await createCustomer({ balance: 10_000_000 });
  clients = { anon: anonClient(), alice: alice.client, bob: bob.client, service: serviceClient() };
  model = await createModel({ input: 1_000_000, output: 1_000_000 }, { cost: { input: 500_000, output: 500_000 } });
  const requestId = crypto.randomUUID();
  await ledger.authorizeRequest({ requestId, keyHash: alice.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
  await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 10, output: 10 }, usageSource: 'provider' });
  await admin().query(`insert into public.alerts (account_id, kind, message) values ($1, 'low_balance', 'Balance is low.')`, [alice.accountId]);
  const { rows: [pack] } = await admin().query(
    `insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits) values ('Ten', $1, 1000, 10000000) returning id`,
    [`plink_${crypto.randomUUID()}`],
  );
  packId = pack.id;
  await admin().query(`insert into public.usage_daily values ($1, 'rls-model', '2026-01-01', 1, 1, 0, 0, 0, 1, 0, 0, 0, 2, 2, 1, 1)`, [alice.accountId]);
  planId = `rls${crypto.randomUUID().slice(0, 8)}`;
  await admin().query(`insert into public.plans (id, name, monthly_credits) values ($1, 'RLS', 0)`, [planId]);
  await admin().query(`insert into public.stripe_payments (checkout_session_id, account_id, status) values ($1, $2, 'pending')`, [`cs_${crypto.randomUUID()}`, alice.accountId]);
  await admin().query(`insert into public.stripe_invoices (id, customer_id, account_id, status) values ($1, 'cus_rls', $2, 'pending')`, [`in_${crypto.randomUUID()}`, alice.accountId]);
  cancelledId = crypto.randomUUID();
  await ledger.settleRequest({ requestId: cancelledId, outcome: 'failed', usage: {}, error: 'authorization did not answer in time' });
  eventId = `evt_${crypto.randomUUID()}`;
  await admin().query(
    `insert into public.stripe_events (id, type, account_id, status, payload) values ($1, 'checkout.session.completed', $2, 'pending', '{}')`,
    [eventId, alice.accountId],
  );
});

function outcomeOf(result: { data: unknown; error: { code?: string } | null }): Outcome {
  if (result.error) return result.error.code === '42501' ? 'denied' : `error:${result.error.code}`;
  return Array.isArray(result.data) ? result.data.length : 1;
}

interface TableCase {
  table: string;
  columns: string;
  /** The column and value that pick Alice's row(s). */
  match: () => [string, string];
  insert: () => Record<string, unknown>;
  update: Record<string, unknown>;
  expected: Record<'select' | 'insert' | 'update' | 'delete', Record<Role, Outcome>>;
}

const nobody: Record<Role, Outcome> = { anon: 'denied', alice: 'denied', bob: 'denied', service: 'denied' };
const ownRows = (count: number): Record<Role, Outcome> => ({ anon: 'denied', alice: count, bob: 0, service: count });
const serviceOnly = (count: number): Record<Role, Outcome> => ({ anon: 'denied', alice: 'denied', bob: 'denied', service: count });

const tables: TableCase[] = [
  {
    // Column grants: the account's internal columns stay out of reach (see the column matrix below).
    table: 'accounts', columns: 'id,balance,held', match: () => ['id', alice.accountId],
    insert: () => ({ user_id: alice.userId, balance: 1_000_000_000 }),
    update: { balance: 1_000_000_000 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    table: 'api_keys', columns: '*', match: () => ['account_id', alice.accountId],
    insert: () => ({ account_id: alice.accountId, name: 'x', prefix: 'tg_x', key_hash: '0'.repeat(64) }),
    update: { revoked_at: null, spent: 0 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    table: 'credit_ledger', columns: '*', match: () => ['account_id', alice.accountId],
    insert: () => ({ account_id: alice.accountId, amount: 1_000_000, balance_after: 0, reason: 'grant' }),
    update: { amount: 1_000_000_000 },
    // signup, the grant up to 10,000,000, and one usage charge
    expected: { select: ownRows(3), insert: nobody, update: nobody, delete: nobody },
  },
  {
    // Column grants: what the request cost upstream stays out of reach (see the column matrix below).
    table: 'usage_events', columns: 'request_id,account_id,amount,charged', match: () => ['account_id', alice.accountId],
    insert: () => ({ request_id: 'x', account_id: alice.accountId, api_key_id: alice.apiKeyId, model_id: model, provider: 'openai', upstream_model: model, hold: 0, max_input_tokens: 0, max_output_tokens: 0, rates: {} }),
    update: { charged: 0 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    // Column grants, and only the kinds meant for the customer (tests/supabase/internal-columns.test.ts).
    table: 'alerts', columns: 'id,account_id,kind,message', match: () => ['account_id', alice.accountId],
    insert: () => ({ account_id: alice.accountId, kind: 'x', message: 'x' }),
    update: { delivery_status: 'delivered' },
    expected: { select: ownRows(1), insert: nobody, update: serviceOnly(1), delete: nobody },
  },
  {
    table: 'stripe_events', columns: '*', match: () => ['id', eventId],
    insert: () => ({ id: `evt_${crypto.randomUUID()}`, type: 'x', status: 'x', payload: {} }),
    update: { status: 'ignored' },
    expected: { select: serviceOnly(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    table: 'cancelled_requests', columns: '*', match: () => ['request_id', cancelledId],
    insert: () => ({ request_id: crypto.randomUUID() }),
    update: { cancelled_at: new Date().toISOString() },
    expected: { select: serviceOnly(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    table: 'billing_settings', columns: '*', match: () => ['id', 'true'],
    insert: () => ({ id: true }),
    update: { updated_at: new Date().toISOString() },
    expected: { select: serviceOnly(1), insert: nobody, update: serviceOnly(1), delete: nobody },
  },
  {
    table: 'credit_packs', columns: '*', match: () => ['id', packId],
    insert: () => ({ name: 'Fifty', stripe_payment_link_id: `plink_${crypto.randomUUID()}`, unit_amount: 5000, credits: 55_000_000 }),
    update: { active: true },
    expected: {
      select: { anon: 'denied', alice: 1, bob: 1, service: 1 },
      insert: serviceOnly(1), update: serviceOnly(1), delete: serviceOnly(1),
    },
  },
  {
    table: 'plans', columns: '*', match: () => ['id', planId],
    insert: () => ({ id: `x${crypto.randomUUID().slice(0, 8)}`, name: 'X' }),
    update: { name: 'RLS' },
    expected: {
      select: { anon: 'denied', alice: 1, bob: 1, service: 1 },
      insert: serviceOnly(1), update: serviceOnly(1), delete: serviceOnly(1),
    },
  },
  {
    // Column grants: why a payment was not credited, and what was written off, stay the operator's.
    table: 'stripe_payments', columns: 'id,account_id,status,credits', match: () => ['account_id', alice.accountId],
    insert: () => ({ checkout_session_id: 'cs_x', account_id: alice.accountId, status: 'credited', credits: 1_000_000_000 }),
    update: { credits: 1_000_000_000 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    // Column grants: the Stripe customer id and why an invoice was not credited stay the operator's.
    table: 'stripe_invoices', columns: 'id,account_id,status,credits', match: () => ['account_id', alice.accountId],
    insert: () => ({ id: 'in_x', customer_id: 'cus_x', account_id: alice.accountId }),
    update: { credits: 1_000_000_000 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    table: 'usage_daily', columns: 'account_id,day,amount,charged', match: () => ['account_id', alice.accountId],
    insert: () => ({ account_id: alice.accountId, model_id: 'x', day: '2026-01-01', requests: 0, input_tokens: 0, cached_input_tokens: 0, cache_write_tokens: 0, cache_write_1h_tokens: 0, output_tokens: 0, reasoning_tokens: 0, image_tokens: 0, audio_tokens: 0, amount: 0, charged: 0, upstream_cost: 0, margin: 0 }),
    update: { charged: 0 },
    expected: { select: ownRows(1), insert: nobody, update: nobody, delete: nobody },
  },
  {
    // The public price list: anyone reads it, nobody writes through it.
    table: 'model_prices', columns: '*', match: () => ['id', model],
    insert: () => ({ id: 'x' }),
    update: { price_input: 0 },
    expected: { select: { anon: 1, alice: 1, bob: 1, service: 1 }, insert: nobody, update: nobody, delete: nobody },
  },
  {
    // Prices are public; what the upstream charges us is not.
    table: 'models', columns: 'id,provider,price_input,price_output', match: () => ['id', model],
    insert: () => ({ id: `rls-${crypto.randomUUID()}`, provider: 'openai', upstream_model: 'x', max_output_tokens: 1 }),
    update: { price_input: 1_000_000 },
    expected: { select: { anon: 1, alice: 1, bob: 1, service: 1 }, insert: serviceOnly(1), update: serviceOnly(1), delete: serviceOnly(1) },
  },
];

describe('row-level security and grants, table by table', () => {
  for (const tableCase of tables) {
    describe(tableCase.table, () => {
      it.each(roles)('select as %s', async (role) => {
        const [column, value] = tableCase.match();
        const result = await clients[role].from(tableCase.table).select(tableCase.columns).eq(column, value);
        expect(outcomeOf(result)).toBe(tableCase.expected.select[role]);
      });

      it.each(roles)('insert as %s', async (role) => {
        const result = await clients[role].from(tableCase.table).insert(tableCase.insert()).select(tableCase.columns);
        expect(outcomeOf(result)).toBe(tableCase.expected.insert[role]);
      });

      it.each(roles)('update as %s', async (role) => {
        const [column, value] = tableCase.match();
        const result = await clients[role].from(tableCase.table).update(tableCase.update).eq(column, value).select(tableCase.columns);
        expect(outcomeOf(result)).toBe(tableCase.expected.update[role]);
      });

      it.each(roles)('delete as %s', async (role) => {
        // Deletes aim at a throwaway row where one may succeed, and at Alice's otherwise.
        let [column, value] = tableCase.match();
        if (tableCase.table === 'models' && role === 'service') value = await createModel({ input: 1, output: 1 });
        if (tableCase.table === 'plans' && role === 'service') {
          value = `del${crypto.randomUUID().slice(0, 8)}`;
          await admin().query(`insert into public.plans (id, name) values ($1, 'Throwaway')`, [value]);
        }
        if (tableCase.table === 'credit_packs' && role === 'service') {
          const { rows: [pack] } = await admin().query(
            `insert into public.credit_packs (name, unit_amount, credits) values ('Throwaway', 100, 1) returning id`,
          );
          value = pack.id;
        }
        const result = await clients[role].from(tableCase.table).delete().eq(column, value).select(tableCase.columns);
        expect(outcomeOf(result)).toBe(tableCase.expected.delete[role]);
      });
    });
  }

  it('users can set their own low-balance threshold, not anyone else\'s', async () => {
    const own = await alice.client.from('accounts').update({ low_balance_threshold: 2_000_000 }).eq('id', alice.accountId).select('low_balance_threshold');
    expect(own).toMatchObject({ error: null, data: [{ low_balance_threshold: 2_000_000 }] });
    const other = await bob.client.from('accounts').update({ low_balance_threshold: 0 }).eq('id', alice.accountId).select('id');
    expect(other).toMatchObject({ error: null, data: [] });
    const { rows: [row] } = await admin().query('select low_balance_threshold from public.accounts where id = $1', [alice.accountId]);
    expect(row.low_balance_threshold).toBe('2000000');
  });

  it('what the upstream charges us is hidden from everyone but the service role', async () => {
    for (const role of ['anon', 'alice', 'bob'] as const) {
      expect(outcomeOf(await clients[role].from('models').select('id,cost_input').eq('id', model))).toBe('denied');
    }
    expect(outcomeOf(await clients.service.from('models').select('id,cost_input').eq('id', model))).toBe(1);
  });

  it('even the tables\' owner cannot rewrite or delete the ledger', async () => {
    const owner = new pg.Client({ connectionString: stack.databaseUrl });
    await owner.connect();
    try {
      await expect(owner.query('update public.credit_ledger set amount = 1 where account_id = $1', [alice.accountId])).rejects.toThrow(/append-only/);
      await expect(owner.query('delete from public.credit_ledger where account_id = $1', [alice.accountId])).rejects.toThrow(/append-only/);
      await expect(owner.query('truncate public.credit_ledger cascade')).rejects.toThrow(/append-only/);
    } finally {
      await owner.end();
    }
  });
});

describe('functions: only the service role runs money functions', () => {
  type FunctionCase = { name: string; args: () => Record<string, unknown>; expected: Record<Role, Outcome> };
  const functions: FunctionCase[] = [
    {
      name: 'authorize_request',
      args: () => ({ p_request_id: crypto.randomUUID(), p_key_hash: '0'.repeat(64), p_model: model, p_max_input_tokens: 1 }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'settle_request',
      args: () => ({ p_request_id: 'unknown', p_outcome: 'completed', p_usage: { input: 1 } }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'error:PT404' },
    },
    {
      name: 'authorize_uncharged_call',
      args: () => ({ p_key_hash: '0'.repeat(64), p_model: model }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'authorize_stored_response',
      args: () => ({ p_key_hash: '0'.repeat(64), p_response_id: 'resp_x' }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'record_stored_response',
      args: () => ({ p_request_id: 'unknown', p_response_id: 'resp_x' }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'set_api_key_limits',
      args: () => ({ p_key_id: crypto.randomUUID(), p_policy: { requests_per_minute: 1 } }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'error:PT404' },
    },
    {
      name: 'settle_requests',
      args: () => ({ p_settlements: [] }),
      // An empty batch: an empty list of results.
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 0 },
    },
    {
      name: 'key_overview',
      args: () => ({ p_key_hash: '0'.repeat(64) }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'grant_credits',
      args: () => ({ p_account_id: alice.accountId, p_amount: 1 }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    ...['apply_stripe_checkout', 'apply_stripe_refund', 'apply_stripe_dispute', 'apply_stripe_invoice', 'record_ignored_stripe_event'].map((name) => ({
      name,
      // Junk input: the service role reaches the function, which refuses it (22023); nobody else gets that far.
      args: () =>
        name === 'apply_stripe_checkout' ? { p_event_id: 'not-an-event', p_event_type: 'checkout.session.completed', p_session: { id: 'cs_x' } }
        : name === 'record_ignored_stripe_event' ? { p_event_id: 'not-an-event', p_event_type: 'x', p_object: {} }
        : { p_event_id: 'not-an-event', [name === 'apply_stripe_refund' ? 'p_charge' : name === 'apply_stripe_dispute' ? 'p_dispute' : 'p_invoice']: { id: 'x', payment_intent: 'pi_x', customer: 'cus_x' } },
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'error:22023' } as Record<Role, Outcome>,
    })),
    {
      name: 'create_api_key',
      args: () => ({ p_name: 'matrix' }),
      expected: { anon: 'denied', alice: 1, bob: 1, service: 'denied' },
    },
    {
      name: 'update_api_key_policy',
      args: () => ({ p_key_id: crypto.randomUUID(), p_policy: { max_concurrent: 1 } }),
      expected: { anon: 'denied', alice: 'error:PT404', bob: 'error:PT404', service: 'denied' },
    },
    ...['reconcile_books', 'expire_stale_holds', 'check_balance_states', 'deliver_alerts'].map((name) => ({
      name,
      // Harmless to run: a time far in the past touches nothing.
      args: () => ({ p_now: '2000-01-01T00:00:00Z' }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 } as Record<Role, Outcome>,
    })),
    ...[
      ['operator_models', {}], ['operator_customers', {}], ['operator_alerts', {}], ['operator_revenue', {}], ['operator_payments', {}],
      ['operator_update_model', { p_model_id: 'x', p_changes: { enabled: false } }],
      ['operator_grant_credits', { p_account_id: crypto.randomUUID(), p_amount: 1, p_note: 'x' }],
      ['operator_resolve_alert', { p_alert_id: 1 }], ['operator_reconcile', {}], ['operator_set_alias', { p_alias: 'x-1', p_model_id: null }],
    ].map(([name, args]) => ({
      name: name as string,
      // Operators only, checked in SQL: a customer is refused like anyone else (tests/supabase/operator.test.ts has the operator).
      args: () => args as Record<string, unknown>,
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'denied' } as Record<Role, Outcome>,
    })),
    {
      name: 'operator_create_code',
      args: () => ({ p_code: 'MATRIX-1', p_credits: 1_000_000_000, p_max_uses: 1 }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'denied' },
    },
    {
      name: 'redeem_code',
      // A signed-in customer reaches it (and there is no such code); nobody else may call it.
      args: () => ({ p_code: 'NO-SUCH-CODE' }),
      expected: { anon: 'denied', alice: 'error:PT404', bob: 'error:PT404', service: 'denied' },
    },
    ...[
      ['set_member', { p_account_id: crypto.randomUUID(), p_email: 'x@example.test' }],
      ['remove_member', { p_account_id: crypto.randomUUID(), p_user_id: crypto.randomUUID() }],
      ['create_member_api_key', { p_account_id: crypto.randomUUID(), p_name: 'x' }],
    ].map(([name, args]) => ({
      name: name as string,
      // Owners (members, for keys) of the organisation only: nobody here is one.
      args: () => args as Record<string, unknown>,
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'denied' } as Record<Role, Outcome>,
    })),
    ...[
      ['withdraw_invitation', { p_account_id: crypto.randomUUID(), p_email: 'x@example.test' }],
      ['set_organisation_name', { p_account_id: crypto.randomUUID(), p_name: 'x' }],
      ['account_details', { p_account_id: crypto.randomUUID() }],
    ].map(([name, args]) => ({
      name: name as string,
      // Owners of the organisation only: nobody here owns that account.
      args: () => args as Record<string, unknown>,
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 'denied' } as Record<Role, Outcome>,
    })),
    ...['accept_invitation', 'decline_invitation'].map((name) => ({
      name,
      // Only the invitee, and there is no such invitation; nobody but a signed-in user may call it.
      args: () => ({ p_invitation_id: crypto.randomUUID() }),
      expected: { anon: 'denied', alice: 'error:PT404', bob: 'error:PT404', service: 'denied' } as Record<Role, Outcome>,
    })),
    {
      name: 'my_invitations',
      args: () => ({}),
      // Nobody has invited Alice or Bob: an empty list.
      expected: { anon: 'denied', alice: 0, bob: 0, service: 'denied' },
    },
    ...['my_organisations', 'my_owned_accounts'].map((name) => ({
      name,
      args: () => ({}),
      // Alice owns her own account; she belongs to no organisation.
      expected: { anon: 'denied', alice: name === 'my_owned_accounts' ? 1 : 0, bob: name === 'my_owned_accounts' ? 1 : 0, service: 'denied' } as Record<Role, Outcome>,
    })),
    {
      name: 'expire_grants',
      args: () => ({ p_now: '2000-01-01T00:00:00Z' }),
      expected: { anon: 'denied', alice: 'denied', bob: 'denied', service: 1 },
    },
    {
      name: 'revoke_api_key',
      args: () => ({ p_key_id: crypto.randomUUID() }),
      expected: { anon: 'denied', alice: 'error:PT404', bob: 'error:PT404', service: 'denied' },
    },
  ];

  for (const functionCase of functions) {
    it.each(roles)(`${functionCase.name} as %s`, async (role) => {
      const result = await clients[role].rpc(functionCase.name, functionCase.args());
      expect(outcomeOf(result)).toBe(functionCase.expected[role]);
    });
  }

  it.each(roles)('the private helpers are not reachable through the API, as %s', async (role) => {
    const result = await clients[role].rpc('post_ledger', { p_account_id: alice.accountId, p_amount: 1_000_000, p_reason: 'grant', p_reference: null });
    expect(result.error?.code).toBe('PGRST202');
  });
});

/** Which columns of each table and view a role may read: 'all', 'none' or a list. Every relation of `public` must be here. */
type Readable = 'all' | 'none' | string[];
const prices = [
  'price_input', 'price_cached_input', 'price_cache_write', 'price_cache_write_1h',
  'price_output', 'price_reasoning', 'price_image', 'price_audio',
];
const publicModelColumns = ['id', 'provider', 'display_name', 'enabled', 'max_output_tokens', ...prices, 'created_at', 'long_context_threshold', 'long_context_price', 'price_web_search'];
const tokenColumns = ['input_tokens', 'cached_input_tokens', 'cache_write_tokens', 'cache_write_1h_tokens', 'output_tokens', 'reasoning_tokens', 'image_tokens', 'audio_tokens'];
const readableColumns: Record<string, { anon: Readable; authenticated: Readable; service_role: Readable }> = {
  // Not stripe_customer_id or flagged_reason: the operator's; owners read them through account_details (tests/supabase/organisations.test.ts).
  accounts: {
    anon: 'none',
    authenticated: ['id', 'user_id', 'balance', 'held', 'credit_limit', 'low_balance_threshold', 'plan', 'balance_state', 'created_at', 'updated_at', 'name'],
    service_role: 'all',
  },
  api_keys: { anon: 'none', authenticated: 'all', service_role: 'all' },
  models: { anon: publicModelColumns, authenticated: publicModelColumns, service_role: 'all' },
  model_prices: { anon: 'all', authenticated: 'all', service_role: 'all' },
  credit_ledger: { anon: 'none', authenticated: 'all', service_role: 'all' },
  usage_events: {
    anon: 'none',
    // Not upstream_cost, rates (they hold the cost rates) or upstream_model.
    authenticated: [
      'request_id', 'account_id', 'api_key_id', 'model_id', 'provider', 'status', 'hold', 'max_input_tokens', 'max_output_tokens',
      'choices', 'output_capped', ...tokenColumns, 'usage_source', 'amount', 'charged', 'error', 'created_at', 'settled_at', 'hold_expired_at', 'web_searches', 'price_multiplier_bps',
    ],
    service_role: 'all',
  },
  usage_daily: { anon: 'none', authenticated: ['account_id', 'model_id', 'day', 'requests', ...tokenColumns, 'amount', 'charged'], service_role: 'all' },
  credit_packs: { anon: 'none', authenticated: 'all', service_role: 'all' },
  plans: { anon: 'none', authenticated: 'all', service_role: 'all' },
  // Not the outbox's delivery, dedupe and resolution columns: the operator's (tests/supabase/internal-columns.test.ts).
  alerts: { anon: 'none', authenticated: ['id', 'account_id', 'kind', 'message', 'details', 'created_at'], service_role: 'all' },
  // Not problem or uncollected: the operator's.
  stripe_payments: {
    anon: 'none',
    authenticated: [
      'id', 'checkout_session_id', 'payment_intent_id', 'account_id', 'credit_pack_id', 'amount_total', 'currency', 'credits', 'status',
      'refunded_amount', 'disputed_amount', 'debited', 'created_at', 'updated_at', 'quantity', 'amount_subtotal', 'amount_discount', 'amount_tax', 'invoice_id',
    ],
    service_role: 'all',
  },
  // Not customer_id (as accounts.stripe_customer_id) or problem: the operator's.
  stripe_invoices: {
    anon: 'none',
    authenticated: ['id', 'subscription_id', 'price_id', 'account_id', 'plan_id', 'amount_paid', 'credits', 'status', 'created_at'],
    service_role: 'all',
  },
  stripe_events: { anon: 'none', authenticated: 'none', service_role: 'all' },
  billing_settings: { anon: 'none', authenticated: 'none', service_role: 'all' },
  cancelled_requests: { anon: 'none', authenticated: 'none', service_role: 'all' },
  // Which id the upstream is sent is the operator's routing.
  model_aliases: { anon: ['alias', 'model_id', 'created_at'], authenticated: ['alias', 'model_id', 'created_at'], service_role: 'all' },
  stored_responses: { anon: 'none', authenticated: 'none', service_role: 'all' },
  margin_rules: { anon: 'none', authenticated: 'none', service_role: 'all' },
  price_versions: { anon: 'none', authenticated: 'none', service_role: 'all' },
  // Every column, but rows only for operators (RLS); written by nobody (tests/supabase/operator.test.ts).
  audit_log: { anon: 'none', authenticated: 'all', service_role: 'all' },
  // Own rows (RLS); codes themselves are the operator's (redeemed through redeem_code).
  credit_grants: { anon: 'none', authenticated: 'all', service_role: 'all' },
  code_redemptions: { anon: 'none', authenticated: 'all', service_role: 'all' },
  redemption_codes: { anon: 'none', authenticated: 'none', service_role: 'all' },
  // Owners see their members, members their own membership (tests/supabase/organisations.test.ts).
  account_members: { anon: 'none', authenticated: 'all', service_role: 'all' },
  // Owners see their organisations' pending invitations; invitees theirs through my_invitations().
  member_invitations: { anon: 'none', authenticated: 'all', service_role: 'all' },
};

describe('column grants: what each role may read, column by column', () => {
  let relations: Map<string, string[]>;
  const expectedColumns = (relation: string, role: keyof (typeof readableColumns)[string]) => {
    const readable = readableColumns[relation]![role];
    return readable === 'all' ? relations.get(relation)! : readable === 'none' ? [] : readable;
  };

  beforeAll(async () => {
    const { rows } = await admin().query<{ relation: string; columns: string[] }>(`
      select c.relname as relation, array_agg(a.attname::text order by a.attnum) as columns
        from pg_catalog.pg_class c
        join pg_catalog.pg_namespace n on n.oid = c.relnamespace
        join pg_catalog.pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
       where n.nspname = 'public' and c.relkind in ('r', 'v', 'm', 'p')
       group by c.relname`);
    relations = new Map(rows.map((row) => [row.relation, row.columns]));
  });

  it('every table and view of public is in this matrix', () => {
    expect([...relations.keys()].sort()).toEqual(Object.keys(readableColumns).sort());
  });

  it.each(['anon', 'authenticated', 'service_role'] as const)('the grants match the matrix for %s', async (role) => {
    for (const relation of Object.keys(readableColumns)) {
      const { rows } = await admin().query<{ column: string }>(
        `select a.attname::text as column
           from pg_catalog.pg_attribute a
          where a.attrelid = ('public.' || quote_ident($1))::regclass and a.attnum > 0 and not a.attisdropped
            and has_column_privilege($2, a.attrelid, a.attnum, 'SELECT')
          order by a.attnum`,
        [relation, role],
      );
      expect({ relation, columns: rows.map((row) => row.column).sort() }).toEqual({ relation, columns: [...expectedColumns(relation, role)].sort() });
    }
  });

  it.each([['anon', 'anon'], ['alice', 'authenticated'], ['service', 'service_role']] as const)(
    'through PostgREST, %s can select exactly those columns',
    async (client, role) => {
      for (const relation of Object.keys(readableColumns)) {
        const expected = new Set(expectedColumns(relation, role));
        const outcomes = await Promise.all(
          relations.get(relation)!.map(async (column) => {
            const result = await clients[client].from(relation).select(column).limit(1);
            return { column, readable: result.error === null, code: result.error?.code ?? null };
          }),
        );
        for (const outcome of outcomes) {
          expect({ relation, column: outcome.column, readable: outcome.readable }).toEqual({ relation, column: outcome.column, readable: expected.has(outcome.column) });
          if (!outcome.readable) expect(outcome.code).toBe('42501');
        }
      }
    },
  );

  it('a user cannot read their account\'s internal columns, even by asking for them by name', async () => {
    for (const columns of ['stripe_customer_id', 'flagged_reason', 'id,flagged_reason', '*']) {
      const result = await alice.client.from('accounts').select(columns).eq('id', alice.accountId);
      expect({ columns, code: result.error?.code }).toEqual({ columns, code: '42501' });
    }
  });

  it('a user cannot read what their requests cost upstream, even by asking for it by name', async () => {
    for (const columns of ['upstream_cost', 'rates', 'upstream_model', 'request_id,upstream_cost', '*']) {
      const result = await alice.client.from('usage_events').select(columns).eq('account_id', alice.accountId);
      expect({ columns, code: result.error?.code }).toEqual({ columns, code: '42501' });
    }
    for (const columns of ['upstream_cost', 'margin', '*']) {
      const result = await alice.client.from('usage_daily').select(columns).eq('account_id', alice.accountId);
      expect({ columns, code: result.error?.code }).toEqual({ columns, code: '42501' });
    }
  });
});

describe('a project that grants the API roles everything by itself', () => {
  /** Every privilege anon and authenticated hold in public: on relations, columns, sequences and functions. */
  const clientPrivileges = `
    select 'relation' as kind, c.relname as name, a.grantee::regrole::text as role, a.privilege_type as privilege
      from pg_class c join pg_namespace n on n.oid = c.relnamespace, aclexplode(c.relacl) a
     where n.nspname = 'public' and a.grantee in ('anon'::regrole, 'authenticated'::regrole)
    union all
    select 'column', c.relname || '.' || att.attname, a.grantee::regrole::text, a.privilege_type
      from pg_attribute att join pg_class c on c.oid = att.attrelid join pg_namespace n on n.oid = c.relnamespace, aclexplode(att.attacl) a
     where n.nspname = 'public' and a.grantee in ('anon'::regrole, 'authenticated'::regrole)
    union all
    select 'function', p.oid::regprocedure::text, case when a.grantee = 0 then 'public' else a.grantee::regrole::text end, a.privilege_type
      from pg_proc p join pg_namespace n on n.oid = p.pronamespace, aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
     where n.nspname = 'public' and (a.grantee in ('anon'::regrole, 'authenticated'::regrole) or a.grantee = 0)
    order by 1, 2, 3, 4`;

  it('private.grant_client_privileges() takes the grants back to exactly what the migrations grant', async () => {
    const client = await admin().connect();
    try {
      const { rows: intended } = await client.query(clientPrivileges);
      expect(intended.length).toBeGreaterThan(0);
      await client.query('begin');
      // What older Supabase projects (or "default privileges for new entities") grant on every object in public.
      await client.query('set local role postgres');
      await client.query('grant all on all tables in schema public to anon, authenticated');
      await client.query('grant all on all sequences in schema public to anon, authenticated');
      await client.query('grant execute on all functions in schema public to anon, authenticated');
      const asAlice = async (statement: string) => {
        await client.query('savepoint attempt');
        try {
          await client.query('set local role authenticated');
          await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify({ sub: alice.userId, role: 'authenticated' })]);
          const result = await client.query(statement);
          return result.rowCount;
        } catch (error) {
          return (error as { code?: string }).code;
        } finally {
          await client.query('rollback to savepoint attempt');
        }
      };
      // Row-level security alone let a customer write their own balance, and read what their requests cost.
      expect(await asAlice(`update public.accounts set balance = 1000000000000, credit_limit = 1000000000000 where id = '${alice.accountId}'`)).toBe(1);
      expect(await asAlice(`select upstream_cost from public.usage_events`)).toEqual(expect.any(Number));
      await client.query('select private.grant_client_privileges()');
      expect(await asAlice(`update public.accounts set balance = 1000000000000 where id = '${alice.accountId}'`)).toBe('42501');
      expect(await asAlice(`select upstream_cost from public.usage_events`)).toBe('42501');
      expect(await asAlice(`update public.accounts set low_balance_threshold = 5 where id = '${alice.accountId}'`)).toBe(1);
      // A migration that grants the API roles something new redefines the function whole, or this fails.
      const { rows: after } = await client.query(clientPrivileges);
      expect(after).toEqual(intended);
    } finally {
      await client.query('rollback').catch(() => {});
      client.release();
    }
  });

  it('new objects in public are granted to no API role by default', async () => {
    const { rows } = await admin().query(`
      select d.defaclobjtype as type, a.grantee::regrole::text as role, a.privilege_type as privilege
        from pg_default_acl d join pg_namespace n on n.oid = d.defaclnamespace, aclexplode(d.defaclacl) a
       where n.nspname = 'public' and d.defaclrole = 'postgres'::regrole and a.grantee in ('anon'::regrole, 'authenticated'::regrole)`);
    expect(rows).toEqual([]);
  });
});

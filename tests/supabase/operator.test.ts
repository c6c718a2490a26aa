import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';
import { admin, createCustomer, createModel, ledger, stack, type Customer } from '../support/supabase.ts';

// The operator's functions: an operator is a user whose session carries
// app_metadata.role = admin (only the service role can set it); every check is
// in SQL, and every action lands in the append-only audit log.

let operator: SupabaseClient;
let operatorEmail: string;
let customer: Customer;

beforeAll(async () => {
  operatorEmail = `operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
  const operatorId = await createAuthUser(stack.authAdminDatabaseUrl, operatorEmail);
  const token = signUserJwt(operatorId, stack.jwtSecret, { email: operatorEmail, appMetadata: { provider: 'email', role: 'admin' } });
  operator = createClient(stack.supabaseUrl, stack.anonKey, {
    auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
    realtime: { transport: WebSocket as never },
    accessToken: async () => token,
  });
  customer = await createCustomer({ balance: 1_000_000 });
});

async function call<T>(client: SupabaseClient, name: string, args: Record<string, unknown> = {}): Promise<T> {
  const { data, error } = await client.rpc(name, args);
  if (error) throw Object.assign(new Error(error.message), { code: error.code });
  return data as T;
}

async function auditRows(action: string, subject: string) {
  const { rows } = await admin().query('select actor_email, action, subject, details from public.audit_log where action = $1 and subject = $2 order by id', [action, subject]);
  return rows;
}

describe('who is an operator', () => {
  it('is decided in SQL from the session: a customer is refused every operator function and reads no audit row', async () => {
    expect(await call(operator, 'is_operator')).toBe(true);
    expect(await call(customer.client, 'is_operator')).toBe(false);
    await expect(call(customer.client, 'operator_customers')).rejects.toMatchObject({ code: '42501' });
    await expect(call(customer.client, 'operator_grant_credits', { p_account_id: customer.accountId, p_amount: 1_000_000, p_note: 'me' })).rejects.toMatchObject({ code: '42501' });
    await call(operator, 'operator_reconcile');
    const { data } = await customer.client.from('audit_log').select('id');
    expect(data).toEqual([]);
    const { data: seen } = await operator.from('audit_log').select('id,action').eq('action', 'reconcile_books');
    expect(seen!.length).toBeGreaterThan(0);
  });
});

describe('the operator reads', () => {
  it('models with cost, price, margin and aliases; customers with balance and state; payments and alerts', async () => {
    const model = await createModel({ input: 1_200_000, output: 6_000_000 }, { cost: { input: 1_000_000, output: 5_000_000 } });
    await admin().query(`insert into public.model_aliases (alias, model_id) values ($1, $2)`, [`${model}-latest`, model]);
    const models = await call<Array<Record<string, unknown>>>(operator, 'operator_models');
    expect(models.find((entry) => entry.id === model)).toMatchObject({
      cost: { input: 1_000_000, output: 5_000_000 },
      price: { input: 1_200_000, output: 6_000_000 },
      margin_bps: { input: 2000, output: 2000 },
      aliases: [`${model}-latest`],
    });
    const customers = await call<Array<Record<string, unknown>>>(operator, 'operator_customers', { p_search: customer.accountId });
    expect(customers).toEqual([expect.objectContaining({ id: customer.accountId, email: `${customer.userId}@example.test`, balance: 1_000_000, held: 0, available: 1_000_000, balance_state: 'ok' })]);
    expect(Array.isArray(await call(operator, 'operator_payments'))).toBe(true);
    expect(Array.isArray(await call(operator, 'operator_alerts'))).toBe(true);
  });

  it('revenue, upstream cost and margin by day and model, from settled requests', async () => {
    const model = await createModel({ input: 2_000_000, output: 8_000_000 }, { cost: { input: 1_000_000, output: 4_000_000 } });
    const buyer = await createCustomer({ balance: 10_000_000 });
    for (let index = 0; index < 3; index++) {
      const requestId = crypto.randomUUID();
      await ledger.authorizeRequest({ requestId, keyHash: buyer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 });
      await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 1000, output: 500 }, usageSource: 'provider' });
    }
    const revenue = await call<Array<Record<string, unknown>>>(operator, 'operator_revenue', { p_days: 1 });
    // Each: 1000 × $2/M + 500 × $8/M = 6000 micro-dollars charged; it cost 1000 × $1/M + 500 × $4/M = 3000.
    expect(revenue.find((row) => row.model_id === model)).toMatchObject({ requests: 3, revenue: 18_000, upstream_cost: 9_000, margin: 9_000 });
  });
});

describe('the operator acts, and the audit log says so', () => {
  it('changes a price: the model is the operator\'s now, a price version is in force, a price below cost raises an alert', async () => {
    const model = await createModel({ input: 2_000_000, output: 8_000_000 }, { cost: { input: 1_000_000, output: 4_000_000 } });
    await expect(call(operator, 'operator_update_model', { p_model_id: model, p_changes: { price_output: 1.5 } })).rejects.toMatchObject({ code: '22023' });
    await expect(call(operator, 'operator_update_model', { p_model_id: model, p_changes: { upstream_model: 'elsewhere' } })).rejects.toMatchObject({ code: '22023' });
    const changed = await call<Record<string, unknown>>(operator, 'operator_update_model', { p_model_id: model, p_changes: { price_output: 3_000_000 } });
    expect(changed).toMatchObject({ price: { input: 2_000_000, output: 3_000_000 } });
    const { rows: [row] } = await admin().query('select price_output::int, price_source, price_version_id from public.models where id = $1', [model]);
    expect(row).toMatchObject({ price_output: 3_000_000, price_source: 'manual' });
    const { rows: [version] } = await admin().query('select source, prices, applied_at from public.price_versions where id = $1', [row.price_version_id]);
    expect(version).toMatchObject({ source: 'operator', prices: { input: 2_000_000, output: 3_000_000 } });
    expect(version.applied_at).not.toBeNull();
    const { rows: alerts } = await admin().query(`select kind from public.alerts where dedupe_key = $1 and resolved_at is null`, [`price_below_cost:${model}`]);
    expect(alerts).toEqual([{ kind: 'price_below_cost' }]);

    await call(operator, 'operator_update_model', { p_model_id: model, p_changes: { enabled: false } });
    const audit = await auditRows('update_model', model);
    expect(audit).toEqual([
      expect.objectContaining({ actor_email: operatorEmail, details: expect.objectContaining({ changes: { price_output: 3_000_000 }, before: expect.objectContaining({ enabled: true }) }) }),
      expect.objectContaining({ actor_email: operatorEmail, details: expect.objectContaining({ changes: { enabled: false } }) }),
    ]);
  });

  it('grants and debits credits through grant_credits, with a note, and refuses without one', async () => {
    const account = await createCustomer({ balance: 1_000_000 });
    await expect(call(operator, 'operator_grant_credits', { p_account_id: account.accountId, p_amount: 5_000_000, p_note: ' ' })).rejects.toMatchObject({ code: '22023' });
    expect(await auditRows('grant_credits', account.accountId)).toEqual([]);
    await call(operator, 'operator_grant_credits', { p_account_id: account.accountId, p_amount: 5_000_000, p_note: 'goodwill' });
    await call(operator, 'operator_grant_credits', { p_account_id: account.accountId, p_amount: -2_000_000, p_note: 'correction' });
    const { rows: [books] } = await admin().query(
      `select a.balance::int, (select sum(amount)::int from public.credit_ledger l where l.account_id = a.id) as ledger from public.accounts a where a.id = $1`,
      [account.accountId],
    );
    expect(books).toEqual({ balance: 4_000_000, ledger: 4_000_000 });
    expect(await auditRows('grant_credits', account.accountId)).toEqual([expect.objectContaining({ details: expect.objectContaining({ amount: 5_000_000, note: 'goodwill' }) })]);
    // The note and who wrote it are the operator's: the customer's own ledger says only what happened.
    const { data: ledger, error } = await account.client.from('credit_ledger').select('amount, reason, note').order('id');
    expect(error).toBeNull();
    expect(ledger!.slice(-2)).toEqual([
      { amount: 5_000_000, reason: 'grant', note: 'credits granted by the operator' },
      { amount: -2_000_000, reason: 'adjustment', note: 'credits debited by the operator' },
    ]);
    expect(await auditRows('debit_credits', account.accountId)).toEqual([expect.objectContaining({ details: expect.objectContaining({ amount: -2_000_000, note: 'correction' }) })]);
    // The ledger rows themselves are audited too, with the operator as their actor.
    expect(await auditRows('ledger_grant', account.accountId)).toEqual(expect.arrayContaining([expect.objectContaining({ actor_email: operatorEmail, details: expect.objectContaining({ amount: 5_000_000 }) })]));
  });

  it('edits costs, points and removes aliases, each audited', async () => {
    const model = await createModel({ input: 2_000_000, output: 8_000_000 }, { cost: { input: 1_000_000, output: 4_000_000 } });
    await call(operator, 'operator_update_model', { p_model_id: model, p_changes: { cost_output: 5_000_000 } });
    const { rows: [row] } = await admin().query('select cost_output::int, price_source from public.models where id = $1', [model]);
    expect(row).toEqual({ cost_output: 5_000_000, price_source: 'manual' });
    await call(operator, 'operator_set_alias', { p_alias: `${model}-v2`, p_model_id: model });
    expect((await admin().query('select model_id from public.model_aliases where alias = $1', [`${model}-v2`])).rows).toEqual([{ model_id: model }]);
    await expect(call(operator, 'operator_set_alias', { p_alias: 'bad alias!', p_model_id: model })).rejects.toMatchObject({ code: '22023' });
    await call(operator, 'operator_set_alias', { p_alias: `${model}-v2`, p_model_id: null });
    expect((await admin().query('select 1 from public.model_aliases where alias = $1', [`${model}-v2`])).rows).toEqual([]);
    expect((await auditRows('set_alias', `${model}-v2`)).map((entry) => entry.details.model)).toEqual([model, null]);
    await expect(call(customer.client, 'operator_set_alias', { p_alias: 'x-1', p_model_id: model })).rejects.toMatchObject({ code: '42501' });
  });

  it('resolves an alert; nobody can change the audit log, the operator included, nor its owner', async () => {
    const { rows: [alert] } = await admin().query(`insert into public.alerts (kind, message) values ('operator_test', 'x') returning id`);
    await call(operator, 'operator_resolve_alert', { p_alert_id: alert.id });
    expect(await auditRows('resolve_alert', String(alert.id))).toHaveLength(1);

    const { error: updateError } = await operator.from('audit_log').update({ action: 'x' }).eq('subject', String(alert.id)).select();
    expect(updateError?.code).toBe('42501');
    const { error: deleteError } = await operator.from('audit_log').delete().eq('subject', String(alert.id)).select();
    expect(deleteError?.code).toBe('42501');
    const { error: insertError } = await operator.from('audit_log').insert({ action: 'forged' });
    expect(insertError?.code).toBe('42501');
    await expect(admin().query(`update public.audit_log set action = 'x' where subject = $1`, [String(alert.id)])).rejects.toThrow(/append-only/);
    await expect(admin().query(`delete from public.audit_log where subject = $1`, [String(alert.id)])).rejects.toThrow(/append-only/);
    await expect(admin().query('truncate public.audit_log')).rejects.toThrow(/append-only/);
    expect(await auditRows('resolve_alert', String(alert.id))).toHaveLength(1);
  });
});

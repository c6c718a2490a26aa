import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger, serviceClient, type Customer } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;
let model: string;

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url });
  // 1 micro-unit per token: "user" + "Hi" + framing = 12 input, max_tokens 10 → a hold of 22; the fixture bills 19 + 9 = 28.
  model = await createModel({ input: 1_000_000, output: 1_000_000 }, { upstreamModel: 'chat-basic' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const chat = (customer: Customer, headers: Record<string, string> = {}, body: Record<string, unknown> = {}) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json', ...headers },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10, ...body }),
  });

async function books(accountId: string) {
  const { rows: [row] } = await admin().query(
    `select a.balance, a.held, (select count(*) from public.credit_ledger l where l.account_id = a.id)::int as ledger_rows
       from public.accounts a where a.id = $1`,
    [accountId],
  );
  return row;
}

async function withPolicy(policy: Parameters<ReturnType<typeof createApiKeyManager>['updateApiKeyPolicy']>[1]) {
  const customer = await createCustomer({ balance: 10_000_000 });
  await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, policy);
  return customer;
}

async function expectRefused(response: Response, status: number, code: string, before: unknown, accountId: string) {
  expect(response.status).toBe(status);
  expect(await response.json()).toMatchObject({ error: { code, message: expect.any(String) } });
  await gateway.settled();
  expect(await books(accountId)).toEqual(before);
}

describe('key policies, enforced in authorize_request', () => {
  it('a total spend cap counts what was spent and what is in flight', async () => {
    const customer = await withPolicy({ spend_limit: 60 });
    expect((await chat(customer)).status).toBe(200); // hold 22 ≤ 60, charged 28
    await gateway.settled();
    expect((await chat(customer)).status).toBe(200); // 28 + 22 ≤ 60, charged 28: 56 spent
    await gateway.settled();
    const before = await books(customer.accountId);
    await expectRefused(await chat(customer), 403, 'key_spend_limit_reached', before, customer.accountId);
  });

  it('a monthly spend cap counts this calendar month only', async () => {
    const customer = await withPolicy({ monthly_spend_limit: 50 });
    await admin().query(`update public.api_keys set month_spent = 40, spent_month = date_trunc('month', now() at time zone 'UTC')::date where id = $1`, [customer.apiKeyId]);
    const before = await books(customer.accountId);
    await expectRefused(await chat(customer), 403, 'key_monthly_limit_reached', before, customer.accountId);
    // Last month's spending does not count.
    await admin().query(`update public.api_keys set spent_month = (date_trunc('month', now() at time zone 'UTC') - interval '1 month')::date where id = $1`, [customer.apiKeyId]);
    expect((await chat(customer)).status).toBe(200);
    await gateway.settled();
    const { rows: [key] } = await admin().query('select month_spent, spent_month = date_trunc($2, now() at time zone $3)::date as this_month from public.api_keys where id = $1', [customer.apiKeyId, 'month', 'UTC']);
    expect(key).toEqual({ month_spent: '28', this_month: true });
  });

  it('a maximum of concurrent requests counts the holds in flight', async () => {
    const upstreamModel = `slow-policy-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-basic', headerDelayMs: 500 });
    const slow = await createModel({ input: 1_000_000, output: 1_000_000 }, { upstreamModel });
    const customer = await withPolicy({ max_concurrent: 1 });
    const first = chat(customer, {}, { model: slow });
    await expect.poll(() => fake.requestsFor(upstreamModel).length).toBe(1);
    const before = await books(customer.accountId);
    const second = await chat(customer, {}, { model: slow });
    expect(second.status).toBe(429);
    expect(await second.json()).toMatchObject({ error: { code: 'too_many_concurrent_requests', type: 'rate_limit_error' } });
    expect((await books(customer.accountId)).ledger_rows).toBe(before.ledger_rows);
    expect((await first).status).toBe(200);
    await gateway.settled();
    expect((await chat(customer, {}, { model: slow })).status).toBe(200);
    await gateway.settled();
  });

  it('a model allowlist refuses other models, in each caller\'s error shape', async () => {
    const claude = await createModel({ input: 1, output: 1 }, { provider: 'anthropic', upstreamModel: 'messages-cache' });
    const gemini = await createModel({ input: 1, output: 1 }, { provider: 'google', upstreamModel: 'generate-cached-thoughts' });
    const customer = await withPolicy({ allowed_models: [model] });
    expect((await chat(customer)).status).toBe(200);
    await gateway.settled();
    const before = await books(customer.accountId);
    await expectRefused(await chat(customer, {}, { model: claude }), 403, 'model_not_allowed', before, customer.accountId);
    const anthropic = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model: claude, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(anthropic.status).toBe(403);
    expect(await anthropic.json()).toMatchObject({ type: 'error', error: { type: 'permission_error', code: 'model_not_allowed' } });
    const google = await fetch(`${gateway.url}/v1beta/models/${gemini}:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }] }),
    });
    expect(google.status).toBe(403);
    expect(await google.json()).toMatchObject({ error: { code: 403, status: 'PERMISSION_DENIED', reason: 'model_not_allowed' } });
    expect(await books(customer.accountId)).toEqual(before);
  });

  it('an IP allowlist (CIDR) refuses other addresses', async () => {
    const customer = await withPolicy({ allowed_ips: ['203.0.113.0/24', '2001:db8::/32'] });
    expect((await chat(customer, { 'x-forwarded-for': '203.0.113.7, 10.0.0.1' })).status).toBe(200);
    expect((await chat(customer, { 'x-forwarded-for': '2001:db8::42' })).status).toBe(200);
    await gateway.settled();
    const before = await books(customer.accountId);
    await expectRefused(await chat(customer, { 'x-forwarded-for': '198.51.100.1' }), 403, 'ip_not_allowed', before, customer.accountId);
    await expectRefused(await chat(customer), 403, 'ip_not_allowed', before, customer.accountId);
  });

  it('users set policies on their own keys only, and bad policies are refused', async () => {
    const alice = await createCustomer();
    const bob = await createCustomer();
    const keys = createApiKeyManager(alice.client);
    const created = await keys.createApiKey('limited', undefined, { max_concurrent: 2, requests_per_minute: 30, allowed_models: ['gpt-4o-mini'] });
    expect(created.policy).toMatchObject({ max_concurrent: 2, requests_per_minute: 30, allowed_models: ['gpt-4o-mini'], spend_limit: null });
    expect((await keys.updateApiKeyPolicy(created.id, { max_concurrent: null })).policy).toMatchObject({ max_concurrent: null, requests_per_minute: 30 });
    await expect(keys.updateApiKeyPolicy(created.id, { spend_limit: -1 })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.updateApiKeyPolicy(created.id, { allowed_ips: ['not-a-network'] })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.updateApiKeyPolicy(created.id, { max_concurrent: 0 })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.updateApiKeyPolicy(created.id, { colour: 'blue' } as never)).rejects.toMatchObject({ code: '22023' });
    // An empty list, or a null among the names, would leave the key unrestricted: refused, the key unchanged.
    await expect(keys.updateApiKeyPolicy(created.id, { allowed_models: [] })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.updateApiKeyPolicy(created.id, { allowed_ips: [] })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.updateApiKeyPolicy(created.id, { allowed_models: ['gpt-4o-mini', null] } as never)).rejects.toMatchObject({ code: '22023' });
    await expect(keys.createApiKey('nothing', undefined, { allowed_models: [] })).rejects.toMatchObject({ code: '22023' });
    expect((await keys.updateApiKeyPolicy(created.id, {})).policy).toMatchObject({ allowed_models: ['gpt-4o-mini'] });
    // A key stored with a null among its names before the check came in is repaired by 20261129002700: run again here on one.
    await admin().query(`update public.api_keys set allowed_models = '{gpt-4o-mini,NULL}' where id = $1`, [created.id]);
    await admin().query(readFileSync(new URL('../../supabase/migrations/20261129002700_allow_lists_without_nulls.sql', import.meta.url), 'utf8'));
    const { rows: [repaired] } = await admin().query('select allowed_models from public.api_keys where id = $1', [created.id]);
    expect(repaired.allowed_models).toEqual(['gpt-4o-mini']);
    await expect(createApiKeyManager(bob.client).updateApiKeyPolicy(created.id, { spend_limit: 0 })).rejects.toMatchObject({ status: 404 });
  });
});

describe('caps hold at settlement too', () => {
  // 1 micro-unit per token; the worst case of 10 + 10 tokens is 20, and the upstream reports 410.
  const overrun = { input: 400, output: 10 };

  it('a usage that overruns its hold is charged no further than the key\'s spend caps, the rest shown as a shortfall', async () => {
    const bench = await createModel({ input: 1_000_000, output: 1_000_000 });
    for (const policy of [{ spend_limit: 30 }, { monthly_spend_limit: 30 }]) {
      const customer = await createCustomer({ balance: 10_000_000 });
      await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, policy);
      const requestId = crypto.randomUUID();
      expect(await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model: bench, maxInputTokens: 10, maxOutputTokens: 10 })).toMatchObject({ status: 'authorized', hold: 20 });
      expect(await ledger.settleRequest({ requestId, outcome: 'completed', usage: overrun, usageSource: 'provider' })).toMatchObject({ amount: 410, charged: 30 });
      const { rows: [key] } = await admin().query('select spent::int, month_spent::int from public.api_keys where id = $1', [customer.apiKeyId]);
      expect(key).toEqual({ spent: 30, month_spent: 30 });
    }
  });

  it('what other requests of the key hold counts, and the request is charged at least its hold', async () => {
    const bench = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { spend_limit: 45 });
    const [first, second] = [crypto.randomUUID(), crypto.randomUUID()];
    for (const requestId of [first, second]) {
      expect(await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model: bench, maxInputTokens: 10, maxOutputTokens: 10 })).toMatchObject({ status: 'authorized' });
    }
    // 45 less the other request's 20 in flight leaves 25 for this one.
    expect(await ledger.settleRequest({ requestId: first, outcome: 'completed', usage: overrun, usageSource: 'provider' })).toMatchObject({ charged: 25 });
    // Nothing is left beyond its own hold for the second: it pays its hold, never less.
    expect(await ledger.settleRequest({ requestId: second, outcome: 'completed', usage: overrun, usageSource: 'provider' })).toMatchObject({ charged: 20 });
  });

  it('a member\'s monthly budget, in one settlement and in a batch', async () => {
    const bench = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 10_000_000 });
    const member = await createCustomer();
    const { rows: [user] } = await admin().query('select email from auth.users where id = $1', [member.userId]);
    expect((await owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: user.email, p_role: 'member', p_monthly_budget: 50 })).error).toBeNull();
    // An invitation, which the member accepts (tests/supabase/organisations.test.ts).
    const { data: invitations } = await member.client.rpc('my_invitations');
    expect((await member.client.rpc('accept_invitation', { p_invitation_id: (invitations as Array<{ id: string }>)[0]!.id })).error).toBeNull();
    const created = await member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'work' });
    expect(created.error).toBeNull();
    const { key, id } = created.data as { key: string; id: string };
    const keyHash = await hashApiKey(key);
    const [alone, batched] = [crypto.randomUUID(), crypto.randomUUID()];
    for (const requestId of [alone, batched]) {
      expect(await ledger.authorizeRequest({ requestId, keyHash, model: bench, maxInputTokens: 10, maxOutputTokens: 10 })).toMatchObject({ status: 'authorized' });
    }
    expect(await ledger.settleRequest({ requestId: alone, outcome: 'completed', usage: overrun, usageSource: 'provider' })).toMatchObject({ charged: 30 });
    const [settled] = await ledger.settleRequests([{ requestId: batched, outcome: 'completed', usage: overrun, usageSource: 'provider' }]);
    expect(settled).toMatchObject({ ok: true, result: { charged: 20 } });
    const { rows: [row] } = await admin().query('select month_spent::int from public.api_keys where id = $1', [id]);
    expect(row.month_spent).toBe(50);
  });
});

describe('a key\'s rate limits stay within its plan', () => {
  const limitsOf = async (customer: Customer) => {
    const result = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 1, maxOutputTokens: 1 });
    if (result.status !== 'authorized') throw new Error(result.message);
    await ledger.settleRequest({ requestId: result.request_id, outcome: 'failed', usage: {} });
    return result.limits;
  };

  it('a user cannot raise a key past the plan (free: 60 requests, 1,000,000 tokens a minute); lowering is fine', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const keys = createApiKeyManager(customer.client);
    await expect(keys.updateApiKeyPolicy(customer.apiKeyId, { requests_per_minute: 1_000_000 })).rejects.toMatchObject({
      code: '22023', message: expect.stringContaining("above the Free plan's limit of 60"),
    });
    await expect(keys.updateApiKeyPolicy(customer.apiKeyId, { tokens_per_minute: 1_000_001 })).rejects.toMatchObject({ code: '22023' });
    await expect(keys.createApiKey('greedy', undefined, { requests_per_minute: 61 })).rejects.toMatchObject({ code: '22023' });
    expect(await limitsOf(customer)).toEqual({ requests_per_minute: 60, tokens_per_minute: 1_000_000 });
    await keys.updateApiKeyPolicy(customer.apiKeyId, { requests_per_minute: 10 });
    expect(await limitsOf(customer)).toEqual({ requests_per_minute: 10, tokens_per_minute: 1_000_000 });
  });

  it('a plan that goes down takes its keys down; only the operator grants an exception', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const pro = `pro${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.plans (id, name, requests_per_minute, tokens_per_minute) values ($1, 'Pro', 600, 5000000)`, [pro]);
    await admin().query('update public.accounts set plan = $2 where id = $1', [customer.accountId, pro]);
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { requests_per_minute: 500 });
    expect(await limitsOf(customer)).toEqual({ requests_per_minute: 500, tokens_per_minute: 5_000_000 });
    // The subscription ends: back on the free plan, the key is held to its limits.
    await admin().query(`update public.accounts set plan = 'free' where id = $1`, [customer.accountId]);
    expect(await limitsOf(customer)).toEqual({ requests_per_minute: 60, tokens_per_minute: 1_000_000 });
    // The operator's exception.
    const { data, error } = await serviceClient().rpc('set_api_key_limits', { p_key_id: customer.apiKeyId, p_policy: { requests_per_minute: 5000 } });
    expect(error).toBeNull();
    expect(data).toMatchObject({ limits_exception: true, policy: { requests_per_minute: 5000 } });
    expect(await limitsOf(customer)).toEqual({ requests_per_minute: 5000, tokens_per_minute: 1_000_000 });
    // Users cannot make one.
    const refused = await customer.client.rpc('set_api_key_limits', { p_key_id: customer.apiKeyId, p_policy: { requests_per_minute: 9999 } });
    expect(refused.error?.code).toBe('42501');
  });
});

import { describe, expect, it } from 'vitest';
import { createApiKeyManager, LedgerError, settleEachIfRefused, type BatchSettlement, type SettleRequestInput } from '../../../lib/billing/ledger.ts';
import { hashApiKey } from '../../../lib/billing/hash-api-key.ts';
import { admin, createCustomer, createModel, ledger, serviceClient } from '../../support/supabase.ts';

async function rowCounts(accountId: string) {
  const { rows: [counts] } = await admin().query(
    `select (select count(*) from public.usage_events where account_id = $1)::int as usage_events,
            (select count(*) from public.credit_ledger where account_id = $1)::int as ledger_rows,
            (select held from public.accounts where id = $1) as held,
            (select balance from public.accounts where id = $1) as balance`,
    [accountId],
  );
  return counts;
}

describe('authorizeRequest', () => {
  it('returns the account, key policy, model and hold in one call', async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { maxOutputTokens: 2000 });
    const customer = await createCustomer({ balance: 50_000 });
    const result = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 3000 });
    // No output cap given: the model's own 2000 is held. 3000 × 1 + 2000 × 4 = 11,000.
    expect(result).toMatchObject({
      status: 'authorized',
      account_id: customer.accountId,
      api_key_id: customer.apiKeyId,
      model: { id: model, provider: 'openai', upstream_model: model },
      hold: 11_000,
      max_output_tokens: 2000,
      balance: 50_000,
      held: 11_000,
      available: 39_000,
      key: { requests_per_minute: null, max_concurrent: null },
    });
  });

  it.each([
    ['an unknown key', 'invalid_api_key'],
    ['a revoked key', 'api_key_revoked'],
    ['an expired key', 'api_key_expired'],
    ['an unknown model', 'model_not_found'],
    ['a disabled model', 'model_not_found'],
    ['an unpriced model', 'model_not_priced'],
    ['an output cap above the model limit', 'invalid_max_tokens'],
    ['a zero output cap', 'invalid_max_tokens'],
    ['negative input tokens', 'invalid_request'],
    ['an empty request id', 'invalid_request'],
    ['more than the balance affords', 'insufficient_credits'],
  ])('refuses %s with %s and writes nothing', async (situation, code) => {
    let model = await createModel({ input: 1_000_000, output: 1_000_000 }, { maxOutputTokens: 100 });
    const customer = await createCustomer({ balance: 1_000 });
    let keyHash = customer.keyHash;
    let requestId: string = crypto.randomUUID();
    let maxInputTokens = 10;
    let maxOutputTokens: number | undefined = 10;

    if (situation === 'an unknown key') keyHash = await hashApiKey('tg_not_a_key');
    if (situation === 'a revoked key') await createApiKeyManager(customer.client).revokeApiKey(customer.apiKeyId);
    if (situation === 'an expired key') {
      await admin().query(`update public.api_keys set expires_at = now() - interval '1 second' where id = $1`, [customer.apiKeyId]);
    }
    if (situation === 'an unknown model') model = 'no-such-model';
    if (situation === 'a disabled model') await admin().query('update public.models set enabled = false where id = $1', [model]);
    if (situation === 'an unpriced model') await admin().query('update public.models set price_output = null where id = $1', [model]);
    if (situation === 'an output cap above the model limit') maxOutputTokens = 101;
    if (situation === 'a zero output cap') maxOutputTokens = 0;
    if (situation === 'negative input tokens') maxInputTokens = -1;
    if (situation === 'an empty request id') requestId = '';
    if (situation === 'more than the balance affords') maxInputTokens = 995; // 995 + 10 = 1005 > 1000

    const before = await rowCounts(customer.accountId);
    const result = await ledger.authorizeRequest({ requestId, keyHash, model, maxInputTokens, maxOutputTokens });
    expect(result).toMatchObject({ status: 'refused', code });
    expect(result.status === 'refused' && result.message.length).toBeGreaterThan(10);
    expect(await rowCounts(customer.accountId)).toEqual(before);
  });

  it('tells how much is available when credits are insufficient', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 700 });
    const first = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 200, maxOutputTokens: 200 });
    expect(first.status).toBe('authorized');
    const second = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 200, maxOutputTokens: 200 });
    expect(second).toMatchObject({ status: 'refused', code: 'insufficient_credits', required: 400, available: 300, account_id: customer.accountId });
  });

  it('lets the account use its credit limit and no more', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 100 });
    await serviceClient().from('accounts').update({ credit_limit: 400 }).eq('id', customer.accountId).throwOnError();
    const fits = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 250, maxOutputTokens: 250 });
    expect(fits).toMatchObject({ status: 'authorized', available: 0 });
    const over = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 1, maxOutputTokens: 1 });
    expect(over).toMatchObject({ status: 'refused', code: 'insufficient_credits', available: 0 });
  });

  it('enforces the key\'s model and address allowlists', async () => {
    const allowed = await createModel({ input: 1, output: 1 });
    const other = await createModel({ input: 1, output: 1 });
    const customer = await createCustomer({ balance: 10_000 });
    await admin().query(`update public.api_keys set allowed_models = $2, allowed_ips = '{10.1.0.0/16}' where id = $1`, [customer.apiKeyId, [allowed]]);
    const call = (model: string, clientIp?: string) =>
      ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 1, maxOutputTokens: 1, clientIp });
    expect(await call(allowed, '10.1.2.3')).toMatchObject({ status: 'authorized' });
    expect(await call(other, '10.1.2.3')).toMatchObject({ status: 'refused', code: 'model_not_allowed' });
    expect(await call(allowed, '10.2.0.1')).toMatchObject({ status: 'refused', code: 'ip_not_allowed' });
    expect(await call(allowed)).toMatchObject({ status: 'refused', code: 'ip_not_allowed' });
  });
});

describe('settleRequest', () => {
  async function heldRequest(balance = 100_000) {
    const model = await createModel({ input: 1_000_000, output: 2_000_000 });
    const customer = await createCustomer({ balance });
    const requestId = crypto.randomUUID();
    const authorization = await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 });
    expect(authorization).toMatchObject({ status: 'authorized', hold: 3000 });
    return { customer, requestId };
  }

  it('charges an aborted request for what was delivered, with its usage source, and releases the rest', async () => {
    const { customer, requestId } = await heldRequest();
    const settlement = await ledger.settleRequest({ requestId, outcome: 'aborted', usage: { input: 500, output: 40 }, usageSource: 'tokenizer' });
    expect(settlement).toMatchObject({ status: 'aborted', amount: 580, charged: 580, usage_source: 'tokenizer', balance: 99_420, held: 0 });
    const { rows: [key] } = await admin().query('select spent, last_used_at from public.api_keys where id = $1', [customer.apiKeyId]);
    expect(key.spent).toBe('580');
    expect(key.last_used_at).not.toBeNull();
  });

  it('charges nothing for a failed request and writes no ledger row', async () => {
    const { customer, requestId } = await heldRequest();
    const settlement = await ledger.settleRequest({ requestId, outcome: 'failed', usage: {}, error: 'upstream 502' });
    expect(settlement).toMatchObject({ status: 'failed', amount: 0, charged: 0, balance: 100_000, held: 0 });
    const { rows } = await admin().query(`select * from public.credit_ledger where reason = 'usage' and account_id = $1`, [customer.accountId]);
    expect(rows).toEqual([]);
    const { rows: [event] } = await admin().query('select error from public.usage_events where request_id = $1', [requestId]);
    expect(event.error).toBe('upstream 502');
  });

  it('charges an overrun of the hold when the balance covers it', async () => {
    const { requestId } = await heldRequest();
    const settlement = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 5000, output: 100 }, usageSource: 'provider' });
    expect(settlement).toMatchObject({ amount: 5200, charged: 5200, balance: 94_800 });
  });

  it('never takes the balance past the credit limit: an uncovered overrun stays visible as amount − charged', async () => {
    const { requestId } = await heldRequest(3000);
    const settlement = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 5000, output: 100 }, usageSource: 'provider' });
    expect(settlement).toMatchObject({ amount: 5200, charged: 3000, balance: 0, held: 0 });
  });

  it.each([
    ['an unknown outcome', { outcome: 'done' }, '22023'],
    ['an unknown bucket', { usage: { tokens: 5 } }, '22023'],
    ['a fractional count', { usage: { input: 2.5 } }, '22023'],
    ['an unknown usage source', { usageSource: 'guess' }, '22023'],
  ])('refuses %s with a clear error and changes nothing', async (_situation, change, code) => {
    const { customer, requestId } = await heldRequest();
    const before = await rowCounts(customer.accountId);
    const input = { requestId, outcome: 'completed', usage: { input: 1 }, usageSource: 'provider', ...change } as never;
    const error = await ledger.settleRequest(input).catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(LedgerError);
    expect(error).toMatchObject({ code, status: 400 });
    expect(await rowCounts(customer.accountId)).toEqual(before);
  });

  it('refuses usage for an unknown request id with 404', async () => {
    await expect(ledger.settleRequest({ requestId: 'never-authorized', outcome: 'completed', usage: { input: 1 } })).rejects.toMatchObject({
      code: 'PT404',
      status: 404,
    });
  });

  it('a hold given back before its authorization arrived is remembered, and the late authorization refused', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 10_000 });
    const requestId = crypto.randomUUID();
    // The gateway gave up waiting for authorize and gives the hold back first.
    expect(await ledger.settleRequest({ requestId, outcome: 'failed', usage: {}, error: 'authorization did not answer in time' }))
      .toEqual({ status: 'cancelled', replayed: false, request_id: requestId });
    expect(await ledger.settleRequest({ requestId, outcome: 'failed', usage: {} })).toEqual({ status: 'cancelled', replayed: true, request_id: requestId });
    // The delayed authorization arrives afterwards: refused, nothing held, nothing written.
    expect(await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 }))
      .toMatchObject({ status: 'refused', code: 'request_cancelled' });
    expect(await rowCounts(customer.accountId)).toMatchObject({ usage_events: 0, held: '0' });
  });
});

describe('grantCredits', () => {
  it('posts grants and adjustments to the ledger', async () => {
    const customer = await createCustomer({ balance: 0 });
    expect(await ledger.grantCredits({ accountId: customer.accountId, amount: 2_500_000, note: 'welcome' })).toMatchObject({ balance: 2_500_000 });
    expect(await ledger.grantCredits({ accountId: customer.accountId, amount: -500_000, reason: 'adjustment' })).toMatchObject({ balance: 2_000_000 });
  });

  it('refuses an adjustment past the credit limit, a negative grant and a zero amount', async () => {
    const customer = await createCustomer({ balance: 1000 });
    await expect(ledger.grantCredits({ accountId: customer.accountId, amount: -1001, reason: 'adjustment' })).rejects.toMatchObject({ status: 409 });
    await expect(ledger.grantCredits({ accountId: customer.accountId, amount: -1 })).rejects.toMatchObject({ code: '22023' });
    await expect(ledger.grantCredits({ accountId: customer.accountId, amount: 0 })).rejects.toMatchObject({ code: '22023' });
    await expect(ledger.grantCredits({ accountId: crypto.randomUUID(), amount: 5 })).rejects.toMatchObject({ status: 404 });
  });

  it('refuses to reuse a reference for a different grant', async () => {
    const customer = await createCustomer({ balance: 0 });
    const reference = crypto.randomUUID();
    await ledger.grantCredits({ accountId: customer.accountId, amount: 10, reference });
    await expect(ledger.grantCredits({ accountId: customer.accountId, amount: 11, reference })).rejects.toMatchObject({ status: 409 });
  });
});

describe('sign-up', () => {
  it('opens an account with the configured starting credits as a ledger row', async () => {
    const customer = await createCustomer();
    const { rows } = await admin().query('select amount, reason, reference from public.credit_ledger where account_id = $1', [customer.accountId]);
    const { rows: [settings] } = await admin().query('select signup_credits from public.billing_settings');
    expect(rows).toEqual([{ amount: settings.signup_credits, reason: 'signup', reference: customer.userId }]);
  });
});

describe('API keys', () => {
  it('returns the plaintext once and stores only its SHA-256', async () => {
    const customer = await createCustomer();
    const created = await createApiKeyManager(customer.client).createApiKey('ci', new Date(Date.now() + 86_400_000));
    expect(created.key).toMatch(/^tg_[A-Za-z0-9_-]{32}$/);
    expect(created.prefix).toBe(created.key.slice(0, 11));
    const { rows: [stored] } = await admin().query('select * from public.api_keys where id = $1', [created.id]);
    expect(stored.key_hash).toBe(await hashApiKey(created.key));
    expect(JSON.stringify(stored)).not.toContain(created.key);
  });

  it('refuses bad names and past expiry, and revoking another user\'s key', async () => {
    const alice = await createCustomer();
    const bob = await createCustomer();
    const keys = createApiKeyManager(alice.client);
    await expect(keys.createApiKey('')).rejects.toMatchObject({ code: '22023', status: 400 });
    await expect(keys.createApiKey('x'.repeat(101))).rejects.toMatchObject({ code: '22023' });
    await expect(keys.createApiKey('old', new Date(Date.now() - 1000))).rejects.toMatchObject({ code: '22023' });
    await expect(keys.revokeApiKey(bob.apiKeyId)).rejects.toMatchObject({ status: 404 });
    const { rows: [key] } = await admin().query('select revoked_at from public.api_keys where id = $1', [bob.apiKeyId]);
    expect(key.revoked_at).toBeNull();
  });
});

describe('settleEachIfRefused', () => {
  const settlement = (requestId: string): SettleRequestInput => ({ requestId, outcome: 'completed', usage: { input: 1 } });
  /** A database that refuses, as a whole, any call carrying the entry "unreadable"; that cannot be reached when `down`. */
  function database(down = false) {
    const calls: string[][] = [];
    return {
      calls,
      settleRequests: async (inputs: SettleRequestInput[]): Promise<BatchSettlement> => {
        calls.push(inputs.map((input) => input.requestId));
        if (down) throw new LedgerError('fetch failed', 'unavailable', 0);
        if (inputs.some((input) => input.requestId === 'unreadable')) throw new LedgerError('Empty or invalid json', 'PGRST102', 400);
        return inputs.map((input) => ({ request_id: input.requestId, ok: false as const, code: 'PT404', message: 'for the test' }));
      },
    };
  }

  it('one call when the database takes it; each alone when it refuses the call as a whole, the unreadable one answered as refused', async () => {
    const fine = database();
    expect(await settleEachIfRefused(fine, [settlement('a'), settlement('b')])).toHaveLength(2);
    expect(fine.calls).toEqual([['a', 'b']]);
    const poisoned = database();
    const results = await settleEachIfRefused(poisoned, [settlement('a'), settlement('unreadable'), settlement('b')]);
    expect(poisoned.calls).toEqual([['a', 'unreadable', 'b'], ['a'], ['unreadable'], ['b']]);
    expect(results.map((result) => [result.request_id, result.ok ? 'ok' : result.code])).toEqual([['a', 'PT404'], ['unreadable', 'PGRST102'], ['b', 'PT404']]);
    // Alone, it is answered as refused at once: a page of one is not an outage.
    const alone = database();
    expect(await settleEachIfRefused(alone, [settlement('unreadable')])).toEqual([{ request_id: 'unreadable', ok: false, code: 'PGRST102', message: 'Empty or invalid json' }]);
    expect(alone.calls).toEqual([['unreadable']]);
  });

  it('a database that does not answer fails the call: nothing is taken for refused', async () => {
    const away = database(true);
    await expect(settleEachIfRefused(away, [settlement('a'), settlement('b')])).rejects.toMatchObject({ code: 'unavailable' });
    expect(away.calls).toEqual([['a', 'b']]);
  });
});

import { describe, expect, it } from 'vitest';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

describe('idempotency by request id', () => {
  it('the same request id authorized twice takes one hold', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 100_000 });
    const requestId = crypto.randomUUID();
    const input = { requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 };

    const first = await ledger.authorizeRequest(input);
    const second = await ledger.authorizeRequest(input);
    expect(first).toMatchObject({ status: 'authorized', replayed: false, hold: 2000 });
    expect(second).toMatchObject({ status: 'authorized', replayed: true, hold: 2000 });

    const { rows: [account] } = await admin().query('select held from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe('2000');
    const { rows: events } = await admin().query('select count(*)::int as n from public.usage_events where request_id = $1', [requestId]);
    expect(events[0].n).toBe(1);
  });

  it('the same request id authorized concurrently takes one hold', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 100_000 });
    const requestId = crypto.randomUUID();
    const results = await Promise.all(
      Array.from({ length: 25 }, () =>
        ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 }),
      ),
    );
    expect(results.every((result) => result.status === 'authorized')).toBe(true);
    expect(results.filter((result) => result.status === 'authorized' && !result.replayed)).toHaveLength(1);
    const { rows: [account] } = await admin().query('select held from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe('2000');
  });

  it('settled twice is charged once, and a second settle with other usage changes nothing', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 100_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 });

    const first = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 400, output: 100 }, usageSource: 'provider' });
    const second = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 900, output: 900 }, usageSource: 'provider' });
    expect(first).toMatchObject({ replayed: false, charged: 500, balance: 99_500, held: 0 });
    expect(second).toMatchObject({ replayed: true, charged: 500, balance: 99_500, held: 0 });

    const { rows } = await admin().query('select amount from public.credit_ledger where account_id = $1 and reason = $2', [customer.accountId, 'usage']);
    expect(rows).toEqual([{ amount: '-500' }]);
  });

  it('a request id already used by another key is refused, not replayed', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const alice = await createCustomer({ balance: 100_000 });
    const bob = await createCustomer({ balance: 100_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: alice.keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    const stolen = await ledger.authorizeRequest({ requestId, keyHash: bob.keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    expect(stolen).toMatchObject({ status: 'refused', code: 'request_id_conflict' });
    expect(JSON.stringify(stolen)).not.toContain(alice.accountId);
  });

  it('a grant with the same reference posts once', async () => {
    const customer = await createCustomer({ balance: 0 });
    const reference = `grant-${crypto.randomUUID()}`;
    const grants = await Promise.all(
      Array.from({ length: 10 }, () => ledger.grantCredits({ accountId: customer.accountId, amount: 7_000, reference })),
    );
    expect(grants.filter((grant) => !grant.replayed)).toHaveLength(1);
    const { rows: [account] } = await admin().query('select balance from public.accounts where id = $1', [customer.accountId]);
    expect(account.balance).toBe('7000');
  });
});

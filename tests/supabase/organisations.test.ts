import { describe, expect, it } from 'vitest';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { admin, createCustomer, createModel, ledger, type Customer } from '../support/supabase.ts';

// An account as an organisation: members' keys draw on its balance within their
// monthly budgets; RLS shows members the balance and their own usage, owners
// everyone's; only owners manage members.

const email = (customer: Customer) => `${customer.userId}@example.test`;

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string; code?: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw Object.assign(new Error(error.message), { code: error.code });
  return data as T;
}

describe('organisations', () => {
  it('several members at once: no member past their budget, the organisation never past its balance', { timeout: 60_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 2_000 });
    const members = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    const budgets = [500, 300, null];
    for (const [index, member] of members.entries()) {
      await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member), p_monthly_budget: budgets[index] }));
    }
    const keys = await Promise.all(members.map(async (member) => {
      const created = await must<{ key: string }>(member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'work' }));
      return hashApiKey(created.key);
    }));

    // 20 requests per member at once; each holds and is charged 50 + 50 tokens at $1/M = 100 micro-dollars.
    const outcomes = await Promise.all(
      keys.flatMap((keyHash, member) =>
        Array.from({ length: 20 }, async () => {
          const requestId = crypto.randomUUID();
          const result = await ledger.authorizeRequest({ requestId, keyHash, model, maxInputTokens: 50, maxOutputTokens: 50 });
          if (result.status !== 'authorized') return { member, code: result.code };
          await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 50, output: 50 }, usageSource: 'provider' });
          return { member, code: 'charged' };
        }),
      ),
    );
    const charged = (member: number) => outcomes.filter((outcome) => outcome.member === member && outcome.code === 'charged').length * 100;
    expect(new Set(outcomes.map((outcome) => outcome.code))).toEqual(new Set(['charged', 'member_budget_reached', 'insufficient_credits']));
    expect(charged(0)).toBeLessThanOrEqual(500);
    expect(charged(1)).toBeLessThanOrEqual(300);
    expect(charged(0) + charged(1) + charged(2)).toBe(2_000);
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [owner.accountId]);
    expect(account).toEqual({ balance: 0, held: 0 });

    // Row-level security: a member sees the organisation's balance and only their own usage; the owner everyone's.
    const seen = await must<Array<{ id: string; balance: number }>>(members[0]!.client.from('accounts').select('id,balance'));
    expect(seen.map((row) => row.id).sort()).toEqual([members[0]!.accountId, owner.accountId].sort());
    const memberUsage = await must<unknown[]>(members[0]!.client.from('usage_events').select('request_id').eq('account_id', owner.accountId));
    expect(memberUsage).toHaveLength(charged(0) / 100);
    const ownerUsage = await must<unknown[]>(owner.client.from('usage_events').select('request_id').eq('account_id', owner.accountId));
    expect(ownerUsage).toHaveLength(20);
    const stranger = await createCustomer({ balance: 0 });
    expect(await must<unknown[]>(stranger.client.from('accounts').select('id').eq('id', owner.accountId))).toEqual([]);
    expect(await must<unknown[]>(stranger.client.from('account_members').select('user_id').eq('account_id', owner.accountId))).toEqual([]);
    expect(await must<unknown[]>(owner.client.from('account_members').select('user_id').eq('account_id', owner.accountId))).toHaveLength(3);
    expect(await must<unknown[]>(members[1]!.client.from('account_members').select('user_id').eq('account_id', owner.accountId))).toHaveLength(1);
  });

  it('only owners manage members; a removed member\'s keys stop working; every change is audited', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 1_000_000 });
    const [member, other] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member) }));
    await expect(must(member.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(other) }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(other.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'mine' }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: 'nobody@example.test' }))).rejects.toMatchObject({ code: 'PT404' });
    await expect(must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member), p_monthly_budget: -1 }))).rejects.toMatchObject({ code: '22023' });

    const { key } = await must<{ key: string }>(member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'laptop' }));
    const keyHash = await hashApiKey(key);
    const first = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    expect(first).toMatchObject({ status: 'authorized', account_id: owner.accountId });
    if (first.status === 'authorized') await ledger.settleRequest({ requestId: first.request_id, outcome: 'completed', usage: { input: 10, output: 10 } });

    await must(owner.client.rpc('remove_member', { p_account_id: owner.accountId, p_user_id: member.userId }));
    const after = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    expect(after).toMatchObject({ status: 'refused', code: 'api_key_revoked' });
    const { rows } = await admin().query(`select action from public.audit_log where subject = $1 and action not like 'ledger\\_%' order by id`, [owner.accountId]);
    expect(rows.map((row) => row.action)).toEqual(['set_member', 'create_member_key', 'remove_member']);
  });

  it('a key the member makes while being removed is never left live, and a removed member\'s key makes no side call', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 1_000_000 });
    const member = await createCustomer({ balance: 0 });
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member) }));
    const { key } = await must<{ key: string }>(member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'before' }));
    const as = async (client: import('pg').PoolClient, userId: string) => {
      await client.query('begin');
      await client.query('set local role authenticated');
      await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify({ sub: userId, role: 'authenticated' })]);
    };
    const [removing, creating] = [await admin().connect(), await admin().connect()];
    try {
      // The owner removes the member; before that commits, the member asks for a key.
      await as(removing, owner.userId);
      await removing.query('select public.remove_member($1, $2)', [owner.accountId, member.userId]);
      await as(creating, member.userId);
      const made = creating.query('select public.create_member_api_key($1, $2) as k', [owner.accountId, 'during']).then(
        (result) => ({ key: result.rows[0].k.key as string, code: undefined }),
        (error: { code?: string }) => ({ key: undefined, code: error.code }),
      );
      await new Promise((resolve) => setTimeout(resolve, 300));
      await removing.query('commit');
      const outcome = await made;
      await creating.query(outcome.code ? 'rollback' : 'commit');
      // It waited for the removal and was refused; had it gone first, the removal would have revoked it.
      expect(outcome).toEqual({ key: undefined, code: '42501' });
    } finally {
      removing.release();
      creating.release();
    }
    const { rows: live } = await admin().query('select 1 from public.api_keys where account_id = $1 and member_user_id = $2 and revoked_at is null', [owner.accountId, member.userId]);
    expect(live).toHaveLength(0);
    // A member's key whose membership is gone (say, ended straight in the database) makes no side call either.
    await admin().query('update public.api_keys set revoked_at = null where key_hash = $1', [await hashApiKey(key)]);
    const { rows: [side] } = await admin().query('select public.authorize_uncharged_call($1, $2) as result', [await hashApiKey(key), model]);
    expect(side.result).toMatchObject({ status: 'refused', code: 'not_a_member' });
    await admin().query('update public.api_keys set revoked_at = now() where key_hash = $1', [await hashApiKey(key)]);
  });
});

import type { SupabaseClient } from '@supabase/supabase-js';
import { describe, expect, it } from 'vitest';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';
import { admin, createCustomer, createModel, ledger, stack, userClient, type Customer } from '../support/supabase.ts';

// An account as an organisation: its owners invite people by email, and an
// invitation grants nothing until the invitee accepts it; members' keys draw on
// its balance within their monthly budgets; RLS shows members the balance and
// their own usage, owners everyone's, and nobody the account's internal columns;
// only owners manage members.

const email = (customer: Pick<Customer, 'userId'>) => `${customer.userId}@example.test`;

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string; code?: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw Object.assign(new Error(error.message), { code: error.code });
  return data as T;
}

interface Invitation {
  id: string;
  account_id: string;
  organisation_name: string | null;
  owner_email: string;
  invited_by_email: string | null;
  role: string;
  monthly_budget: number | null;
  invited_at: string;
}

const myInvitations = (client: SupabaseClient) => must<Invitation[]>(client.rpc('my_invitations'));

/** The owner invites the member, and the member accepts: the way anyone joins an organisation. */
async function join(owner: Customer, member: Pick<Customer, 'client' | 'userId'>, options: { role?: string; budget?: number | null } = {}) {
  await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member), p_role: options.role ?? 'member', p_monthly_budget: options.budget ?? null }));
  const invitation = (await myInvitations(member.client)).find((pending) => pending.account_id === owner.accountId);
  if (!invitation) throw new Error('the invitation did not reach the invitee');
  return must<Record<string, unknown>>(member.client.rpc('accept_invitation', { p_invitation_id: invitation.id }));
}

const memberships = async (accountId: string) =>
  (await admin().query('select user_id, role, monthly_budget::int as monthly_budget from public.account_members where account_id = $1 order by added_at', [accountId])).rows;
const pendingInvitations = async (accountId: string) =>
  (await admin().query('select email, role, monthly_budget::int as monthly_budget from public.member_invitations where account_id = $1 order by email', [accountId])).rows;
const auditOf = async (accountId: string) =>
  (await admin().query(`select action, actor_id, details from public.audit_log where subject = $1 and action not like 'ledger\\_%' order by id`, [accountId])).rows;

describe('organisations', () => {
  it('several members at once: no member past their budget, the organisation never past its balance', { timeout: 60_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 2_000 });
    const members = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    const budgets = [500, 300, null];
    for (const [index, member] of members.entries()) await join(owner, member, { budget: budgets[index] });
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
    await join(owner, member);
    await expect(must(member.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(other) }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(other.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'mine' }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member), p_monthly_budget: -1 }))).rejects.toMatchObject({ code: '22023' });

    const { key } = await must<{ key: string }>(member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'laptop' }));
    const keyHash = await hashApiKey(key);
    const first = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    expect(first).toMatchObject({ status: 'authorized', account_id: owner.accountId });
    if (first.status === 'authorized') await ledger.settleRequest({ requestId: first.request_id, outcome: 'completed', usage: { input: 10, output: 10 } });

    await must(owner.client.rpc('remove_member', { p_account_id: owner.accountId, p_user_id: member.userId }));
    const after = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 });
    expect(after).toMatchObject({ status: 'refused', code: 'api_key_revoked' });
    expect((await auditOf(owner.accountId)).map((row) => row.action)).toEqual(['invite_member', 'accept_invitation', 'create_member_key', 'remove_member']);
  });

  it('a key the member makes while being removed is never left live, and a removed member\'s key makes no side call', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const owner = await createCustomer({ balance: 1_000_000 });
    const member = await createCustomer({ balance: 0 });
    await join(owner, member);
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

describe('joining an organisation takes the invitee\'s consent', () => {
  it('set_member for someone not yet a member only invites them: no membership, no keys, no reading the organisation, no spending', async () => {
    const owner = await createCustomer({ balance: 1_000_000 });
    const invitee = await createCustomer({ balance: 0 });
    const answer = await must<Record<string, unknown>>(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(invitee), p_monthly_budget: 700 }));

    // Nothing is granted to the invitee: not a member, no key on the organisation, nothing of it to read.
    expect(await memberships(owner.accountId)).toEqual([]);
    await expect(must(invitee.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'sneaky' }))).rejects.toMatchObject({ code: '42501' });
    expect(await must<unknown[]>(invitee.client.from('accounts').select('id').eq('id', owner.accountId))).toEqual([]);
    expect(await must<unknown[]>(invitee.client.from('account_members').select('user_id').eq('account_id', owner.accountId))).toEqual([]);
    expect(answer).toMatchObject({ status: 'invited', account_id: owner.accountId, email: email(invitee), role: 'member', monthly_budget: 700 });
    expect(await must<unknown[]>(invitee.client.from('member_invitations').select('id').eq('account_id', owner.accountId))).toEqual([]);
    expect(await must<unknown[]>(invitee.client.from('usage_events').select('request_id').eq('account_id', owner.accountId))).toEqual([]);
    const { rows: keysOnIt } = await admin().query('select 1 from public.api_keys where account_id = $1 and member_user_id = $2', [owner.accountId, invitee.userId]);
    expect(keysOnIt).toEqual([]);

    // The invitee sees the invitation, with the organisation that sent it; the owner sees it pending.
    await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: '  Acme Research  ' }));
    const [invitation, ...more] = await myInvitations(invitee.client);
    expect(more).toEqual([]);
    expect(invitation).toMatchObject({
      account_id: owner.accountId, organisation_name: 'Acme Research', owner_email: email(owner), invited_by_email: email(owner), role: 'member', monthly_budget: 700,
    });
    expect(await must<unknown[]>(owner.client.from('member_invitations').select('email,role,monthly_budget').eq('account_id', owner.accountId)))
      .toEqual([{ email: email(invitee), role: 'member', monthly_budget: 700 }]);

    // Accepted: a member with the invitation's role and budget, who may now make keys and read the balance.
    const accepted = await must<Record<string, unknown>>(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }));
    expect(accepted).toMatchObject({ status: 'member', account_id: owner.accountId, user_id: invitee.userId, role: 'member', monthly_budget: 700 });
    expect(await memberships(owner.accountId)).toEqual([{ user_id: invitee.userId, role: 'member', monthly_budget: 700 }]);
    expect(await pendingInvitations(owner.accountId)).toEqual([]);
    expect(await myInvitations(invitee.client)).toEqual([]);
    expect(await must<Array<{ id: string; name: string }>>(invitee.client.from('accounts').select('id,name').eq('id', owner.accountId))).toEqual([{ id: owner.accountId, name: 'Acme Research' }]);
    await must(invitee.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'work' }));
    // Accepted once: the invitation is gone.
    await expect(must(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).rejects.toMatchObject({ code: 'PT404' });
  });

  it('the answer is the same whether or not the email is registered: no user id, no error', async () => {
    const owner = await createCustomer({ balance: 0 });
    // An address that does not hold the user's id, so an answer naming the user would show.
    const registeredEmail = `registered-${crypto.randomUUID()}@example.test`;
    const registered = { userId: await createAuthUser(stack.authAdminDatabaseUrl, registeredEmail) };
    const unregistered = `nobody-${crypto.randomUUID()}@example.test`;
    const shape = (answer: Record<string, unknown>) => Object.fromEntries(Object.entries(answer).map(([name, value]) => [name, name === 'email' || name === 'id' || name === 'invited_at' ? typeof value : value]));
    const known = await owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: registeredEmail });
    const unknown = await owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: `  ${unregistered.toUpperCase()} ` });
    expect(known.error).toBeNull();
    expect(unknown.error).toBeNull();
    expect(shape(known.data)).toEqual(shape(unknown.data));
    expect(Object.keys(known.data as object).sort()).toEqual(['account_id', 'email', 'id', 'invited_at', 'monthly_budget', 'role', 'status']);
    expect(JSON.stringify(known.data)).not.toContain(registered.userId);
    // The address is kept as one writes it to compare, trimmed and in lower case.
    expect(unknown.data).toMatchObject({ status: 'invited', email: unregistered });
    expect((await pendingInvitations(owner.accountId)).map((row) => row.email).sort()).toEqual([registeredEmail, unregistered].sort());
    // And what is audited names the address, never whose it is.
    const audited = await auditOf(owner.accountId);
    expect(audited.map((row) => row.action)).toEqual(['invite_member', 'invite_member']);
    expect(JSON.stringify(audited)).not.toContain(registered.userId);
  });

  it('someone who signs up later with the invited email sees the invitation and may accept it; an unconfirmed address sees nothing', async () => {
    const owner = await createCustomer({ balance: 0 });
    const address = `later-${crypto.randomUUID()}@example.test`;
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: address, p_role: 'owner', p_monthly_budget: 5 }));

    // Someone signs up with the address but has not confirmed it: it is not theirs yet.
    const squatterId = await createAuthUser(stack.authAdminDatabaseUrl, address.toUpperCase());
    await admin().query('update auth.users set email_confirmed_at = null where id = $1', [squatterId]);
    const squatter = userClient(squatterId);
    expect(await myInvitations(squatter)).toEqual([]);
    const { rows: [pending] } = await admin().query('select id from public.member_invitations where account_id = $1', [owner.accountId]);
    await expect(must(squatter.rpc('accept_invitation', { p_invitation_id: pending.id }))).rejects.toMatchObject({ code: 'PT404' });
    await admin().query('update auth.users set email = $2 where id = $1', [squatterId, `squatter-${crypto.randomUUID()}@example.test`]);

    // The address's owner signs up (confirmed, in another case): the invitation is theirs.
    const userId = await createAuthUser(stack.authAdminDatabaseUrl, address.replace('later', 'LATER'));
    const client = userClient(userId);
    const [invitation] = await myInvitations(client);
    expect(invitation).toMatchObject({ id: pending.id, account_id: owner.accountId, role: 'owner', monthly_budget: 5, organisation_name: null, owner_email: email(owner) });
    expect(await must(client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).toMatchObject({ status: 'member', role: 'owner', user_id: userId });
    // An owner by invitation manages the organisation too.
    expect(await must(client.rpc('set_member', { p_account_id: owner.accountId, p_email: 'colleague@example.test' }))).toMatchObject({ status: 'invited' });
  });

  it('the invitee declines, the owner withdraws; only they can; each answers clearly', async () => {
    const owner = await createCustomer({ balance: 0 });
    const [invitee, other, member] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    await join(owner, member);
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(invitee) }));
    const [invitation] = await myInvitations(invitee.client);

    // Nobody but the invitee accepts or declines it; nobody but an owner withdraws it.
    await expect(must(other.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).rejects.toMatchObject({ code: 'PT404' });
    await expect(must(other.client.rpc('decline_invitation', { p_invitation_id: invitation!.id }))).rejects.toMatchObject({ code: 'PT404' });
    await expect(must(owner.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).rejects.toMatchObject({ code: 'PT404' });
    await expect(must(member.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(invitee) }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(member.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'Mine now' }))).rejects.toMatchObject({ code: '42501' });
    await expect(must(other.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(invitee) }))).rejects.toMatchObject({ code: '42501' });
    expect(await pendingInvitations(owner.accountId)).toHaveLength(1);

    // Declined: gone, nobody added.
    expect(await must(invitee.client.rpc('decline_invitation', { p_invitation_id: invitation!.id }))).toMatchObject({ declined: invitation!.id, account_id: owner.accountId });
    expect(await pendingInvitations(owner.accountId)).toEqual([]);
    await expect(must(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).rejects.toMatchObject({ code: 'PT404' });

    // Invited again, then withdrawn: the invitee can no longer accept it.
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(invitee) }));
    const [again] = await myInvitations(invitee.client);
    expect(await must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(invitee).toUpperCase() }))).toMatchObject({ withdrawn: email(invitee), account_id: owner.accountId });
    await expect(must(invitee.client.rpc('accept_invitation', { p_invitation_id: again!.id }))).rejects.toMatchObject({ code: 'PT404', message: expect.stringContaining('withdrawn') });
    await expect(must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(invitee) }))).rejects.toMatchObject({ code: 'PT404' });
    expect((await memberships(owner.accountId)).map((row) => row.user_id)).toEqual([member.userId]);

    // Clear refusals of what cannot be an invitation.
    for (const [arguments_, code] of [
      [{ p_email: 'not an address' }, '22023'],
      [{ p_email: '' }, '22023'],
      [{ p_email: null }, '22023'],
      [{ p_email: email(other), p_role: 'admin' }, '22023'],
      [{ p_email: email(other), p_monthly_budget: -1 }, '22023'],
      [{ p_email: email(owner) }, '22023'],
    ] as const) {
      await expect(must(owner.client.rpc('set_member', { p_account_id: owner.accountId, ...arguments_ }))).rejects.toMatchObject({ code });
    }
    await expect(must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'x'.repeat(101) }))).rejects.toMatchObject({ code: '22023' });
    expect(await pendingInvitations(owner.accountId)).toEqual([]);
  });

  it('re-inviting changes the pending invitation; set_member on a member changes their role and budget as before', async () => {
    const owner = await createCustomer({ balance: 0 });
    const [member, invitee] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    await join(owner, member, { budget: 100 });

    const changed = await must<Record<string, unknown>>(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(member).toUpperCase(), p_role: 'owner', p_monthly_budget: 250 }));
    expect(changed).toMatchObject({ status: 'member', account_id: owner.accountId, user_id: member.userId, role: 'owner', monthly_budget: 250 });
    expect(await memberships(owner.accountId)).toEqual([{ user_id: member.userId, role: 'owner', monthly_budget: 250 }]);
    expect(await pendingInvitations(owner.accountId)).toEqual([]);
    expect(await myInvitations(member.client)).toEqual([]);

    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(invitee), p_monthly_budget: 10 }));
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(invitee), p_role: 'owner', p_monthly_budget: 20 }));
    expect(await pendingInvitations(owner.accountId)).toEqual([{ email: email(invitee), role: 'owner', monthly_budget: 20 }]);
    const invitations = await myInvitations(invitee.client);
    expect(invitations).toHaveLength(1);
    expect(invitations[0]).toMatchObject({ role: 'owner', monthly_budget: 20 });

    // A membership made before invitations existed stays what it was.
    const earlier = await createCustomer({ balance: 0 });
    await admin().query(`insert into public.account_members (account_id, user_id, role, monthly_budget) values ($1, $2, 'member', 30)`, [owner.accountId, earlier.userId]);
    expect(await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(earlier), p_monthly_budget: 40 }))).toMatchObject({ status: 'member', user_id: earlier.userId, monthly_budget: 40 });
    await must(earlier.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'still here' }));
  });

  it('every step is in the audit log, with who took it', async () => {
    const owner = await createCustomer({ balance: 0 });
    const [accepting, declining, withdrawn] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'Audited' }));
    await join(owner, accepting, { budget: 9 });
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(accepting), p_monthly_budget: 10 }));
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(declining) }));
    const [toDecline] = await myInvitations(declining.client);
    await must(declining.client.rpc('decline_invitation', { p_invitation_id: toDecline!.id }));
    await must(owner.client.rpc('set_member', { p_account_id: owner.accountId, p_email: email(withdrawn) }));
    await must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(withdrawn) }));
    expect((await auditOf(owner.accountId)).map(({ action, actor_id }) => ({ action, actor_id }))).toEqual([
      { action: 'set_organisation_name', actor_id: owner.userId },
      { action: 'invite_member', actor_id: owner.userId },
      { action: 'accept_invitation', actor_id: accepting.userId },
      { action: 'set_member', actor_id: owner.userId },
      { action: 'invite_member', actor_id: owner.userId },
      { action: 'decline_invitation', actor_id: declining.userId },
      { action: 'invite_member', actor_id: owner.userId },
      { action: 'withdraw_invitation', actor_id: owner.userId },
    ]);
  });
});

describe('what a member reads of the organisation\'s account', () => {
  it('a plain member reads the balance, never the account\'s internal columns; owners read them through account_details', async () => {
    const owner = await createCustomer({ balance: 1_000_000 });
    const [member, coOwner] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    // Made straight in the database, so this holds however one became a member.
    await admin().query(`insert into public.account_members (account_id, user_id, role) values ($1, $2, 'member'), ($1, $3, 'owner')`, [owner.accountId, member.userId, coOwner.userId]);
    await admin().query(`update public.accounts set stripe_customer_id = $2, flagged_reason = 'payment pi_x disputed (fraudulent)' where id = $1`, [owner.accountId, `cus_${crypto.randomUUID()}`]);

    for (const columns of ['stripe_customer_id', 'flagged_reason', 'id,stripe_customer_id', '*']) {
      const result = await member.client.from('accounts').select(columns).eq('id', owner.accountId);
      expect({ columns, code: result.error?.code, data: result.data }).toEqual({ columns, code: '42501', data: null });
    }
    // What the console and the README promise a member: the balance and what it means.
    const seen = await must<unknown[]>(member.client.from('accounts').select('id,name,balance,held,credit_limit,plan,balance_state').eq('id', owner.accountId));
    expect(seen).toEqual([expect.objectContaining({ id: owner.accountId, balance: 1_000_000 })]);
    await expect(must(member.client.rpc('account_details', { p_account_id: owner.accountId }))).rejects.toMatchObject({ code: '42501' });

    // Owners (the account's user, and a member made owner) read every column through account_details.
    for (const client of [owner.client, coOwner.client]) {
      expect(await must(client.rpc('account_details', { p_account_id: owner.accountId }))).toMatchObject({
        id: owner.accountId, balance: 1_000_000, stripe_customer_id: expect.stringMatching(/^cus_/), flagged_reason: 'payment pi_x disputed (fraudulent)',
      });
    }
  });
});

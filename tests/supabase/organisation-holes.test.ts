import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';
import { admin, createCustomer, stack, type Customer } from '../support/supabase.ts';

// What an owner's removal or demotion leaves behind, how often anyone renames an
// organisation (each rename an audit entry), the operator's own actions found in
// the audit log however many entries customers write, and who may revoke a key
// of an organisation (supabase/migrations/20261129004000_organisation_holes.sql).

const email = (customer: Pick<Customer, 'userId'>) => `${customer.userId}@example.test`;

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string; code?: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw Object.assign(new Error(error.message), { code: error.code });
  return data as T;
}

/** What came back through PostgREST: the data, or the SQLSTATE and the message. */
async function outcome(query: PromiseLike<{ data: unknown; error: { message: string; code?: string } | null }>) {
  const { data, error } = await query;
  return { data, code: error?.code ?? null, message: error?.message ?? null };
}

const invitationTo = async (client: SupabaseClient, accountId: string) =>
  (await must<Array<{ id: string; account_id: string }>>(client.rpc('my_invitations'))).find((invitation) => invitation.account_id === accountId);

const invite = (by: Pick<Customer, 'client'>, accountId: string, to: string, role = 'member', budget: number | null = null) =>
  by.client.rpc('set_member', { p_account_id: accountId, p_email: to, p_role: role, p_monthly_budget: budget });

/** The owner invites, the invitee accepts. */
async function join(owner: Customer, member: Customer, role = 'member') {
  await must(invite(owner, owner.accountId, email(member), role));
  const invitation = await invitationTo(member.client, owner.accountId);
  await must(member.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }));
}

const pendingOf = async (accountId: string) =>
  (await admin().query<{ email: string; invited_by: string }>('select email, invited_by from public.member_invitations where account_id = $1 order by email', [accountId])).rows;
const membershipsOf = async (accountId: string) =>
  (await admin().query<{ user_id: string; role: string }>('select user_id, role from public.account_members where account_id = $1 order by added_at', [accountId])).rows;
const auditCount = async () => (await admin().query<{ n: number }>('select count(*)::int as n from public.audit_log')).rows[0]!.n;

// The answer accept_invitation gives for an invitation withdrawn (or never sent).
async function withdrawnAnswer(invitee: Customer) {
  const owner = await createCustomer({ balance: 0 });
  await must(invite(owner, owner.accountId, email(invitee)));
  const invitation = await invitationTo(invitee.client, owner.accountId);
  await must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: email(invitee) }));
  return outcome(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }));
}

describe('an owner removed or made a member takes back what they sent', () => {
  it('a co-owner removed by the account\'s user cannot come back as owner through an invitation sent before the removal', async () => {
    const owner = await createCustomer({ balance: 5_000_000 });
    const coOwner = await createCustomer({ balance: 0 });
    const otherAddress = await createCustomer({ balance: 0 }); // an address the co-owner controls
    const colleague = await createCustomer({ balance: 0 });
    await join(owner, coOwner, 'owner');

    // While an owner, the co-owner invites their other address as owner; the account's user invites a colleague.
    await must(invite(coOwner, owner.accountId, email(otherAddress), 'owner'));
    await must(invite(owner, owner.accountId, email(colleague)));
    // On their own account the co-owner invites the same address: not the organisation's business.
    await must(invite(coOwner, coOwner.accountId, email(otherAddress)));
    const pending = await invitationTo(otherAddress.client, owner.accountId);
    expect(pending).toBeDefined();

    const removed = await must(owner.client.rpc('remove_member', { p_account_id: owner.accountId, p_user_id: coOwner.userId }));
    expect(removed).toEqual({ removed: coOwner.userId, keys_revoked: 0, invitations_withdrawn: 1 });
    // What the co-owner sent for the organisation is gone; what the account's user sent stays, and so does the co-owner's own account's.
    expect(await pendingOf(owner.accountId)).toEqual([{ email: email(colleague), invited_by: owner.userId }]);
    expect(await pendingOf(coOwner.accountId)).toEqual([{ email: email(otherAddress), invited_by: coOwner.userId }]);
    expect(await invitationTo(otherAddress.client, owner.accountId)).toBeUndefined();
    const { rows: audited } = await admin().query(
      `select details from public.audit_log where action = 'withdraw_invitation' and subject = $1`, [owner.accountId]);
    expect(audited).toEqual([{ details: { invitation_id: pending!.id, email: email(otherAddress), reason: 'its sender is no longer an owner' } }]);

    // Accepting it is answered as an invitation withdrawn is.
    const accepted = await outcome(otherAddress.client.rpc('accept_invitation', { p_invitation_id: pending!.id }));
    expect(accepted).toEqual(await withdrawnAnswer(otherAddress));
    expect(accepted.code).toBe('PT404');
    expect((await membershipsOf(owner.accountId)).map((member) => member.user_id)).not.toContain(otherAddress.userId);
  });

  it('an owner made a plain member loses the invitations they sent; the account\'s user\'s and other owners\' stay', async () => {
    const owner = await createCustomer({ balance: 0 });
    const coOwner = await createCustomer({ balance: 0 });
    const secondOwner = await createCustomer({ balance: 0 });
    await join(owner, coOwner, 'owner');
    await join(owner, secondOwner, 'owner');
    const invitees = await Promise.all([1, 2, 3].map(() => createCustomer({ balance: 0 })));
    await must(invite(coOwner, owner.accountId, email(invitees[0]!), 'owner'));
    await must(invite(secondOwner, owner.accountId, email(invitees[1]!)));
    await must(invite(owner, owner.accountId, email(invitees[2]!)));
    const sent = await invitationTo(invitees[0]!.client, owner.accountId);

    // Budget changed, still an owner: nothing withdrawn.
    await must(invite(owner, owner.accountId, email(coOwner), 'owner', 1_000));
    expect(await pendingOf(owner.accountId)).toHaveLength(3);
    // Made a member: what they sent goes.
    expect(await must(invite(owner, owner.accountId, email(coOwner), 'member', 1_000))).toMatchObject({ status: 'member', role: 'member' });
    expect((await pendingOf(owner.accountId)).map((row) => row.invited_by).sort()).toEqual([owner.userId, secondOwner.userId].sort());
    const { rows: [entry] } = await admin().query(
      `select details from public.audit_log where action = 'set_member' and subject = $1 order by id desc limit 1`, [owner.accountId]);
    expect(entry.details).toMatchObject({ user_id: coOwner.userId, role: 'member', invitations_withdrawn: 1 });
    expect((await outcome(invitees[0]!.client.rpc('accept_invitation', { p_invitation_id: sent!.id }))).code).toBe('PT404');
    // The others are accepted as before.
    await must(invitees[1]!.client.rpc('accept_invitation', { p_invitation_id: (await invitationTo(invitees[1]!.client, owner.accountId))!.id }));
    await must(invitees[2]!.client.rpc('accept_invitation', { p_invitation_id: (await invitationTo(invitees[2]!.client, owner.accountId))!.id }));
  });

  it('an invitation whose sender stopped being an owner some other way is refused as withdrawn, and nothing is written', async () => {
    const owner = await createCustomer({ balance: 0 });
    const coOwner = await createCustomer({ balance: 0 });
    const invitee = await createCustomer({ balance: 0 });
    await join(owner, coOwner, 'owner');
    await must(invite(coOwner, owner.accountId, email(invitee), 'owner'));
    const pending = await invitationTo(invitee.client, owner.accountId);
    const withdrawn = await withdrawnAnswer(invitee);
    // As if a removal had raced the sending: the membership goes, the invitation stays.
    await admin().query('delete from public.account_members where account_id = $1 and user_id = $2', [owner.accountId, coOwner.userId]);
    const before = await auditCount();

    const accepted = await outcome(invitee.client.rpc('accept_invitation', { p_invitation_id: pending!.id }));
    expect(accepted).toEqual(withdrawn);
    expect(await auditCount()).toBe(before);
    expect(await membershipsOf(owner.accountId)).toEqual([]);
    expect(await pendingOf(owner.accountId)).toEqual([{ email: email(invitee), invited_by: coOwner.userId }]);
  });
});

describe('renaming an organisation', () => {
  it('to the name it has writes nothing; a user renames at most 20 times in 24 hours, and the 21st writes nothing', async () => {
    const owner = await createCustomer({ balance: 0 });
    const coOwner = await createCustomer({ balance: 0 });
    await join(owner, coOwner, 'owner');
    await join(coOwner, owner, 'owner');
    await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'Acme' }));
    const { rows: [before] } = await admin().query('select name, updated_at from public.accounts where id = $1', [owner.accountId]);
    const entries = await auditCount();
    for (const same of ['Acme', '  Acme ']) {
      expect(await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: same }))).toEqual({ account_id: owner.accountId, name: 'Acme' });
    }
    expect(await auditCount()).toBe(entries);
    expect((await admin().query('select name, updated_at from public.accounts where id = $1', [owner.accountId])).rows[0]).toEqual(before);

    // 19 more by the account's user (20 in all), across two organisations it owns, then the 21st is refused.
    for (let index = 0; index < 19; index++) {
      await must(owner.client.rpc('set_organisation_name', { p_account_id: index % 2 ? owner.accountId : coOwner.accountId, p_name: `Name ${index}` }));
    }
    const fullAt = await auditCount();
    const { rows: [named] } = await admin().query('select name from public.accounts where id = $1', [owner.accountId]);
    const refused = await outcome(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'One too many' }));
    expect(refused).toMatchObject({ data: null, code: 'PT429' });
    expect(refused.message).toMatch(/renamed organisations 20 times in the last 24 hours.*rename again after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC/);
    expect(await auditCount()).toBe(fullAt);
    expect((await admin().query('select name from public.accounts where id = $1', [owner.accountId])).rows[0]).toEqual(named);
    // Still nothing to write for the name it has; another owner of the same organisation renames it.
    expect(await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: named.name }))).toEqual({ account_id: owner.accountId, name: named.name });
    await must(coOwner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'Renamed by a co-owner' }));
  });
});

describe('the operator\'s own actions in the audit log', () => {
  let operator: SupabaseClient;
  let operatorId: string;

  beforeAll(async () => {
    const operatorEmail = `operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
    operatorId = await createAuthUser(stack.authAdminDatabaseUrl, operatorEmail);
    await admin().query(`update auth.users set raw_app_meta_data = raw_app_meta_data || '{"role":"admin"}' where id = $1`, [operatorId]);
    const token = signUserJwt(operatorId, stack.jwtSecret, { email: operatorEmail, appMetadata: { provider: 'email', role: 'admin' } });
    operator = createClient(stack.supabaseUrl, stack.anonKey, {
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      realtime: { transport: WebSocket as never },
      accessToken: async () => token,
    });
  });

  type Entry = { id: number; action: string; actor_id: string | null; subject: string | null; by_operator: boolean };
  const page = (scope: string, before: number | null = null, limit = 50) => must<Entry[]>(operator.rpc('operator_audit_log', { p_scope: scope, p_before_id: before, p_limit: limit }));

  it('stay within reach however many entries customers write; pages reach everything', { timeout: 120_000 }, async () => {
    const victim = await createCustomer({ balance: 0 });
    await must(operator.rpc('operator_grant_credits', { p_account_id: victim.accountId, p_amount: 5_000_000, p_note: 'goodwill' }));
    // Customers write many entries after it: 20 renames each by four customers (the most they may).
    const flooders = await Promise.all([1, 2, 3, 4].map(() => createCustomer({ balance: 0 })));
    await Promise.all(flooders.map(async (flooder) => {
      for (let index = 0; index < 20; index++) await must(flooder.client.rpc('set_organisation_name', { p_account_id: flooder.accountId, p_name: `n${index}` }));
    }));

    const latest = await page('all');
    expect(latest).toHaveLength(50);
    expect(latest.some((entry) => entry.action === 'grant_credits' && entry.subject === victim.accountId)).toBe(false);
    // The operator's own: first in their scope, marked as theirs, every entry an operator's.
    const own = await page('operator');
    expect(own.find((entry) => entry.action === 'grant_credits' && entry.subject === victim.accountId)).toMatchObject({ actor_id: operatorId, by_operator: true });
    expect(own.every((entry) => entry.by_operator)).toBe(true);
    expect(own.some((entry) => flooders.some((flooder) => flooder.userId === entry.actor_id))).toBe(false);
    // Paging through everything reaches it too, each page older than the one before.
    let before: number | null = latest.at(-1)!.id;
    let found = false;
    for (let pages = 0; pages < 10 && !found && before !== null; pages++) {
      const next: Entry[] = await page('all', before);
      expect(next.every((entry) => entry.id < before!)).toBe(true);
      found = next.some((entry) => entry.action === 'grant_credits' && entry.subject === victim.accountId);
      before = next.at(-1)?.id ?? null;
    }
    expect(found).toBe(true);
  });

  it('counts an entry from before by_operator as the operator\'s when its actor is one; refuses customers and a scope it does not know', async () => {
    const { rows: [old] } = await admin().query(
      `insert into public.audit_log (actor_id, actor_email, action, subject, by_operator) values ($1, 'op@example.test', 'update_model', 'old-model', null) returning id`, [operatorId]);
    const { rows: [written] } = await admin().query('select by_operator from public.audit_log where id = $1', [old.id]);
    expect(written.by_operator).toBeNull();
    expect((await page('operator')).find((entry) => Number(entry.id) === Number(old.id))).toMatchObject({ action: 'update_model', by_operator: true });
    const { rows: [byService] } = await admin().query(`insert into public.audit_log (action, subject) values ('reconcile_books', null) returning by_operator`);
    expect(byService.by_operator).toBe(false);

    const customer = await createCustomer({ balance: 0 });
    expect(await outcome(customer.client.rpc('operator_audit_log', { p_scope: 'all' }))).toMatchObject({ data: null, code: '42501' });
    expect(await outcome(operator.rpc('operator_audit_log', { p_scope: 'mine' }))).toMatchObject({ data: null, code: '22023' });
    const total = await auditCount();
    expect(await page('all', null, 100_000)).toHaveLength(Math.min(total, 500));
  });
});

describe('revoking a key of an organisation', () => {
  it('the member who holds it revokes it, as do the organisation\'s owners; nobody else; the answer names the key\'s account', async () => {
    const owner = await createCustomer({ balance: 1_000_000 });
    const coOwner = await createCustomer({ balance: 0 });
    const member = await createCustomer({ balance: 0 });
    const otherMember = await createCustomer({ balance: 0 });
    const stranger = await createCustomer({ balance: 0 });
    await join(owner, coOwner, 'owner');
    await join(owner, member);
    await join(owner, otherMember);
    const memberKeys = await Promise.all([1, 2].map((index) => must<{ id: string }>(member.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: `m${index}` }))));
    const otherKey = await must<{ id: string }>(otherMember.client.rpc('create_member_api_key', { p_account_id: owner.accountId, p_name: 'o' }));
    const revokedAt = async (id: string) => (await admin().query('select revoked_at from public.api_keys where id = $1', [id])).rows[0].revoked_at;

    // Not theirs: refused as a key that does not exist, and nothing is revoked.
    for (const [who, key] of [[member, owner.apiKeyId], [member, otherKey.id], [stranger, memberKeys[0]!.id], [stranger, owner.apiKeyId], [owner, stranger.apiKeyId], [member, coOwner.apiKeyId]] as const) {
      expect(await outcome(who.client.rpc('revoke_api_key', { p_key_id: key }))).toMatchObject({ data: null, code: 'PT404', message: 'no such key' });
      expect(await revokedAt(key)).toBeNull();
    }

    const own = await must<Record<string, unknown>>(member.client.rpc('revoke_api_key', { p_key_id: memberKeys[0]!.id }));
    expect(own).toEqual({ id: memberKeys[0]!.id, account_id: owner.accountId, revoked_at: expect.any(String) });
    expect(await revokedAt(memberKeys[0]!.id)).not.toBeNull();
    // Again: harmless, the same time.
    expect(await must(member.client.rpc('revoke_api_key', { p_key_id: memberKeys[0]!.id }))).toEqual(own);

    // A co-owner revokes a member's key and the account's user's own; the account's user a member's, as before its own.
    expect(await must(coOwner.client.rpc('revoke_api_key', { p_key_id: memberKeys[1]!.id }))).toMatchObject({ account_id: owner.accountId });
    expect(await must(owner.client.rpc('revoke_api_key', { p_key_id: otherKey.id }))).toMatchObject({ account_id: owner.accountId });
    expect(await must(coOwner.client.rpc('revoke_api_key', { p_key_id: owner.apiKeyId }))).toMatchObject({ id: owner.apiKeyId, account_id: owner.accountId });
    expect(await must(stranger.client.rpc('revoke_api_key', { p_key_id: stranger.apiKeyId }))).toMatchObject({ account_id: stranger.accountId });
  });
});

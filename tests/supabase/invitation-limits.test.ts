import { existsSync } from 'node:fs';
import type { SupabaseClient } from '@supabase/supabase-js';
import { chromium, type Browser, type Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildConsole } from '../../scripts/build-console.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, stack, type Customer } from '../support/supabase.ts';

// Invitations to an organisation expire 14 days after they were last sent, and
// nobody sends them in bulk: an organisation has at most 20 pending, a user
// sends at most 50 in 24 hours (re-sends included). A refusal writes nothing,
// and set_member still answers the same whether or not an address has an
// account. Time is moved by setting the sent time back, never by waiting.

const email = (customer: Pick<Customer, 'userId'>) => `${customer.userId}@example.test`;
const address = (label: string) => `${label}-${crypto.randomUUID()}@example.test`;
const day = 24 * 60 * 60 * 1000;

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string; code?: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw Object.assign(new Error(error.message), { code: error.code });
  return data as T;
}

/** What a refusal came back as through PostgREST (null data, the SQLSTATE and the message). */
async function outcome(query: PromiseLike<{ data: unknown; error: { message: string; code?: string } | null }>) {
  const { data, error } = await query;
  return { data, code: error?.code ?? null, message: error?.message ?? null };
}

interface Invitation {
  id: string;
  account_id: string;
  role: string;
  monthly_budget: number | null;
  invited_at: string;
  expires_at: string;
}

const myInvitations = (client: SupabaseClient) => must<Invitation[]>(client.rpc('my_invitations'));

const invite = (owner: Pick<Customer, 'client'>, accountId: string, to: string, options: { role?: string; budget?: number | null } = {}) =>
  owner.client.rpc('set_member', { p_account_id: accountId, p_email: to, p_role: options.role ?? 'member', p_monthly_budget: options.budget ?? null });

/** Sets an invitation's last sending back by `age` (a PostgreSQL interval); its expiry follows. */
const sentAgo = (accountId: string, to: string, age: string) =>
  admin().query('update public.member_invitations set invited_at = now() - $3::interval where account_id = $1 and email = $2', [accountId, to, age]);

/** Every invitation of the organisation as stored, expired ones included. */
const invitationsOf = async (accountId: string) =>
  (await admin().query('select id, email, role, monthly_budget::int as monthly_budget, invited_by, invited_at, expires_at from public.member_invitations where account_id = $1 order by email', [accountId])).rows;
const pendingCount = async (accountId: string) =>
  (await admin().query<{ n: number }>('select count(*)::int as n from public.member_invitations where account_id = $1 and expires_at > now()', [accountId])).rows[0]!.n;
const memberships = async (accountId: string) =>
  (await admin().query('select user_id, role, monthly_budget::int as monthly_budget from public.account_members where account_id = $1 order by added_at', [accountId])).rows;
const auditCount = async () => (await admin().query<{ n: number }>('select count(*)::int as n from public.audit_log')).rows[0]!.n;
const sentBy = async (userId: string) =>
  (await admin().query<{ n: number }>(`select count(*)::int as n from public.audit_log where action = 'invite_member' and actor_id = $1 and at > now() - interval '24 hours'`, [userId])).rows[0]!.n;

/**
 * Moves a user's oldest invitation send back past the 24-hour window. The audit
 * log refuses changes to everyone but a session that turns its triggers off (a
 * superuser's, here): this stands in for a day passing.
 */
async function oldestSendAged(userId: string) {
  const client = await admin().connect();
  try {
    await client.query('begin');
    await client.query('set local session_replication_role = replica');
    await client.query(
      `update public.audit_log set at = at - interval '24 hours 1 minute'
        where id = (select min(id) from public.audit_log where action = 'invite_member' and actor_id = $1)`,
      [userId],
    );
    await client.query('commit');
  } catch (error) {
    await client.query('rollback');
    throw error;
  } finally {
    client.release();
  }
}

const organisationFull = 'this organisation has 20 pending invitations, the most it may have: withdraw one, or wait until one is accepted, declined or expires';
const sentTooMany = /^you sent 50 invitations in the last 24 hours, the most anyone may: send more after \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$/;

describe('invitations expire', () => {
  it('14 days after the last sending the invitee no longer sees it or can accept it; the owner sees it expired; inviting again renews it', async () => {
    const owner = await createCustomer({ balance: 0 });
    const invitee = await createCustomer({ balance: 0 });
    const sent = await must<{ invited_at: string }>(invite(owner, owner.accountId, email(invitee), { budget: 700 }));

    const [invitation, ...more] = await myInvitations(invitee.client);
    expect(more).toEqual([]);
    expect(new Date(invitation!.invited_at).getTime()).toBe(new Date(sent.invited_at).getTime());
    expect(new Date(invitation!.expires_at).getTime() - new Date(invitation!.invited_at).getTime()).toBe(14 * day);

    // A minute before it expires it is still the invitee's.
    await sentAgo(owner.accountId, email(invitee), '14 days - 1 minute');
    expect(await myInvitations(invitee.client)).toMatchObject([{ id: invitation!.id }]);

    // A minute after: not listed, and refused with when it expired. Nobody is added; nothing is audited.
    await sentAgo(owner.accountId, email(invitee), '14 days 1 minute');
    const audited = await auditCount();
    expect(await myInvitations(invitee.client)).toEqual([]);
    const refused = await outcome(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }));
    expect(refused).toEqual({ data: null, code: 'PT410', message: expect.stringMatching(/^this invitation expired on \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC: ask the organisation to invite you again$/) });
    const [stored] = await invitationsOf(owner.accountId);
    expect(refused.message).toContain(stored.expires_at.toISOString().slice(0, 19).replace('T', ' '));
    expect(await memberships(owner.accountId)).toEqual([]);
    expect(await auditCount()).toBe(audited);

    // The owner still reads it, with its expiry in the past, until they withdraw it or send it again.
    const seen = await must<Array<{ id: string; email: string; expires_at: string }>>(
      owner.client.from('member_invitations').select('id,email,expires_at').eq('account_id', owner.accountId),
    );
    expect(seen).toEqual([{ id: invitation!.id, email: email(invitee), expires_at: expect.any(String) }]);
    expect(new Date(seen[0]!.expires_at).getTime()).toBeLessThan(Date.now());

    // Sent again: the same invitation, renewed for 14 days from now, with what the new sending says.
    const before = Date.now();
    await must(invite(owner, owner.accountId, email(invitee).toUpperCase(), { role: 'owner', budget: 800 }));
    const [renewed, ...others] = await myInvitations(invitee.client);
    expect(others).toEqual([]);
    expect(renewed).toMatchObject({ id: invitation!.id, role: 'owner', monthly_budget: 800 });
    expect(new Date(renewed!.expires_at).getTime()).toBeGreaterThanOrEqual(before + 14 * day - 5_000);
    expect(new Date(renewed!.expires_at).getTime()).toBeLessThanOrEqual(Date.now() + 14 * day + 5_000);
    expect(await must(invitee.client.rpc('accept_invitation', { p_invitation_id: invitation!.id }))).toMatchObject({ status: 'member', role: 'owner', monthly_budget: 800 });
    expect(await memberships(owner.accountId)).toEqual([{ user_id: invitee.userId, role: 'owner', monthly_budget: 800 }]);
    expect(await invitationsOf(owner.accountId)).toEqual([]);
  });

  it('an expired invitation can still be declined by the invitee or withdrawn by the owner; expiry is computed, not written', async () => {
    const owner = await createCustomer({ balance: 0 });
    const invitee = await createCustomer({ balance: 0 });
    const stranger = address('stranger');
    await must(invite(owner, owner.accountId, email(invitee)));
    await must(invite(owner, owner.accountId, stranger));
    const { rows: [{ id }] } = await admin().query('select id from public.member_invitations where account_id = $1 and email = $2', [owner.accountId, email(invitee)]);
    await sentAgo(owner.accountId, email(invitee), '15 days');
    await sentAgo(owner.accountId, stranger, '15 days');

    expect(await must(invitee.client.rpc('decline_invitation', { p_invitation_id: id }))).toMatchObject({ declined: id });
    expect(await must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: stranger }))).toMatchObject({ withdrawn: stranger });
    expect(await invitationsOf(owner.accountId)).toEqual([]);

    // Nobody sets the expiry apart from the sending, not even the database's superuser.
    await must(invite(owner, owner.accountId, stranger));
    await expect(admin().query(`update public.member_invitations set expires_at = now() + interval '1 year' where account_id = $1`, [owner.accountId]))
      .rejects.toMatchObject({ code: '428C9' });
  });
});

describe('an organisation has at most 20 pending invitations', () => {
  it('20 go; the 21st is refused the same for an address with an account or without, and writes nothing; a renewal, an expiry or a withdrawal makes room as it should', async () => {
    const owner = await createCustomer({ balance: 0 });
    const addresses = Array.from({ length: 20 }, (_, index) => address(`pending-${index}`));
    for (const to of addresses) await must(invite(owner, owner.accountId, to));
    expect(await pendingCount(owner.accountId)).toBe(20);

    const registered = await createCustomer({ balance: 0 });
    const stored = await invitationsOf(owner.accountId);
    const audited = await auditCount();
    const refusals = [await outcome(invite(owner, owner.accountId, email(registered))), await outcome(invite(owner, owner.accountId, address('nobody')))];
    expect(refusals[0]).toEqual({ data: null, code: 'PT429', message: organisationFull });
    expect(refusals[1]).toEqual(refusals[0]);
    expect(await invitationsOf(owner.accountId)).toEqual(stored);
    expect(await auditCount()).toBe(audited);
    expect(await myInvitations(registered.client)).toEqual([]);

    // Sending again to one of the 20 renews it and adds none.
    expect(await must(invite(owner, owner.accountId, addresses[0]!, { role: 'owner' }))).toMatchObject({ status: 'invited', role: 'owner' });
    expect(await pendingCount(owner.accountId)).toBe(20);

    // One expires: room for one more. Renewing the expired one would then be the 21st.
    await sentAgo(owner.accountId, addresses[1]!, '14 days 1 minute');
    await must(invite(owner, owner.accountId, email(registered)));
    expect(await myInvitations(registered.client)).toHaveLength(1);
    expect(await outcome(invite(owner, owner.accountId, addresses[1]!))).toEqual({ data: null, code: 'PT429', message: organisationFull });
    expect((await invitationsOf(owner.accountId)).find((row) => row.email === addresses[1])!.expires_at.getTime()).toBeLessThan(Date.now());

    // One withdrawn and one accepted: room for two.
    await must(owner.client.rpc('withdraw_invitation', { p_account_id: owner.accountId, p_email: addresses[2] }));
    const [toRegistered] = await myInvitations(registered.client);
    await must(registered.client.rpc('accept_invitation', { p_invitation_id: toRegistered!.id }));
    await must(invite(owner, owner.accountId, addresses[1]!));
    await must(invite(owner, owner.accountId, addresses[2]!));
    expect(await pendingCount(owner.accountId)).toBe(20);

    // Changing a member's role or budget is not an invitation: never limited.
    expect(await must(invite(owner, owner.accountId, email(registered), { budget: 5 }))).toMatchObject({ status: 'member', monthly_budget: 5 });
  });

  it('25 sent at once: exactly 20 go', async () => {
    const owner = await createCustomer({ balance: 0 });
    const outcomes = await Promise.all(Array.from({ length: 25 }, () => outcome(invite(owner, owner.accountId, address('at-once')))));
    expect(outcomes.filter((result) => result.code === null)).toHaveLength(20);
    expect(outcomes.filter((result) => result.code !== null)).toEqual(Array.from({ length: 5 }, () => ({ data: null, code: 'PT429', message: organisationFull })));
    expect(await pendingCount(owner.accountId)).toBe(20);
  });
});

describe('a user sends at most 50 invitations in 24 hours', () => {
  it('50 go, re-sends and every organisation they own counted; the 51st is refused the same whatever it is, and writes nothing; the window slides', async () => {
    const inviter = await createCustomer({ balance: 0 });
    const other = await createCustomer({ balance: 0 });
    // The inviter is an owner of a second organisation too.
    await must(invite(other, other.accountId, email(inviter), { role: 'owner' }));
    const [toOther] = await myInvitations(inviter.client);
    await must(inviter.client.rpc('accept_invitation', { p_invitation_id: toOther!.id }));

    const addresses = Array.from({ length: 20 }, (_, index) => address(`sent-${index}`));
    for (const to of addresses) await must(invite(inviter, inviter.accountId, to)); // 20
    for (const to of addresses) await must(invite(inviter, inviter.accountId, to, { budget: 1 })); // 40: re-sends count
    for (const to of addresses.slice(0, 5)) {
      await must(inviter.client.rpc('withdraw_invitation', { p_account_id: inviter.accountId, p_email: to }));
      await must(invite(inviter, inviter.accountId, to)); // 45: withdrawing and inviting again counts too
    }
    for (let index = 0; index < 5; index++) await must(invite(inviter, other.accountId, address('elsewhere'))); // 50
    expect(await sentBy(inviter.userId)).toBe(50);

    // The 51st: a re-send, a new address elsewhere, an address with an account, one without: all refused alike.
    const registered = await createCustomer({ balance: 0 });
    const [own, theirs] = [await invitationsOf(inviter.accountId), await invitationsOf(other.accountId)];
    const audited = await auditCount();
    const refusals = [
      await outcome(invite(inviter, inviter.accountId, addresses[0]!, { role: 'owner' })),
      await outcome(invite(inviter, other.accountId, address('elsewhere'))),
      await outcome(invite(inviter, other.accountId, email(registered))),
      await outcome(invite(inviter, other.accountId, address('nobody'))),
    ];
    expect(refusals[0]).toEqual({ data: null, code: 'PT429', message: expect.stringMatching(sentTooMany) });
    for (const refusal of refusals) expect(refusal).toEqual(refusals[0]);
    // It says when the next may go: when the oldest send of the 50 turns 24 hours old.
    const { rows: [next] } = await admin().query(
      `select to_char((min(at) + interval '24 hours') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS') as at
         from public.audit_log where action = 'invite_member' and actor_id = $1`,
      [inviter.userId],
    );
    expect(refusals[0]!.message).toContain(`send more after ${next.at} UTC`);
    expect([await invitationsOf(inviter.accountId), await invitationsOf(other.accountId)]).toEqual([own, theirs]);
    expect(await auditCount()).toBe(audited);
    expect(await myInvitations(registered.client)).toEqual([]);

    // Others are not limited by the inviter's sending, and a member's role change is no invitation.
    await must(invite(other, other.accountId, address('colleague')));
    await admin().query(`insert into public.account_members (account_id, user_id, role) values ($1, $2, 'member')`, [inviter.accountId, registered.userId]);
    expect(await must(invite(inviter, inviter.accountId, email(registered), { budget: 9 }))).toMatchObject({ status: 'member', monthly_budget: 9 });

    // A day after the oldest send, one more may go; then the 51st is refused again.
    await oldestSendAged(inviter.userId);
    await must(invite(inviter, inviter.accountId, addresses[0]!, { role: 'owner' }));
    expect(await outcome(invite(inviter, inviter.accountId, addresses[1]!))).toMatchObject({ code: 'PT429', message: expect.stringMatching(sentTooMany) });
  });

  it('sent at once across two organisations by a user with 45 sent: exactly 5 more go', async () => {
    const inviter = await createCustomer({ balance: 0 });
    const other = await createCustomer({ balance: 0 });
    await must(invite(other, other.accountId, email(inviter), { role: 'owner' }));
    const [toOther] = await myInvitations(inviter.client);
    await must(inviter.client.rpc('accept_invitation', { p_invitation_id: toOther!.id }));
    const addresses = Array.from({ length: 15 }, (_, index) => address(`burst-${index}`));
    for (const to of addresses) await must(invite(inviter, inviter.accountId, to));
    for (const to of addresses) await must(invite(inviter, inviter.accountId, to, { budget: 2 })); // 30
    for (const to of addresses) await must(invite(inviter, inviter.accountId, to, { budget: 3 })); // 45

    // 10 more at once, half to each organisation (re-sends to one, new addresses to the other): 5 go.
    const outcomes = await Promise.all([
      ...addresses.slice(0, 5).map((to) => outcome(invite(inviter, inviter.accountId, to, { budget: 4 }))),
      ...Array.from({ length: 5 }, () => outcome(invite(inviter, other.accountId, address('burst-elsewhere')))),
    ]);
    expect(outcomes.filter((result) => result.code === null)).toHaveLength(5);
    expect(outcomes.filter((result) => result.code === 'PT429')).toHaveLength(5);
    expect(await sentBy(inviter.userId)).toBe(50);
  });
});

// The console in a real browser (Debian's chromium, as tests/console does);
// skipped on a workstation without it, never in CI.
const chromiumPath = ['/usr/bin/chromium', '/usr/bin/chromium-browser'].find((path) => existsSync(path));
const available = chromiumPath !== undefined || process.env.CI === 'true';

describe.skipIf(!available)('the console shows expiry and the limits', () => {
  let gateway: Gateway;
  let browser: Browser;

  beforeAll(async () => {
    await buildConsole();
    gateway = await startGateway({ SUPABASE_ANON_KEY: stack.anonKey }, { publicFiles: true });
    browser = await chromium.launch({ executablePath: chromiumPath, args: ['--no-sandbox'] });
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await gateway?.close();
  });

  async function signIn(page: Page, to: string) {
    await page.goto(`${gateway.url}/console/`);
    await page.fill('#email', to);
    await page.click('#ask-code button');
    await page.waitForSelector('#enter-code:not([hidden])');
    const mail = (await (await fetch(`${stack.supabaseUrl}/auth/v1/local/outbox?email=${encodeURIComponent(to)}`)).json()) as Array<{ code: string }>;
    await page.fill('#code', mail.at(-1)!.code);
    await page.click('#enter-code button');
    await page.waitForSelector('#signed-in-as');
  }

  it('the invitee sees only what has not expired, with its expiry; the owner sees an expired one marked, sends it again, and reads each refusal', { timeout: 90_000 }, async () => {
    const owner = await createCustomer({ balance: 0 });
    const [invitee, otherOwner] = await Promise.all([createCustomer({ balance: 0 }), createCustomer({ balance: 0 })]);
    await must(owner.client.rpc('set_organisation_name', { p_account_id: owner.accountId, p_name: 'Current Co' }));
    await must(otherOwner.client.rpc('set_organisation_name', { p_account_id: otherOwner.accountId, p_name: 'Lapsed Ltd' }));
    const expiredAddress = address('lapsed');
    await must(invite(otherOwner, otherOwner.accountId, email(invitee)));
    await sentAgo(otherOwner.accountId, email(invitee), '15 days');
    // The owner's organisation: the invitee and 18 more pending, and the expired address: 19 pending, 1 expired.
    await must(invite(owner, owner.accountId, email(invitee)));
    await must(invite(owner, owner.accountId, expiredAddress));
    await sentAgo(owner.accountId, expiredAddress, '15 days');
    const rest = Array.from({ length: 18 }, (_, index) => address(`page-${index}`));
    for (const to of rest) await must(invite(owner, owner.accountId, to));

    const inviteePage = await browser.newPage();
    try {
      await signIn(inviteePage, email(invitee));
      await inviteePage.waitForSelector('[data-accept-invitation]');
      const text = await inviteePage.textContent('#organisations');
      expect(text).toContain('Current Co');
      expect(text).toContain('Expires');
      expect(text).not.toContain('Lapsed Ltd');
      expect(await inviteePage.locator('[data-accept-invitation]').count()).toBe(1);
    } finally {
      await inviteePage.close();
    }

    const page = await browser.newPage();
    try {
      await signIn(page, email(owner));
      const own = `[data-owned-organisation="${owner.accountId}"]`;
      await page.waitForSelector(`${own} [data-expired="${expiredAddress}"]`);
      expect(await page.textContent(`${own} [data-expired="${expiredAddress}"]`)).toMatch(/^Expired /);
      expect(await page.locator(`${own} [data-expired]`).count()).toBe(1);
      expect(await page.locator(`${own} [data-send-again]`).count()).toBe(1);

      // The 20th pending goes; sending the expired one again would be the 21st: refused, in the database's words.
      const newcomer = address('newcomer');
      await page.fill(`${own} [data-invite] [name="email"]`, newcomer);
      await page.click(`${own} [data-invite] button`);
      await expect.poll(() => page.textContent('#organisations-message')).toBe(`Invited ${newcomer}: they join when they accept.`);
      await page.click(`${own} [data-send-again="${expiredAddress}"]`);
      await expect.poll(() => page.textContent('#organisations-message')).toBe(`Not done: ${organisationFull}`);
      expect(await page.getAttribute('#organisations-message', 'class')).toBe('error');

      // One withdrawn: sent again, it is pending, no longer marked expired.
      await page.click(`${own} [data-withdraw="${newcomer}"]`);
      await expect.poll(() => page.textContent('#organisations-message')).toBe(`Withdrew the invitation of ${newcomer}.`);
      await page.click(`${own} [data-send-again="${expiredAddress}"]`);
      await expect.poll(() => page.textContent('#organisations-message')).toBe(`Sent the invitation of ${expiredAddress} again.`);
      expect(await page.locator(`${own} [data-expired]`).count()).toBe(0);
      expect(await pendingCount(owner.accountId)).toBe(20);

      // The owner's 50th send in a day was the last: the next, from the page, is refused in the database's words.
      const sent = await sentBy(owner.userId);
      for (let index = sent; index < 50; index++) await must(invite(owner, owner.accountId, rest[index % rest.length]!));
      await page.fill(`${own} [data-invite] [name="email"]`, rest[0]!);
      await page.click(`${own} [data-invite] button`);
      await expect.poll(() => page.textContent('#organisations-message')).toMatch(new RegExp(`^Not done: ${sentTooMany.source.slice(1)}`));
    } finally {
      await page.close();
    }
  });
});

import type { SupabaseClient } from '@supabase/supabase-js';
import { dollars, el, section, table, when } from './format.ts';

// Organisations on the customer's page: the invitations sent to the user
// (accept or decline), the organisations they belong to, and, for each account
// they own (their own, and any where a member was made owner), its name,
// invitations by email, what is pending or expired (send again, withdraw) and
// the members (remove). A member's own keys of an organisation are listed with
// a button that revokes one, through the gateway as the customer's own keys are.
// Everything goes through the database's functions (set_member,
// accept_invitation, decline_invitation, withdraw_invitation, remove_member,
// set_organisation_name) and reads under row-level security, which decides:
// the database expires invitations and refuses those past its limits (per
// organisation, per inviting user), and the refusal's message is shown as it is.

interface Invitation {
  id: string;
  account_id: string;
  organisation_name: string | null;
  owner_email: string | null;
  invited_by_email: string | null;
  role: string;
  monthly_budget: number | null;
  invited_at: string;
  expires_at: string;
}

/** An invitation as its organisation's owners read it: expired ones stay until withdrawn or sent again. */
interface SentInvitation {
  email: string;
  invited_by: string | null;
  role: string;
  monthly_budget: number | null;
  invited_at: string;
  expires_at: string;
}

interface Membership {
  account_id: string;
  role: string;
  monthly_budget: number | null;
}

interface MemberKey {
  id: string;
  account_id: string;
  name: string;
  prefix: string;
  created_at: string;
  revoked_at: string | null;
}

interface OrganisationAccount {
  id: string;
  user_id: string;
  name: string | null;
  balance: number;
  held: number;
  credit_limit: number;
}

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw new Error(error.message);
  return data as T;
}

/** Whole micro-units from dollars typed by a person ("1.25" → 1,250,000); null for none, undefined when it is not an amount. */
function budgetFromDollars(text: string): number | null | undefined {
  const typed = text.trim();
  if (typed === '') return null;
  if (!/^\d+(\.\d{1,6})?$/.test(typed)) return undefined;
  const [whole = '0', fraction = ''] = typed.split('.');
  return Number(whole) * 1_000_000 + Number(fraction.padEnd(6, '0'));
}

// Headings inside the section, smaller than the section's own (index.html styles h2 only).
const heading = (level: 'h3' | 'h4', text: string) => el(level, { style: `font-size: ${level === 'h3' ? '.95rem' : '.85rem'}; margin: .9rem 0 .4rem` }, text);
const budget = (micro: number | null) => (micro === null ? 'none' : dollars(micro));
const organisationName = (invitation: Pick<Invitation, 'organisation_name' | 'owner_email'>) =>
  invitation.organisation_name ?? `the organisation of ${invitation.owner_email ?? 'an unnamed owner'}`;

export function organisationsSection(supabase: SupabaseClient, userId: string): { element: HTMLElement; reload: () => Promise<void> } {
  // What the last action said, kept across the section's reload.
  let said: { text: string; className: string } = { text: '', className: 'note' };
  const act = async (work: () => PromiseLike<{ data: unknown; error: { message: string } | null }>, done: (data: unknown) => string) => {
    const { data, error } = await work();
    said = error ? { text: `Not done: ${error.message}`, className: 'error' } : { text: done(data), className: 'note' };
    await organisations.reload();
  };

  const organisations = section('Organisations', async () => {
    const [invitations, memberships, memberKeys] = await Promise.all([
      must<Invitation[]>(supabase.rpc('my_invitations')),
      must<Membership[]>(supabase.from('account_members').select('account_id,role,monthly_budget').eq('user_id', userId)),
      must<MemberKey[]>(supabase.from('api_keys').select('id,account_id,name,prefix,created_at,revoked_at').eq('member_user_id', userId).order('created_at', { ascending: false })),
    ]);
    const accounts = await must<OrganisationAccount[]>(supabase.from('accounts').select('id,user_id,name,balance,held,credit_limit'));
    const own = accounts.find((account) => account.user_id === userId);
    const byId = new Map(accounts.map((account) => [account.id, account]));
    const parts: Node[] = [el('p', { class: said.className, id: 'organisations-message' }, said.text)];

    // Invitations to this user: nothing is granted until they accept.
    const answer = (invitation: Invitation) => {
      const accept = el('button', { type: 'button', class: 'primary', 'data-accept-invitation': invitation.id }, 'Accept');
      accept.addEventListener('click', () => void act(() => supabase.rpc('accept_invitation', { p_invitation_id: invitation.id }), () => `You joined ${organisationName(invitation)}.`));
      const decline = el('button', { type: 'button', 'data-decline-invitation': invitation.id }, 'Decline');
      decline.addEventListener('click', () => void act(() => supabase.rpc('decline_invitation', { p_invitation_id: invitation.id }), () => `You declined ${organisationName(invitation)}.`));
      return el('span', {}, accept, ' ', decline);
    };
    if (invitations.length) {
      parts.push(
        heading('h3', 'Invitations to you'),
        el('p', { class: 'note' }, 'Accepting lets you make keys that spend the organisation\'s credits, within your monthly budget.'),
        table(
          [['Organisation'], ['Invited by'], ['Role'], ['Your monthly budget', true], ['Invited'], ['Expires'], ['']],
          invitations.map((invitation) => [
            organisationName(invitation), invitation.invited_by_email ?? '—', invitation.role, budget(invitation.monthly_budget),
            when(invitation.invited_at), when(invitation.expires_at), answer(invitation),
          ]),
          '',
        ),
      );
    }

    // Organisations this user belongs to (not their own account), where they make keys that spend its credits.
    const memberKey = (accountId: string) => {
      const button = el('button', { type: 'button', 'data-member-key': accountId }, 'Create key');
      button.addEventListener('click', async () => {
        const name = prompt('Name of the new key on this organisation');
        if (!name) return;
        const { data, error } = await supabase.rpc('create_member_api_key', { p_account_id: accountId, p_name: name.trim() });
        if (error) {
          said = { text: `Not created: ${error.message}`, className: 'error' };
          await organisations.reload();
          return;
        }
        said = { text: '', className: 'note' };
        await organisations.reload();
        // Shown once: the database keeps only its hash.
        document.querySelector('#organisations .created')?.replaceChildren(
          el('p', {}, 'Your new key on the organisation (copy it now; it is not shown again):'),
          el('div', { class: 'secret', 'data-new-member-key': '' }, String((data as { key: string }).key)),
        );
      });
      return button;
    };
    if (memberships.length) {
      parts.push(
        heading('h3', 'Organisations you belong to'),
        table(
          [['Organisation'], ['Role'], ['Your monthly budget', true], ['Available', true], ['']],
          memberships.map((membership) => {
            const account = byId.get(membership.account_id);
            return [
              account?.name ?? membership.account_id,
              membership.role,
              budget(membership.monthly_budget),
              account ? dollars(account.balance - account.held + account.credit_limit) : '—',
              memberKey(membership.account_id),
            ];
          }),
          '',
        ),
        el('div', { class: 'created' }),
      );
    }

    // This user's keys of organisations (they spend its credits): each revocable by them.
    const revokeMemberKey = (key: MemberKey) => {
      const button = el('button', { type: 'button', 'data-revoke-member-key': key.id }, 'Revoke');
      button.addEventListener('click', async () => {
        if (!confirm('Revoke this key? Requests with it will be refused.')) return;
        // Through the gateway, which revokes it as this user and then tells every instance.
        const { data: { session } } = await supabase.auth.getSession();
        const response = await fetch(`/console/keys/${encodeURIComponent(key.id)}/revoke`, {
          method: 'POST',
          headers: { authorization: `Bearer ${session?.access_token ?? ''}` },
        });
        const answer = (await response.json().catch(() => ({}))) as { error?: { message?: string }; note?: string };
        said = response.ok
          ? { text: `Revoked ${key.name}.${answer.note ? ` ${answer.note}` : ''}`, className: 'note' }
          : { text: `Not revoked: ${answer.error?.message ?? `HTTP ${response.status}`}`, className: 'error' };
        await organisations.reload();
      });
      return button;
    };
    if (memberKeys.length) {
      parts.push(
        heading('h3', 'Your keys on organisations'),
        table(
          [['Organisation'], ['Name'], ['Key'], ['Created'], ['State'], ['']],
          memberKeys.map((key) => [
            byId.get(key.account_id)?.name ?? key.account_id,
            key.name,
            `${key.prefix}…`,
            when(key.created_at),
            key.revoked_at ? `revoked ${when(key.revoked_at)}` : 'active',
            key.revoked_at ? '' : revokeMemberKey(key),
          ]),
          '',
        ),
      );
    }

    // The accounts this user owns: their own first, then those where they were made owner.
    const owned = [...(own ? [own.id] : []), ...memberships.filter((membership) => membership.role === 'owner').map((membership) => membership.account_id)];
    for (const accountId of owned) parts.push(await ownedOrganisation(accountId, accountId === own?.id, byId.get(accountId)));
    return el('div', {}, ...parts);
  }, 'organisations');

  async function ownedOrganisation(accountId: string, isOwn: boolean, account: OrganisationAccount | undefined): Promise<Node> {
    const name = account?.name ?? null;
    const [pending, members] = await Promise.all([
      must<SentInvitation[]>(
        supabase.from('member_invitations').select('email,role,monthly_budget,invited_by,invited_at,expires_at').eq('account_id', accountId).order('invited_at'),
      ),
      must<Array<{ user_id: string; invited_email: string | null; role: string; monthly_budget: number | null; added_at: string }>>(
        supabase.from('account_members').select('user_id,invited_email,role,monthly_budget,added_at').eq('account_id', accountId).order('added_at'),
      ),
    ]);

    const nameInput = el('input', { value: name ?? '', maxlength: '100', placeholder: 'Organisation name', 'aria-label': 'Organisation name' }) as HTMLInputElement;
    const nameForm = el('form', { 'data-organisation-name': accountId }, nameInput, el('button', { type: 'submit' }, 'Save name'));
    nameForm.addEventListener('submit', (event) => {
      event.preventDefault();
      void act(() => supabase.rpc('set_organisation_name', { p_account_id: accountId, p_name: nameInput.value }), () => 'Name saved.');
    });

    const email = el('input', { type: 'email', required: '', placeholder: 'colleague@example.com', 'aria-label': 'Email to invite', name: 'email' }) as HTMLInputElement;
    const role = el('select', { 'aria-label': 'Role', name: 'role' }, el('option', { value: 'member' }, 'member'), el('option', { value: 'owner' }, 'owner')) as HTMLSelectElement;
    const monthly = el('input', { inputmode: 'decimal', placeholder: 'Monthly budget $', 'aria-label': 'Monthly budget in dollars', name: 'budget' }) as HTMLInputElement;
    const invite = el('form', { 'data-invite': accountId }, email, role, monthly, el('button', { type: 'submit', class: 'primary' }, 'Invite or update'));
    invite.addEventListener('submit', (event) => {
      event.preventDefault();
      const micro = budgetFromDollars(monthly.value);
      if (micro === undefined) {
        said = { text: 'Enter a monthly budget in dollars, or leave it empty for none.', className: 'error' };
        void organisations.reload();
        return;
      }
      const address = email.value.trim();
      void act(
        () => supabase.rpc('set_member', { p_account_id: accountId, p_email: address, p_role: role.value, p_monthly_budget: micro }),
        (data) => ((data as { status?: string }).status === 'member' ? `Changed the role and budget of ${address}.` : `Invited ${address}: they join when they accept.`),
      );
    });

    const withdraw = (address: string) => {
      const button = el('button', { type: 'button', 'data-withdraw': address }, 'Withdraw');
      button.addEventListener('click', () => void act(() => supabase.rpc('withdraw_invitation', { p_account_id: accountId, p_email: address }), () => `Withdrew the invitation of ${address}.`));
      return button;
    };
    // Sending an invitation again (same role and budget) renews it; it counts against the same limits as a new one.
    const sendAgain = (invitation: SentInvitation) => {
      const button = el('button', { type: 'button', 'data-send-again': invitation.email }, 'Send again');
      button.addEventListener('click', () => void act(
        () => supabase.rpc('set_member', { p_account_id: accountId, p_email: invitation.email, p_role: invitation.role, p_monthly_budget: invitation.monthly_budget }),
        () => `Sent the invitation of ${invitation.email} again.`,
      ));
      return button;
    };
    // The page's clock decides only how a row is shown; the database decides whether it can be accepted.
    const loadedAt = Date.now();
    const expired = (invitation: SentInvitation) => new Date(invitation.expires_at).getTime() <= loadedAt;
    const expiry = (invitation: SentInvitation) =>
      expired(invitation)
        ? el('span', { class: 'error', 'data-expired': invitation.email }, `Expired ${when(invitation.expires_at)}`)
        : el('span', {}, `Expires ${when(invitation.expires_at)}`);
    // Who sent an invitation: this user, the account's user, or a member made owner (by the address they were invited at).
    const sender = (invitation: SentInvitation) => {
      if (invitation.invited_by === null) return '—';
      if (invitation.invited_by === userId) return 'you';
      const member = members.find((row) => row.user_id === invitation.invited_by);
      if (member) return member.invited_email ?? member.user_id;
      return invitation.invited_by === account?.user_id ? 'the account\'s owner' : invitation.invited_by;
    };
    const remove = (member: { user_id: string; invited_email: string | null }) => {
      const button = el('button', { type: 'button', 'data-remove-member': member.user_id }, 'Remove');
      button.addEventListener('click', () => {
        if (!confirm('Remove this member? Their keys of the organisation are revoked.')) return;
        void act(() => supabase.rpc('remove_member', { p_account_id: accountId, p_user_id: member.user_id }), () => `Removed ${member.invited_email ?? 'the member'}.`);
      });
      return button;
    };

    return el(
      'div',
      { 'data-owned-organisation': accountId },
      heading('h3', isOwn ? 'Your organisation' : name ?? accountId),
      nameForm,
      invite,
      el(
        'p',
        { class: 'note' },
        'A monthly budget left empty is none. An invitation grants nothing until it is accepted by whoever signs in with that address. '
          + 'It expires if not accepted in time; inviting the address again renews it. An organisation has only so many invitations pending, and you send only so many a day.',
      ),
      heading('h4', 'Invitations sent'),
      table(
        [['Email'], ['Sent by'], ['Role'], ['Monthly budget', true], ['Invited'], ['Expiry'], ['']],
        pending.map((invitation) => [
          invitation.email, el('span', { 'data-sent-by': invitation.email }, sender(invitation)), invitation.role, budget(invitation.monthly_budget), when(invitation.invited_at), expiry(invitation),
          expired(invitation) ? el('span', {}, sendAgain(invitation), ' ', withdraw(invitation.email)) : withdraw(invitation.email),
        ]),
        'No invitations waiting for an answer.',
      ),
      heading('h4', 'Members'),
      table(
        [['Member'], ['Role'], ['Monthly budget', true], ['Since'], ['']],
        members.map((member) => [member.invited_email ?? member.user_id, member.role, budget(member.monthly_budget), when(member.added_at), remove(member)]),
        'No members yet.',
      ),
    );
  }

  return organisations;
}

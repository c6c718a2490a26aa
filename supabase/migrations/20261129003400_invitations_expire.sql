-- Invitations to an organisation expire, and cannot be sent in bulk.
--
-- What was wrong (20261129003100_members_by_invitation):
--
-- 1. An invitation waited forever: one sent a year ago, to an address that
--    has since changed hands, could still be accepted by whoever signs in with
--    it, and the invitee's console listed every invitation ever sent to them.
-- 2. Every user owns an account, so anyone could name theirs as they liked
--    ("Billing Support", say) and invite any number of addresses, each of which
--    then showed the invitation in its console: a way to put text of one's
--    choosing in front of anyone with an account here, as often as one liked.
--
-- Now:
--
-- - An invitation expires 14 days after it was last sent (expires_at, computed
--   from invited_at, which set_member already moves to now() on every send).
--   Inviting the same address again renews it. An expired invitation is not in
--   my_invitations(), and accept_invitation refuses it (PT410, saying when it
--   expired). Declining or withdrawing it still works: either only removes it.
-- - Owners still read expired invitations (marked by expires_at, in the past)
--   until they withdraw them or send them again: an invitation that silently
--   vanished from the owner's list would look accepted or declined. Nothing
--   purges them: no bookkeeping job runs daily (the jobs run every minute, every
--   ten minutes and hourly, each about money), and the limit below bounds how
--   many rows anyone makes. Invitations that existed before this expire 14 days
--   after they were sent, like any other.
-- - An organisation has at most 20 pending (unexpired) invitations: sending one
--   more is refused (PT429) until one is accepted, declined, withdrawn or
--   expires. Sending again to an address already pending does not add one.
-- - An inviting user sends at most 50 invitations in any 24 hours, across every
--   organisation they own, re-sends included (each changes what the invitee
--   sees): the 51st is refused (PT429), saying when the next may go. Sends are
--   counted from the audit log's invite_member entries (one per send, written in
--   the same transaction, append-only), so withdrawing and inviting again counts
--   too, and nobody can make the count forget.
-- - set_member still answers the same whether or not an address has an
--   account: the limits count invitations only, never look up a user, and apply
--   before anything is written, so a refusal writes nothing (no invitation, no
--   audit entry). Changing a member's role or budget is not an invitation and is
--   not limited.
--
-- Locks: none of this is money. set_member takes two transaction-level advisory
-- locks before it counts, always in this order: the organisation's, then the
-- inviting user's. So two owners inviting to one organisation at once, or one
-- user inviting to two organisations at once, count one after the other and
-- never both pass the limit. No money function takes either lock.

-- Expiry ----------------------------------------------------------------------

-- In UTC, so the expression is immutable (a timestamptz plus days depends on the
-- session's time zone) and can be stored.
alter table public.member_invitations
  add column expires_at timestamptz not null generated always as ((invited_at at time zone 'UTC' + interval '14 days') at time zone 'UTC') stored;
comment on column public.member_invitations.expires_at is 'When the invitation expires: 14 days after it was last sent (invited_at). Expired: not listed to the invitee, not accepted; kept for the owners to see until withdrawn or sent again.';
comment on table public.member_invitations is 'Invitations to an organisation, by email (trimmed, lower case): pending until accepted, declined or withdrawn, or expired 14 days after last sent (expires_at). Grants nothing.';

-- Invitations sent by a user in the last 24 hours, counted from the audit log.
create index audit_log_invitations_sent_idx on public.audit_log (actor_id, at) where action = 'invite_member';

-- Refuses an invitation of p_email to p_account_id that would take the
-- organisation past 20 pending invitations, or the signed-in user past 50 sent
-- in 24 hours. Looks up no user. Takes the organisation's advisory lock, then
-- the user's, so concurrent sends count one after the other.
create function private.require_invitation_allowed(p_account_id uuid, p_email text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_pending integer;
  v_sent integer;
  v_oldest timestamptz;
begin
  perform pg_advisory_xact_lock(hashtextextended('member_invitations:' || p_account_id::text, 0));
  perform pg_advisory_xact_lock(hashtextextended('invitations_sent:' || coalesce((select auth.uid())::text, ''), 0));

  -- Sending again to an address already pending renews it and adds none.
  select count(*) into v_pending
    from public.member_invitations
   where account_id = p_account_id and expires_at > now() and email <> p_email;
  if v_pending >= 20 then
    raise exception 'this organisation has % pending invitations, the most it may have: withdraw one, or wait until one is accepted, declined or expires', v_pending
      using errcode = 'PT429';
  end if;

  select count(*), min(at) into v_sent, v_oldest
    from public.audit_log
   where action = 'invite_member' and actor_id = (select auth.uid()) and at > now() - interval '24 hours';
  if v_sent >= 50 then
    raise exception 'you sent % invitations in the last 24 hours, the most anyone may: send more after % UTC', v_sent,
      to_char((v_oldest + interval '24 hours') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
      using errcode = 'PT429';
  end if;
end;
$$;
revoke all on function private.require_invitation_allowed(uuid, text) from public;

-- Redefined whole (20261129003100): an invitation is refused past the limits
-- (private.require_invitation_allowed) before anything is written. The member
-- path, the answer's shape and everything else are unchanged; a send still
-- moves invited_at to now(), which now also renews the expiry.
create or replace function public.set_member(p_account_id uuid, p_email text, p_role text default 'member', p_monthly_budget bigint default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_email text := lower(trim(coalesce(p_email, '')));
  v_role text := coalesce(p_role, 'member');
  v_member public.account_members;
  v_invitation public.member_invitations;
begin
  perform private.require_owner(p_account_id);
  if char_length(v_email) > 254 or v_email !~ '^[^@[:space:]]+@[^@[:space:]]+$' then
    raise exception 'email must be an address, like name@example.com' using errcode = '22023';
  end if;
  if v_role not in ('owner', 'member') or p_monthly_budget < 0 then
    raise exception 'role is owner or member, and a budget is zero or more' using errcode = '22023';
  end if;
  if exists (select 1 from public.accounts a join auth.users u on u.id = a.user_id where a.id = p_account_id and lower(u.email) = v_email) then
    raise exception 'the account''s own user is its owner already' using errcode = '22023';
  end if;

  -- A member already: their role and budget change, as before.
  update public.account_members m
     set role = v_role, monthly_budget = p_monthly_budget
    from auth.users u
   where m.account_id = p_account_id and u.id = m.user_id and lower(u.email) = v_email
  returning m.* into v_member;
  if found then
    perform private.audit('set_member', p_account_id::text,
      jsonb_build_object('user_id', v_member.user_id, 'role', v_member.role, 'monthly_budget', v_member.monthly_budget));
    return jsonb_build_object('status', 'member', 'account_id', v_member.account_id, 'user_id', v_member.user_id,
                              'role', v_member.role, 'monthly_budget', v_member.monthly_budget, 'added_at', v_member.added_at);
  end if;

  -- Anyone else is invited, whether or not the address is anyone's, within the limits.
  perform private.require_invitation_allowed(p_account_id, v_email);
  insert into public.member_invitations (account_id, email, role, monthly_budget, invited_by)
  values (p_account_id, v_email, v_role, p_monthly_budget, (select auth.uid()))
  on conflict (account_id, email) do update
     set role = excluded.role, monthly_budget = excluded.monthly_budget, invited_by = excluded.invited_by, invited_at = now()
  returning * into v_invitation;
  perform private.audit('invite_member', p_account_id::text,
    jsonb_build_object('invitation_id', v_invitation.id, 'email', v_invitation.email, 'role', v_invitation.role, 'monthly_budget', v_invitation.monthly_budget));
  return jsonb_build_object('status', 'invited', 'id', v_invitation.id, 'account_id', v_invitation.account_id, 'email', v_invitation.email,
                            'role', v_invitation.role, 'monthly_budget', v_invitation.monthly_budget, 'invited_at', v_invitation.invited_at);
end;
$$;

-- Redefined whole (20261129003100): expired invitations are left out, and each
-- one listed says when it expires. Otherwise unchanged.
create or replace function public.my_invitations()
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_email text := private.confirmed_email();
begin
  if v_email is null then
    return '[]';
  end if;
  return coalesce((
    select jsonb_agg(jsonb_build_object(
             'id', i.id, 'account_id', i.account_id, 'organisation_name', a.name,
             'owner_email', account_user.email, 'invited_by_email', inviter.email,
             'role', i.role, 'monthly_budget', i.monthly_budget, 'invited_at', i.invited_at, 'expires_at', i.expires_at)
             order by i.invited_at, i.id)
      from public.member_invitations i
      join public.accounts a on a.id = i.account_id
      join auth.users account_user on account_user.id = a.user_id
      left join auth.users inviter on inviter.id = i.invited_by
     where i.email = v_email and i.expires_at > now()), '[]');
end;
$$;

-- Redefined whole (20261129003100): an expired invitation is refused (PT410,
-- with when it expired); it stays for the owners to see, or to send again.
-- Otherwise unchanged.
create or replace function public.accept_invitation(p_invitation_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation public.member_invitations;
  v_member public.account_members;
begin
  -- Locked, so a withdrawal (or a send that renews it) at the same moment goes
  -- first (and this sees its outcome) or after.
  select * into v_invitation from public.member_invitations
   where id = p_invitation_id and email = private.confirmed_email()
     for update;
  if not found then
    raise exception 'no such invitation to you: it was withdrawn, declined or accepted already' using errcode = 'PT404';
  end if;
  if v_invitation.expires_at <= now() then
    raise exception 'this invitation expired on % UTC: ask the organisation to invite you again',
      to_char(v_invitation.expires_at at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
      using errcode = 'PT410';
  end if;
  if exists (select 1 from public.accounts where id = v_invitation.account_id and user_id = (select auth.uid())) then
    raise exception 'this organisation is your own account: decline the invitation' using errcode = '22023';
  end if;
  insert into public.account_members (account_id, user_id, role, monthly_budget, invited_email)
  values (v_invitation.account_id, (select auth.uid()), v_invitation.role, v_invitation.monthly_budget, v_invitation.email)
  on conflict (account_id, user_id) do nothing
  returning * into v_member;
  if not found then
    -- A member already (their address changed to one invited): the membership stays as it is.
    select * into v_member from public.account_members where account_id = v_invitation.account_id and user_id = (select auth.uid());
  end if;
  delete from public.member_invitations where id = v_invitation.id;
  perform private.audit('accept_invitation', v_invitation.account_id::text,
    jsonb_build_object('invitation_id', v_invitation.id, 'email', v_invitation.email, 'user_id', v_member.user_id,
                       'role', v_member.role, 'monthly_budget', v_member.monthly_budget));
  return jsonb_build_object('status', 'member', 'account_id', v_member.account_id, 'user_id', v_member.user_id,
                            'role', v_member.role, 'monthly_budget', v_member.monthly_budget, 'added_at', v_member.added_at);
end;
$$;

-- Organisations, part two: nobody joins an organisation without accepting an
-- invitation, and a member reads the organisation's balance, not its internal
-- columns.
--
-- What was wrong (20261127001100_organisations):
--
-- 1. set_member(account, email, role, budget) made any registered user a member
--    at once, without asking them, and every user owns an account (an
--    organisation), so anyone could add anyone to theirs. It also answered
--    differently when no user had the email (PT404, "they sign up first") and
--    returned the member's user id: an oracle for who has an account here.
-- 2. A member read the organisation's whole accounts row: accounts was granted
--    whole to authenticated, and the member policy shows the organisation's
--    row, so stripe_customer_id and flagged_reason (the operator's: Stripe's id
--    and why a payment was disputed) were a member's to read.
--
-- Now:
--
-- - set_member, for someone who is not a member, records a pending invitation
--   of the email (public.member_invitations): it looks up no user, so its
--   answer ({status: 'invited', id, account_id, email, role, monthly_budget,
--   invited_at}) is the same whether or not anyone has that email. Inviting the
--   same email again changes the pending invitation. For someone who is a member
--   already (matched by the email they have now) it changes role and budget, as
--   before ({status: 'member', ...}). The account's own user is refused, as before.
-- - The invitee is whoever signs in with that email, confirmed: someone who
--   signs up later with it too, and never someone whose address is unconfirmed
--   (else signing up with another's address would take their invitations). They
--   see their invitations with my_invitations() (the organisation's name, its
--   owner's and the inviter's email, the role and the budget) and accept
--   (accept_invitation) or decline (decline_invitation) each.
-- - An owner sees the organisation's pending invitations (RLS on
--   member_invitations) and withdraws one (withdraw_invitation).
-- - A pending invitation grants nothing: every grant of an organisation (its
--   keys, its rows, its balance) follows account_members, which only
--   accept_invitation writes (it records the address invited, invited_email, so
--   an owner's list names the member).
-- - Invitations do not expire: the project has no convention for how long
--   something waits on a person (keys and redemption codes expire only when
--   whoever made them says so); an owner withdraws what they no longer mean.
-- - An organisation may have a name (accounts.name, set by an owner with
--   set_organisation_name), which is what an invitee sees it by.
-- - accounts is granted column by column, as usage_events is
--   (20261127000200_private_costs_and_plan_limits): authenticated reads every
--   column but stripe_customer_id and flagged_reason, which are for nobody to
--   read through the table, the account's own user included (the console never
--   read them). Owners (the account's user, or a member made owner) read every
--   column through account_details(account).
-- - Every step is audited, with the account as the subject: invite_member,
--   set_member, withdraw_invitation, accept_invitation, decline_invitation,
--   set_organisation_name. An invitation's entry names the address, never whose
--   it is.
-- - Memberships that exist stay as they are.
--
-- Locks: none of this is money. accept_invitation locks the invitation's row,
-- then inserts the membership (a key-share lock on the account through its
-- foreign key, which no money function's FOR NO KEY UPDATE waits for);
-- set_organisation_name updates the account's row alone, briefly.

-- The organisation's name -----------------------------------------------------

alter table public.accounts add column name text,
  add constraint accounts_name_length check (name is null or (char_length(name) between 1 and 100 and name = trim(name)));
comment on column public.accounts.name is 'The organisation''s name, set by an owner (set_organisation_name); null: none. What an invitee sees it by.';

-- Members read the balance; the internal columns are for owners ----------------

revoke select on public.accounts from authenticated;
grant select (id, user_id, balance, held, credit_limit, low_balance_threshold, plan, balance_state, created_at, updated_at, name)
  on public.accounts to authenticated;

-- Invitations -----------------------------------------------------------------

create table public.member_invitations (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null references public.accounts (id),
  email text not null,
  role text not null default 'member',
  monthly_budget bigint,
  invited_by uuid references auth.users (id) on delete set null,
  invited_at timestamptz not null default now(),
  constraint member_invitations_one_per_email unique (account_id, email),
  constraint member_invitations_email check (char_length(email) <= 254 and email = lower(trim(email)) and email ~ '^[^@[:space:]]+@[^@[:space:]]+$'),
  constraint member_invitations_role check (role in ('owner', 'member')),
  constraint member_invitations_budget check (monthly_budget is null or monthly_budget >= 0)
);
comment on table public.member_invitations is 'Pending invitations to an organisation, by email (trimmed, lower case): accepted, declined or withdrawn, never expired. Grants nothing.';
create index member_invitations_email_idx on public.member_invitations (email);
alter table public.member_invitations enable row level security;
-- Invitees read theirs through my_invitations() (which adds the organisation's
-- name), so only owners have a policy here.
create policy "Owners read their organisations' pending invitations."
  on public.member_invitations for select to authenticated
  using (account_id in (select public.my_owned_accounts()));
grant select on public.member_invitations to authenticated, service_role;

alter table public.account_members add column invited_email text;
comment on column public.account_members.invited_email is 'The address the member was invited at and accepted; null: a member from before invitations.';

-- The caller's email, lower case, when it is confirmed; null otherwise.
create function private.confirmed_email()
returns text
language sql stable
set search_path = ''
as $$
  select lower(u.email) from auth.users u where u.id = (select auth.uid()) and u.email_confirmed_at is not null
$$;
revoke all on function private.confirmed_email() from public;

-- Redefined whole (20261127001100): for someone not yet a member it records an
-- invitation, and looks up no user; for a member, unchanged. The email is
-- checked to be an address.
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

  -- Anyone else is invited, whether or not the address is anyone's.
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

-- An owner takes back a pending invitation (by the address it was sent to).
create function public.withdraw_invitation(p_account_id uuid, p_email text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation public.member_invitations;
begin
  perform private.require_owner(p_account_id);
  delete from public.member_invitations
   where account_id = p_account_id and email = lower(trim(coalesce(p_email, '')))
  returning * into v_invitation;
  if not found then
    raise exception 'no pending invitation of % to this organisation', p_email using errcode = 'PT404';
  end if;
  perform private.audit('withdraw_invitation', p_account_id::text, jsonb_build_object('invitation_id', v_invitation.id, 'email', v_invitation.email));
  return jsonb_build_object('withdrawn', v_invitation.email, 'account_id', p_account_id);
end;
$$;

-- The caller's pending invitations: by their confirmed email, with who sent them.
create function public.my_invitations()
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
             'role', i.role, 'monthly_budget', i.monthly_budget, 'invited_at', i.invited_at)
             order by i.invited_at, i.id)
      from public.member_invitations i
      join public.accounts a on a.id = i.account_id
      join auth.users account_user on account_user.id = a.user_id
      left join auth.users inviter on inviter.id = i.invited_by
     where i.email = v_email), '[]');
end;
$$;

-- The invitee joins: a member with the invitation's role and budget.
create function public.accept_invitation(p_invitation_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation public.member_invitations;
  v_member public.account_members;
begin
  -- Locked, so a withdrawal at the same moment goes first (and this finds
  -- nothing) or after (and finds nothing to withdraw).
  select * into v_invitation from public.member_invitations
   where id = p_invitation_id and email = private.confirmed_email()
     for update;
  if not found then
    raise exception 'no such invitation to you: it was withdrawn, declined or accepted already' using errcode = 'PT404';
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

-- The invitee says no: the invitation goes, nobody is added.
create function public.decline_invitation(p_invitation_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invitation public.member_invitations;
begin
  delete from public.member_invitations
   where id = p_invitation_id and email = private.confirmed_email()
  returning * into v_invitation;
  if not found then
    raise exception 'no such invitation to you: it was withdrawn, declined or accepted already' using errcode = 'PT404';
  end if;
  perform private.audit('decline_invitation', v_invitation.account_id::text, jsonb_build_object('invitation_id', v_invitation.id, 'email', v_invitation.email));
  return jsonb_build_object('declined', v_invitation.id, 'account_id', v_invitation.account_id);
end;
$$;

-- An owner names the organisation (null or blank: no name).
create function public.set_organisation_name(p_account_id uuid, p_name text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_name text := nullif(trim(p_name), '');
begin
  perform private.require_owner(p_account_id);
  if char_length(v_name) > 100 then
    raise exception 'a name is 1 to 100 characters (or none)' using errcode = '22023';
  end if;
  update public.accounts set name = v_name, updated_at = now() where id = p_account_id;
  perform private.audit('set_organisation_name', p_account_id::text, jsonb_build_object('name', v_name));
  return jsonb_build_object('account_id', p_account_id, 'name', v_name);
end;
$$;

-- Every column of the account, the internal ones included: owners only.
create function public.account_details(p_account_id uuid)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_owner(p_account_id);
  return (select to_jsonb(a) from public.accounts a where a.id = p_account_id);
end;
$$;

revoke all on function public.withdraw_invitation(uuid, text), public.my_invitations(), public.accept_invitation(uuid),
  public.decline_invitation(uuid), public.set_organisation_name(uuid, text), public.account_details(uuid)
  from public, anon, service_role;
grant execute on function public.withdraw_invitation(uuid, text), public.my_invitations(), public.accept_invitation(uuid),
  public.decline_invitation(uuid), public.set_organisation_name(uuid, text), public.account_details(uuid)
  to authenticated;

-- Redefined whole (20261129001000_client_grants_exactly): accounts is granted
-- column by column (not stripe_customer_id or flagged_reason), and
-- member_invitations and the invitation functions are granted. Otherwise unchanged.
create or replace function private.grant_client_privileges()
returns void
language plpgsql
set search_path = ''
as $$
begin
  revoke all on all tables in schema public from anon, authenticated;
  revoke all on all sequences in schema public from anon, authenticated;
  revoke all on all functions in schema public from anon, authenticated;

  grant select on public.account_members to authenticated;
  grant select (id, user_id, balance, held, credit_limit, low_balance_threshold, plan, balance_state, created_at, updated_at, name) on public.accounts to authenticated;
  grant select on public.alerts to authenticated;
  grant select on public.api_keys to authenticated;
  grant select on public.audit_log to authenticated;
  grant select on public.code_redemptions to authenticated;
  grant select on public.credit_grants to authenticated;
  grant select on public.credit_ledger to authenticated;
  grant select on public.credit_packs to authenticated;
  grant select on public.member_invitations to authenticated;
  grant select on public.model_prices to anon, authenticated;
  grant select on public.plans to authenticated;
  grant select on public.stripe_invoices to authenticated;
  grant select on public.stripe_payments to authenticated;
  grant update (low_balance_threshold) on public.accounts to authenticated;
  grant select (alias, model_id, created_at) on public.model_aliases to anon;
  grant select (alias, model_id, created_at) on public.model_aliases to authenticated;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to anon;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to authenticated;
  grant select (account_id, model_id, day, requests, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, amount, charged) on public.usage_daily to authenticated;
  grant select (request_id, account_id, api_key_id, model_id, provider, status, hold, max_input_tokens, max_output_tokens, choices, output_capped, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, usage_source, amount, charged, error, created_at, settled_at, hold_expired_at, web_searches, price_multiplier_bps) on public.usage_events to authenticated;
  grant execute on function public.accept_invitation(p_invitation_id uuid) to authenticated;
  grant execute on function public.account_details(p_account_id uuid) to authenticated;
  grant execute on function public.create_api_key(p_name text, p_expires_at timestamp with time zone, p_policy jsonb) to authenticated;
  grant execute on function public.create_member_api_key(p_account_id uuid, p_name text) to authenticated;
  grant execute on function public.decline_invitation(p_invitation_id uuid) to authenticated;
  grant execute on function public.is_operator() to anon, authenticated;
  grant execute on function public.my_invitations() to authenticated;
  grant execute on function public.my_organisations() to authenticated;
  grant execute on function public.my_owned_accounts() to authenticated;
  grant execute on function public.operator_alerts(p_limit integer) to authenticated;
  grant execute on function public.operator_create_code(p_code text, p_credits bigint, p_max_uses integer, p_category text, p_grant_expires_at timestamp with time zone, p_grant_lifetime interval, p_redeemable_until timestamp with time zone) to authenticated;
  grant execute on function public.operator_customers(p_search text, p_limit integer) to authenticated;
  grant execute on function public.operator_grant_credits(p_account_id uuid, p_amount bigint, p_note text) to authenticated;
  grant execute on function public.operator_models() to authenticated;
  grant execute on function public.operator_payments(p_limit integer) to authenticated;
  grant execute on function public.operator_reconcile() to authenticated;
  grant execute on function public.operator_resolve_alert(p_alert_id bigint) to authenticated;
  grant execute on function public.operator_revenue(p_days integer) to authenticated;
  grant execute on function public.operator_set_alias(p_alias text, p_model_id text) to authenticated;
  grant execute on function public.operator_update_model(p_model_id text, p_changes jsonb) to authenticated;
  grant execute on function public.redeem_code(p_code text) to authenticated;
  grant execute on function public.remove_member(p_account_id uuid, p_user_id uuid) to authenticated;
  grant execute on function public.revoke_api_key(p_key_id uuid) to authenticated;
  grant execute on function public.set_member(p_account_id uuid, p_email text, p_role text, p_monthly_budget bigint) to authenticated;
  grant execute on function public.set_organisation_name(p_account_id uuid, p_name text) to authenticated;
  grant execute on function public.update_api_key_policy(p_key_id uuid, p_policy jsonb) to authenticated;
  grant execute on function public.withdraw_invitation(p_account_id uuid, p_email text) to authenticated;
end;
$$;
revoke all on function private.grant_client_privileges() from public, anon, authenticated;

select private.grant_client_privileges();

-- Holes in organisations, renames and key revocation.
--
-- What was wrong:
--
-- 1. A co-owner who was removed (remove_member, 20261127001100_organisations)
--    or made a plain member (set_member, 20261129003400_invitations_expire)
--    kept the invitations they had sent while an owner. Accepting one
--    (accept_invitation, 20261129003400) made its invitee a member with the
--    role it named, owner included: a removed co-owner who had invited an
--    address of their own as owner came back as owner.
-- 2. set_organisation_name (20261129003100_members_by_invitation) had no limit
--    and wrote an audit entry on every call, a rename to the same name too, and
--    the operator's console showed only the 50 latest entries: any customer
--    could push the operator's own actions off the operator's page.
-- 3. revoke_api_key (20261129000300_revocation_names_account) accepted only the
--    account's own user: a member could not revoke their own key of an
--    organisation, nor could an owner made owner revoke the account's keys.
--
-- Now:
--
-- - Removing a member, or making an owner a plain member, withdraws the pending
--   invitations that person sent for that account, in the same transaction
--   (each one audited as withdraw_invitation, with why). remove_member's answer
--   also says how many (invitations_withdrawn).
-- - accept_invitation refuses an invitation whose sender is no longer the
--   account's user or an owner of it, with the answer it gives for one that
--   does not exist or was withdrawn (PT404), and writes nothing. Invitations
--   left behind that way before this migration are withdrawn here.
-- - set_organisation_name writes nothing for a rename to the name the account
--   has (same answer), and a user renames at most 20 times in any 24 hours,
--   across every organisation they own: the 21st is refused (PT429, saying when
--   the next may go), counted from the audit log's set_organisation_name
--   entries as set_member counts invitations, and writes nothing.
-- - Each audit entry records whether an operator wrote it (by_operator, from
--   the session, at the time of writing). operator_audit_log(scope, before_id,
--   limit) reads the log a page at a time, newest first: scope 'operator' for
--   the operators' own actions (entries written before by_operator existed count
--   as an operator's when their actor is one now), 'all' for everything.
-- - revoke_api_key also accepts the member who holds the key and the owners of
--   the key's account. Its answer ({id, account_id, revoked_at}) is unchanged:
--   the gateway's revocation route marks the key revoked under that account.
--
-- Locks: none of this is money. remove_member and set_member lock the
-- membership row, then the invitations the member sent; accept_invitation
-- takes the sender's membership row (FOR SHARE) before the invitation's row, the
-- same order, so a removal or demotion at the same moment goes first (and the
-- acceptance is refused) or after (and finds the invitation accepted).
-- set_organisation_name takes a transaction-level advisory lock of the renaming
-- user before it counts, so concurrent renames count one after the other.

-- Invitations end with their sender's ownership --------------------------------

-- Withdraws the pending invitations p_user_id sent for p_account_id, each
-- audited; answers how many.
create function private.withdraw_invitations_sent_by(p_account_id uuid, p_user_id uuid)
returns integer
language plpgsql
set search_path = ''
as $$
declare
  v_invitation public.member_invitations;
  v_withdrawn integer := 0;
begin
  for v_invitation in
    delete from public.member_invitations where account_id = p_account_id and invited_by = p_user_id returning *
  loop
    perform private.audit('withdraw_invitation', p_account_id::text,
      jsonb_build_object('invitation_id', v_invitation.id, 'email', v_invitation.email, 'reason', 'its sender is no longer an owner'));
    v_withdrawn := v_withdrawn + 1;
  end loop;
  return v_withdrawn;
end;
$$;
revoke all on function private.withdraw_invitations_sent_by(uuid, uuid) from public;

-- Whether an invitation's sender is still the account's user or an owner of it.
create function private.sent_by_an_owner(p_invitation public.member_invitations)
returns boolean
language sql stable
set search_path = ''
as $$
  select p_invitation.invited_by is not null and (
    exists (select 1 from public.accounts a where a.id = p_invitation.account_id and a.user_id = p_invitation.invited_by)
    or exists (select 1 from public.account_members m
                where m.account_id = p_invitation.account_id and m.user_id = p_invitation.invited_by and m.role = 'owner'))
$$;
revoke all on function private.sent_by_an_owner(public.member_invitations) from public;

-- Redefined whole (20261127001100): the pending invitations the removed member
-- sent for the account are withdrawn with the membership, and the answer says
-- how many (invitations_withdrawn). Otherwise unchanged.
create or replace function public.remove_member(p_account_id uuid, p_user_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_revoked integer;
  v_withdrawn integer;
begin
  perform private.require_owner(p_account_id);
  delete from public.account_members where account_id = p_account_id and user_id = p_user_id;
  if not found then
    raise exception 'no such member' using errcode = 'PT404';
  end if;
  update public.api_keys set revoked_at = now()
   where account_id = p_account_id and member_user_id = p_user_id and revoked_at is null;
  get diagnostics v_revoked = row_count;
  v_withdrawn := private.withdraw_invitations_sent_by(p_account_id, p_user_id);
  perform private.audit('remove_member', p_account_id::text,
    jsonb_build_object('user_id', p_user_id, 'keys_revoked', v_revoked, 'invitations_withdrawn', v_withdrawn));
  return jsonb_build_object('removed', p_user_id, 'keys_revoked', v_revoked, 'invitations_withdrawn', v_withdrawn);
end;
$$;

-- Redefined whole (20261129003400): an owner made a plain member loses the
-- pending invitations they sent for the account (the membership row is locked
-- first, then they are withdrawn; the audit entry says how many). The answer's
-- shape, the invitation path and its limits are unchanged.
create or replace function public.set_member(p_account_id uuid, p_email text, p_role text default 'member', p_monthly_budget bigint default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_email text := lower(trim(coalesce(p_email, '')));
  v_role text := coalesce(p_role, 'member');
  v_previous public.account_members;
  v_member public.account_members;
  v_invitation public.member_invitations;
  v_details jsonb;
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
  select m.* into v_previous
    from public.account_members m join auth.users u on u.id = m.user_id
   where m.account_id = p_account_id and lower(u.email) = v_email
     for update of m;
  if found then
    update public.account_members
       set role = v_role, monthly_budget = p_monthly_budget
     where account_id = v_previous.account_id and user_id = v_previous.user_id
    returning * into v_member;
    v_details := jsonb_build_object('user_id', v_member.user_id, 'role', v_member.role, 'monthly_budget', v_member.monthly_budget);
    if v_previous.role = 'owner' and v_member.role <> 'owner' then
      v_details := v_details || jsonb_build_object('invitations_withdrawn', private.withdraw_invitations_sent_by(p_account_id, v_member.user_id));
    end if;
    perform private.audit('set_member', p_account_id::text, v_details);
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

-- Redefined whole (20261129003400): an invitation whose sender is no longer the
-- account's user or an owner of it is refused as one that was withdrawn (PT404,
-- the same words), so a removal or demotion that raced the sending still ends
-- what its sender sent. The sender's membership row is share-locked before the
-- invitation's, the order remove_member and set_member lock them in. Otherwise
-- unchanged.
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
  select * into v_invitation from public.member_invitations
   where id = p_invitation_id and email = private.confirmed_email();
  if found then
    perform 1 from public.account_members
     where account_id = v_invitation.account_id and user_id = v_invitation.invited_by
       for share;
  end if;
  -- Locked, so a withdrawal (or a send that renews it) at the same moment goes
  -- first (and this sees its outcome) or after.
  select * into v_invitation from public.member_invitations
   where id = p_invitation_id and email = private.confirmed_email()
     for update;
  if not found or not private.sent_by_an_owner(v_invitation) then
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

-- What operators see of the audit log ------------------------------------------

-- Added without a default first, so the entries written before it are null
-- (unknown), not marked false by a default evaluated once for them; the default
-- then applies to every entry written from now on, by every writer.
alter table public.audit_log add column by_operator boolean;
alter table public.audit_log alter column by_operator set default public.is_operator();
comment on column public.audit_log.by_operator is 'Whether an operator (app_metadata.role admin in the session) wrote the entry; null: written before this was recorded.';
create index audit_log_by_operator_idx on public.audit_log (id) where by_operator;

-- The invitations left behind by owners removed or demoted before now.
with withdrawn as (
  delete from public.member_invitations i
   where not private.sent_by_an_owner(i)
  returning i.id, i.account_id, i.email
)
insert into public.audit_log (action, subject, details)
select 'withdraw_invitation', w.account_id::text,
       jsonb_build_object('invitation_id', w.id, 'email', w.email, 'reason', 'its sender is no longer an owner')
  from withdrawn w;

-- The audit log a page at a time, newest first: p_scope 'operator' (the
-- operators' own entries) or 'all'; p_before_id the id of the last entry of
-- the page before (null: the newest); p_limit entries (1 to 500).
create function public.operator_audit_log(p_scope text default 'all', p_before_id bigint default null, p_limit integer default 50)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_limit integer := least(greatest(coalesce(p_limit, 50), 1), 500);
  v_before bigint := coalesce(p_before_id, 9223372036854775807);
begin
  perform private.require_operator();
  if p_scope is null or p_scope not in ('operator', 'all') then
    raise exception 'scope is operator or all' using errcode = '22023';
  end if;
  if p_scope = 'all' then
    return coalesce((
      select jsonb_agg(row_to_json(x) order by x.id desc)
        from (
          select l.id, l.at, l.actor_id, l.actor_email, l.action, l.subject, l.details,
                 coalesce(l.by_operator, exists (select 1 from auth.users u where u.id = l.actor_id and u.raw_app_meta_data ->> 'role' = 'admin')) as by_operator
            from public.audit_log l
           where l.id < v_before
           order by l.id desc
           limit v_limit
        ) x), '[]');
  end if;
  return coalesce((
    select jsonb_agg(row_to_json(x) order by x.id desc)
      from (
        select y.* from (
          (select l.id, l.at, l.actor_id, l.actor_email, l.action, l.subject, l.details, true as by_operator
             from public.audit_log l
            where l.by_operator and l.id < v_before
            order by l.id desc
            limit v_limit)
          union all
          -- Entries from before by_operator: an operator's when their actor is one now.
          (select l.id, l.at, l.actor_id, l.actor_email, l.action, l.subject, l.details, true
             from public.audit_log l
             join auth.users u on u.id = l.actor_id and u.raw_app_meta_data ->> 'role' = 'admin'
            where l.by_operator is null and l.id < v_before
            order by l.id desc
            limit v_limit)
        ) y
        order by y.id desc
        limit v_limit
      ) x), '[]');
end;
$$;
revoke all on function public.operator_audit_log(text, bigint, integer) from public, anon, service_role;
grant execute on function public.operator_audit_log(text, bigint, integer) to authenticated;

-- Renames are bounded ------------------------------------------------------------

-- Renames by a user in the last 24 hours, counted from the audit log.
create index audit_log_renames_idx on public.audit_log (actor_id, at) where action = 'set_organisation_name';

-- Redefined whole (20261129003100): a rename to the name the account has writes
-- nothing (same answer); past 20 renames by the signed-in user in 24 hours it is
-- refused (PT429) before anything is written. Otherwise unchanged.
create or replace function public.set_organisation_name(p_account_id uuid, p_name text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_name text := nullif(trim(p_name), '');
  v_renamed integer;
  v_oldest timestamptz;
begin
  perform private.require_owner(p_account_id);
  if char_length(v_name) > 100 then
    raise exception 'a name is 1 to 100 characters (or none)' using errcode = '22023';
  end if;
  if exists (select 1 from public.accounts where id = p_account_id and name is not distinct from v_name) then
    return jsonb_build_object('account_id', p_account_id, 'name', v_name);
  end if;
  perform pg_advisory_xact_lock(hashtextextended('organisation_renames:' || coalesce((select auth.uid())::text, ''), 0));
  select count(*), min(at) into v_renamed, v_oldest
    from public.audit_log
   where action = 'set_organisation_name' and actor_id = (select auth.uid()) and at > now() - interval '24 hours';
  if v_renamed >= 20 then
    raise exception 'you renamed organisations % times in the last 24 hours, the most anyone may: rename again after % UTC', v_renamed,
      to_char((v_oldest + interval '24 hours') at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS')
      using errcode = 'PT429';
  end if;
  update public.accounts set name = v_name, updated_at = now() where id = p_account_id;
  perform private.audit('set_organisation_name', p_account_id::text, jsonb_build_object('name', v_name));
  return jsonb_build_object('account_id', p_account_id, 'name', v_name);
end;
$$;

-- Members and owners revoke keys ---------------------------------------------------

-- Redefined whole (20261129000300): who may revoke is the account's user (as
-- before), an owner of the key's account, or the member who holds the key. The
-- answer, which the gateway's revocation route relies on, is unchanged.
create or replace function public.revoke_api_key(p_key_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.api_keys;
begin
  update public.api_keys k
     set revoked_at = coalesce(k.revoked_at, now())
   where k.id = p_key_id
     and (k.member_user_id = (select auth.uid())
          or k.account_id in (select owned.id from public.my_owned_accounts() as owned (id)))
  returning k.* into v_row;
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  return jsonb_build_object('id', v_row.id, 'account_id', v_row.account_id, 'revoked_at', v_row.revoked_at);
end;
$$;

-- Redefined whole (20261129003300_internal_columns_stay_private):
-- operator_audit_log is granted. Otherwise unchanged.
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
  grant select (id, account_id, kind, message, details, created_at) on public.alerts to authenticated;
  grant select on public.api_keys to authenticated;
  grant select on public.audit_log to authenticated;
  grant select on public.code_redemptions to authenticated;
  grant select on public.credit_grants to authenticated;
  grant select on public.credit_ledger to authenticated;
  grant select on public.credit_packs to authenticated;
  grant select on public.member_invitations to authenticated;
  grant select on public.model_prices to anon, authenticated;
  grant select on public.plans to authenticated;
  grant select (id, subscription_id, price_id, account_id, plan_id, amount_paid, credits, status, created_at) on public.stripe_invoices to authenticated;
  grant select (id, checkout_session_id, payment_intent_id, account_id, credit_pack_id, amount_total, currency, credits, status, refunded_amount, disputed_amount, debited, created_at, updated_at, quantity, amount_subtotal, amount_discount, amount_tax, invoice_id) on public.stripe_payments to authenticated;
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
  grant execute on function public.operator_audit_log(p_scope text, p_before_id bigint, p_limit integer) to authenticated;
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

-- Money model v2, part three: organisations. An account may be an
-- organisation: its owner (the account's user) adds members, who are other
-- users (each keeps their own account too). A member creates keys on the
-- organisation's account: they draw on its balance, within the member's monthly
-- budget (null: none). Owners (the account's user, or a member made owner)
-- manage members and budgets and see everyone's usage; members see the
-- organisation's balance and their own usage.
--
-- Lock order: the membership row is taken where the key's is (lock 2, before the
-- account), so concurrent requests of one member are counted one after another
-- against the member's budget, and the account's conditional update still keeps
-- the organisation within its balance.

create table public.account_members (
  account_id uuid not null references public.accounts (id),
  user_id uuid not null references auth.users (id),
  role text not null default 'member',
  monthly_budget bigint,
  added_at timestamptz not null default now(),
  primary key (account_id, user_id),
  constraint account_members_role check (role in ('owner', 'member')),
  constraint account_members_budget check (monthly_budget is null or monthly_budget >= 0)
);
comment on table public.account_members is 'Members of an organisation (an account), with their role and monthly budget in micro-units.';
create index account_members_user_id_idx on public.account_members (user_id);
alter table public.account_members enable row level security;

alter table public.api_keys add column member_user_id uuid references auth.users (id);
comment on column public.api_keys.member_user_id is 'The member of the organisation (the account) whose key this is; null: the account''s own key.';
create index api_keys_member_idx on public.api_keys (account_id, member_user_id) where member_user_id is not null;

-- Which organisations the caller belongs to, and which it owns: definer, so the
-- policies below can use them without reading each other (no recursion).
create function public.my_organisations()
returns setof uuid
language sql stable
security definer
set search_path = ''
as $$
  select m.account_id from public.account_members m where m.user_id = (select auth.uid())
$$;
create function public.my_owned_accounts()
returns setof uuid
language sql stable
security definer
set search_path = ''
as $$
  select a.id from public.accounts a where a.user_id = (select auth.uid())
  union
  select m.account_id from public.account_members m where m.user_id = (select auth.uid()) and m.role = 'owner'
$$;
revoke all on function public.my_organisations(), public.my_owned_accounts() from public;
grant execute on function public.my_organisations(), public.my_owned_accounts() to authenticated;

create policy "Members read their organisations' accounts."
  on public.accounts for select to authenticated
  using (id in (select public.my_organisations()));
create policy "Members read their own keys of an organisation."
  on public.api_keys for select to authenticated
  using (member_user_id = (select auth.uid()));
create policy "Members read their own usage in an organisation; owners everyone's."
  on public.usage_events for select to authenticated
  using (api_key_id in (select k.id from public.api_keys k where k.member_user_id = (select auth.uid()))
         or account_id in (select public.my_owned_accounts()));
create policy "Owners read their members; members their own membership."
  on public.account_members for select to authenticated
  using (user_id = (select auth.uid()) or account_id in (select public.my_owned_accounts()));
grant select on public.account_members to authenticated, service_role;

create function private.require_owner(p_account_id uuid)
returns void
language plpgsql stable
set search_path = ''
as $$
begin
  if not exists (select 1 from public.my_owned_accounts() as owned (id) where owned.id = p_account_id) then
    raise exception 'only an owner of the organisation may do this' using errcode = '42501';
  end if;
end;
$$;
revoke all on function private.require_owner(uuid) from public;

-- Adds (or updates) a member by email: role and monthly budget (micro-units, null: none).
create function public.set_member(p_account_id uuid, p_email text, p_role text default 'member', p_monthly_budget bigint default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_user uuid;
  v_member public.account_members;
begin
  perform private.require_owner(p_account_id);
  select id into v_user from auth.users where lower(email) = lower(trim(coalesce(p_email, '')));
  if v_user is null then
    raise exception 'no user with the email %: they sign up first', p_email using errcode = 'PT404';
  end if;
  if exists (select 1 from public.accounts where id = p_account_id and user_id = v_user) then
    raise exception 'the account''s own user is its owner already' using errcode = '22023';
  end if;
  begin
    insert into public.account_members (account_id, user_id, role, monthly_budget)
    values (p_account_id, v_user, coalesce(p_role, 'member'), p_monthly_budget)
    on conflict (account_id, user_id) do update set role = excluded.role, monthly_budget = excluded.monthly_budget
    returning * into v_member;
  exception when check_violation then
    raise exception 'role is owner or member, and a budget is zero or more' using errcode = '22023';
  end;
  perform private.audit('set_member', p_account_id::text, jsonb_build_object('user_id', v_user, 'role', v_member.role, 'monthly_budget', v_member.monthly_budget));
  return to_jsonb(v_member);
end;
$$;

-- Removes a member; their keys of the organisation are revoked with it.
create function public.remove_member(p_account_id uuid, p_user_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_revoked integer;
begin
  perform private.require_owner(p_account_id);
  delete from public.account_members where account_id = p_account_id and user_id = p_user_id;
  if not found then
    raise exception 'no such member' using errcode = 'PT404';
  end if;
  update public.api_keys set revoked_at = now()
   where account_id = p_account_id and member_user_id = p_user_id and revoked_at is null;
  get diagnostics v_revoked = row_count;
  perform private.audit('remove_member', p_account_id::text, jsonb_build_object('user_id', p_user_id, 'keys_revoked', v_revoked));
  return jsonb_build_object('removed', p_user_id, 'keys_revoked', v_revoked);
end;
$$;

-- A member's key on the organisation's account (shown once, like create_api_key's).
create function public.create_member_api_key(p_account_id uuid, p_name text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key text;
  v_row public.api_keys;
begin
  if not exists (select 1 from public.account_members where account_id = p_account_id and user_id = (select auth.uid())) then
    raise exception 'only a member of the organisation may create its keys' using errcode = '42501';
  end if;
  if p_name is null or char_length(trim(p_name)) not between 1 and 100 then
    raise exception 'name must be 1 to 100 characters' using errcode = '22023';
  end if;
  -- 24 random bytes, base64url: 192 bits. Only the SHA-256 is stored.
  v_key := 'tg_' || translate(encode(extensions.gen_random_bytes(24), 'base64'), '+/', '-_');
  insert into public.api_keys (account_id, name, prefix, key_hash, member_user_id)
  values (p_account_id, trim(p_name), left(v_key, 11), encode(sha256(convert_to(v_key, 'UTF8')), 'hex'), (select auth.uid()))
  returning * into v_row;
  perform private.audit('create_member_key', p_account_id::text, jsonb_build_object('key_id', v_row.id, 'member', v_row.member_user_id));
  return private.key_summary(v_row) || jsonb_build_object('key', v_key);
end;
$$;

revoke all on function public.set_member(uuid, text, text, bigint), public.remove_member(uuid, uuid), public.create_member_api_key(uuid, text)
  from public, anon, service_role;
grant execute on function public.set_member(uuid, text, text, bigint), public.remove_member(uuid, uuid), public.create_member_api_key(uuid, text)
  to authenticated;

-- Customers' own money actions are audited too: a code redeemed.
create or replace function private.audit_redemption()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform private.audit('redeem_code', new.code, jsonb_build_object('account_id', new.account_id, 'ledger_entry_id', new.ledger_entry_id));
  return null;
end;
$$;
revoke all on function private.audit_redemption() from public;
create trigger code_redemptions_audited after insert on public.code_redemptions
  for each row execute function private.audit_redemption();

-- Redefined whole (last in the one-lock-order migration): the account's plan is
-- read before the hold (it was read after) and its price multiplier applied to
-- the rates, which the usage row records (the plan-pricing migration); a
-- member's key is held to the member's monthly budget (lock 2a). Otherwise unchanged.
create or replace function public.authorize_request(
  p_request_id text,
  p_key_hash text,
  p_model text,
  p_max_input_tokens bigint,
  p_max_output_tokens bigint default null,
  p_client_ip inet default null,
  p_choices integer default 1,
  p_cap_output boolean default false,
  p_providers text[] default null,
  p_calls jsonb default '{}'
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_model public.models;
  v_event public.usage_events;
  v_rates jsonb;
  v_price jsonb;
  v_input_rate numeric;
  v_output_rate numeric;
  v_max_output bigint;
  v_hold bigint;
  v_capped boolean := false;
  v_balance bigint;
  v_held bigint;
  v_credit_limit bigint;
  v_plan text;
  v_available bigint;
  v_affordable numeric;
  v_open_count bigint;
  v_open_holds bigint;
  v_plan_requests integer;
  v_plan_tokens integer;
  v_calls numeric := 0;
  v_call text;
  v_multiplier integer;
  v_member public.account_members;
  v_member_spent bigint;
begin
  if p_request_id is null or char_length(p_request_id) not between 1 and 128 then
    return private.refusal('invalid_request', 'request id must be 1 to 128 characters');
  end if;
  if p_max_input_tokens is null or p_max_input_tokens < 0 then
    return private.refusal('invalid_request', 'max input tokens must be a non-negative integer');
  end if;
  if p_max_output_tokens is not null and p_max_output_tokens < 1 then
    return private.refusal('invalid_max_tokens', 'max output tokens must be at least 1');
  end if;
  if p_choices is null or p_choices not between 1 and 128 then
    return private.refusal('invalid_request', 'the number of choices must be between 1 and 128');
  end if;

  select * into v_key from public.api_keys where key_hash = p_key_hash;
  if not found then
    return private.refusal('invalid_api_key', 'Invalid API key.');
  end if;

  select * into v_event from public.usage_events where request_id = p_request_id;
  if found then
    if v_event.api_key_id <> v_key.id then
      return private.refusal('request_id_conflict', 'This request id belongs to another key.');
    end if;
    return private.authorization_result(v_event, true);
  end if;

  if v_key.revoked_at is not null then
    return private.refusal('api_key_revoked', 'This API key has been revoked.');
  end if;
  if v_key.expires_at is not null and v_key.expires_at <= now() then
    return private.refusal('api_key_expired', 'This API key has expired.');
  end if;
  if v_key.allowed_ips is not null and (
       p_client_ip is null
       or not exists (select 1 from unnest(v_key.allowed_ips) as allowed (network) where p_client_ip <<= allowed.network)) then
    return private.refusal('ip_not_allowed', 'This API key may not be used from this address.');
  end if;

  v_model := private.priced_model(p_model);
  if v_model.id is null then
    return private.refusal('model_not_found', format('The model %s does not exist or is not available.', p_model));
  end if;
  if p_providers is not null and not (v_model.provider = any (p_providers)) then
    return private.refusal('unsupported_provider', format('The model %s is not served on this route.', p_model),
                           jsonb_build_object('provider', v_model.provider));
  end if;
  if v_key.allowed_models is not null and not (p_model = any (v_key.allowed_models) or v_model.id = any (v_key.allowed_models)) then
    return private.refusal('model_not_allowed', format('This API key may not use the model %s.', p_model));
  end if;
  -- The account's plan: its rate limits, and the multiplier its prices get.
  select pl.requests_per_minute, pl.tokens_per_minute, pl.price_multiplier_bps into v_plan_requests, v_plan_tokens, v_multiplier
    from public.accounts a join public.plans pl on pl.id = a.plan where a.id = v_key.account_id;
  v_rates := private.effective_rates(v_model);
  v_rates := jsonb_set(v_rates, '{price}', private.apply_price_multiplier(v_rates -> 'price', coalesce(v_multiplier, 10000)));
  v_price := v_rates -> 'price';
  if v_price -> 'input' = 'null' or v_price -> 'output' = 'null' then
    return private.refusal('model_not_priced', format('The model %s has no price and cannot be billed.', p_model));
  end if;

  v_max_output := coalesce(p_max_output_tokens, v_model.max_output_tokens);
  if v_max_output > v_model.max_output_tokens then
    return private.refusal('invalid_max_tokens',
      format('max output tokens %s is above the model''s limit of %s', v_max_output, v_model.max_output_tokens),
      jsonb_build_object('limit', v_model.max_output_tokens));
  end if;
  -- Priced calls (hosted web searches) the request may make, at most: each has a
  -- price per call, or the request is refused.
  for v_call in select jsonb_object_keys(coalesce(p_calls, '{}')) loop
    if jsonb_typeof(v_price -> v_call) is distinct from 'number' then
      return private.refusal('tool_not_priced', format('The model %s has no price for %s, so that tool is not available here.', p_model, v_call));
    end if;
    v_calls := v_calls + (p_calls ->> v_call)::numeric * (v_price ->> v_call)::numeric;
  end loop;
  v_input_rate := private.max_input_rate(v_price);
  v_output_rate := private.max_output_rate(v_price);
  v_hold := ceil((p_max_input_tokens * v_input_rate + v_max_output * p_choices * v_output_rate + v_calls) / 1000000)::bigint;

  -- Lock 2a: a member's key of an organisation: the membership row, so the
  -- requests of one member (all its keys) are counted one after the other
  -- against the member's monthly budget.
  if v_key.member_user_id is not null then
    select * into v_member from public.account_members
     where account_id = v_key.account_id and user_id = v_key.member_user_id for no key update;
    if not found then
      return private.refusal('not_a_member', 'This API key belongs to someone who is no longer a member of the organisation.');
    end if;
    if v_member.monthly_budget is not null then
      select coalesce(sum(case when k.spent_month = date_trunc('month', now() at time zone 'UTC')::date then k.month_spent else 0 end), 0)
             + coalesce((select sum(e.hold) from public.usage_events e
                          where e.status = 'held' and e.api_key_id in (select k2.id from public.api_keys k2
                                                                         where k2.account_id = v_key.account_id and k2.member_user_id = v_key.member_user_id)), 0)
        into v_member_spent
        from public.api_keys k where k.account_id = v_key.account_id and k.member_user_id = v_key.member_user_id;
      if v_member_spent + v_hold > v_member.monthly_budget then
        return private.refusal('member_budget_reached',
          format('Your monthly budget in this organisation is %s (spent or in flight %s; this request may cost up to %s).',
                 v_member.monthly_budget, v_member_spent, v_hold),
          jsonb_build_object('limit', v_member.monthly_budget));
      end if;
    end if;
  end if;

  -- Lock 2: the key, when its policy counts what is in flight, so concurrent
  -- requests of one key are counted one after the other.
  if v_key.spend_limit is not null or v_key.monthly_spend_limit is not null or v_key.max_concurrent is not null then
    select * into v_key from public.api_keys where id = v_key.id for no key update;
    select count(*), coalesce(sum(hold), 0) into v_open_count, v_open_holds
      from public.usage_events where api_key_id = v_key.id and status = 'held';
    if v_key.max_concurrent is not null and v_open_count >= v_key.max_concurrent then
      return private.refusal('too_many_concurrent_requests',
        format('This API key already has %s requests in flight, its limit.', v_open_count),
        jsonb_build_object('limit', v_key.max_concurrent));
    end if;
    if v_key.spend_limit is not null and v_key.spent + v_open_holds + v_hold > v_key.spend_limit then
      return private.refusal('key_spend_limit_reached',
        format('This API key has reached its spend limit of %s (spent %s, %s in flight, this request may cost up to %s).',
               v_key.spend_limit, v_key.spent, v_open_holds, v_hold),
        jsonb_build_object('limit', v_key.spend_limit));
    end if;
    if v_key.monthly_spend_limit is not null
       and (case when v_key.spent_month = date_trunc('month', now() at time zone 'UTC')::date then v_key.month_spent else 0 end)
           + v_open_holds + v_hold > v_key.monthly_spend_limit then
      return private.refusal('key_monthly_limit_reached',
        format('This API key has reached its monthly spend limit of %s.', v_key.monthly_spend_limit),
        jsonb_build_object('limit', v_key.monthly_spend_limit));
    end if;
  end if;

  -- The request's row, before the account: the account row is the one every
  -- request of the account waits for, so it is locked last and held briefly.
  -- A row being created is locked by nobody else.
  insert into public.usage_events (
    request_id, account_id, api_key_id, model_id, provider, upstream_model,
    hold, max_input_tokens, max_output_tokens, choices, output_capped, rates, price_multiplier_bps)
  values (
    p_request_id, v_key.account_id, v_key.id, v_model.id, v_model.provider, v_model.upstream_model,
    v_hold, p_max_input_tokens, v_max_output, p_choices, false, v_rates, coalesce(v_multiplier, 10000))
  on conflict (request_id) do nothing;
  if not found then
    -- The same request id was authorized concurrently and committed first.
    select * into v_event from public.usage_events where request_id = p_request_id;
    if v_event.api_key_id <> v_key.id then
      return private.refusal('request_id_conflict', 'This request id belongs to another key.');
    end if;
    return private.authorization_result(v_event, true);
  end if;
  -- Checked after the insert, so a release that commits from now on finds the row.
  if exists (select 1 from public.cancelled_requests where request_id = p_request_id) then
    delete from public.usage_events where request_id = p_request_id;
    return private.refusal('request_cancelled', 'This request was given up before it was authorized.');
  end if;

  -- Lock 3: the account. The hold is taken by one conditional update, never
  -- read-then-write; a depleted account is stopped until it is topped up.
  update public.accounts
     set held = held + v_hold, updated_at = now()
   where id = v_key.account_id
     and balance - held + credit_limit >= v_hold
     and balance_state <> 'depleted'
  returning balance, held, credit_limit, plan into v_balance, v_held, v_credit_limit, v_plan;

  if not found then
    select balance - held + credit_limit into v_available from public.accounts where id = v_key.account_id;
    -- The caller set no output limit: offer the largest one the balance affords
    -- after the worst case of the input. The conditional update still decides.
    if p_cap_output and v_output_rate > 0 then
      v_affordable := floor((v_available::numeric * 1000000 - p_max_input_tokens * v_input_rate - v_calls) / (v_output_rate * p_choices));
      if v_affordable >= 1 and v_affordable < v_max_output then
        v_max_output := v_affordable::bigint;
        v_capped := true;
        v_hold := ceil((p_max_input_tokens * v_input_rate + v_max_output * p_choices * v_output_rate + v_calls) / 1000000)::bigint;
        update public.accounts
           set held = held + v_hold, updated_at = now()
         where id = v_key.account_id
           and balance - held + credit_limit >= v_hold
           and balance_state <> 'depleted'
        returning balance, held, credit_limit, plan into v_balance, v_held, v_credit_limit, v_plan;
        if v_balance is not null then
          update public.usage_events set hold = v_hold, max_output_tokens = v_max_output, output_capped = true
           where request_id = p_request_id;
        end if;
      end if;
    end if;
    if v_balance is null then
      -- Refused: the request's row goes, and with it every trace of the attempt.
      delete from public.usage_events where request_id = p_request_id;
      select greatest(0, balance - held + credit_limit) into v_available from public.accounts where id = v_key.account_id;
      return private.refusal('insufficient_credits',
        format('Insufficient credits: this request may cost up to %s, %s is available.', v_hold, v_available),
        jsonb_build_object('account_id', v_key.account_id, 'required', v_hold, 'available', v_available,
                           'top_up_links', private.top_up_links()));
    end if;
  end if;

  return jsonb_build_object(
    'status', 'authorized',
    'replayed', false,
    'request_id', p_request_id,
    'event_status', 'held',
    'account_id', v_key.account_id,
    'api_key_id', v_key.id,
    'model', jsonb_build_object('id', v_model.id, 'provider', v_model.provider, 'upstream_model', v_model.upstream_model),
    'hold', v_hold,
    'max_input_tokens', p_max_input_tokens,
    'max_output_tokens', v_max_output,
    'output_capped', v_capped,
    'choices', p_choices,
    'price', v_price,
    'balance', v_balance,
    'held', v_held,
    'available', v_balance - v_held + v_credit_limit,
    'key', jsonb_build_object('requests_per_minute', v_key.requests_per_minute, 'max_concurrent', v_key.max_concurrent),
    'plan', v_plan,
    'limits', private.rate_limits_of(v_key, v_plan_requests, v_plan_tokens));
end;
$$;

revoke all on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean, text[], jsonb) from public, anon, authenticated;
grant execute on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean, text[], jsonb) to service_role;

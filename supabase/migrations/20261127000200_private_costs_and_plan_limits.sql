-- What the operator pays is private, column by column; a key's rate limits stay
-- within its account's plan.

-- Costs -----------------------------------------------------------------------
-- Customers read their own requests and rollups under RLS, but not what the
-- upstream charged for them: usage_events.upstream_cost and rates (which holds
-- the cost rates beside the price rates), upstream_model (the operator's
-- routing), usage_daily.upstream_cost and margin. Column grants do it; with
-- column grants `select=*` is refused, so clients name the columns they read.

revoke select on public.usage_events from authenticated;
grant select (
  request_id, account_id, api_key_id, model_id, provider, status, hold,
  max_input_tokens, max_output_tokens, choices, output_capped,
  input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens,
  output_tokens, reasoning_tokens, image_tokens, audio_tokens,
  usage_source, amount, charged, error, created_at, settled_at, hold_expired_at
) on public.usage_events to authenticated;

revoke select on public.usage_daily from authenticated;
grant select (
  account_id, model_id, day, requests,
  input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens,
  output_tokens, reasoning_tokens, image_tokens, audio_tokens,
  amount, charged
) on public.usage_daily to authenticated;

-- Plan limits -------------------------------------------------------------------
-- A user may lower a key's rate limits, never raise them past the plan: the
-- gateway holds a key to the lower of its own and its plan's (so a plan that
-- goes down, a cancelled subscription say, takes its keys down with it). Only
-- the operator grants an exception (set_api_key_limits), marked on the key.

alter table public.api_keys add column limits_exception boolean not null default false;
comment on column public.api_keys.limits_exception is
  'Set by the operator (set_api_key_limits): the key''s own rate limits apply even above its plan''s.';

-- Redefined: the lower of the key's and the plan's, unless the operator made an exception.
create or replace function private.rate_limits_of(p_key public.api_keys, p_plan_requests integer, p_plan_tokens integer)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  if p_key.limits_exception then
    return jsonb_build_object(
      'requests_per_minute', coalesce(p_key.requests_per_minute, p_plan_requests),
      'tokens_per_minute', coalesce(p_key.tokens_per_minute, p_plan_tokens));
  end if;
  -- least() passes over nulls: a missing key limit is the plan's, a missing plan limit none.
  return jsonb_build_object(
    'requests_per_minute', least(p_key.requests_per_minute, p_plan_requests),
    'tokens_per_minute', least(p_key.tokens_per_minute, p_plan_tokens));
end;
$$;

-- Redefined whole: the limits come from private.rate_limits_of, as in authorize_request.
create or replace function private.authorization_result(p_event public.usage_events, p_replayed boolean)
returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'status', 'authorized',
    'replayed', p_replayed,
    'request_id', p_event.request_id,
    'event_status', p_event.status,
    'account_id', p_event.account_id,
    'api_key_id', p_event.api_key_id,
    'model', jsonb_build_object(
      'id', p_event.model_id,
      'provider', p_event.provider,
      'upstream_model', p_event.upstream_model),
    'hold', p_event.hold,
    'max_input_tokens', p_event.max_input_tokens,
    'max_output_tokens', p_event.max_output_tokens,
    'output_capped', p_event.output_capped,
    'choices', p_event.choices,
    'price', p_event.rates -> 'price',
    'balance', a.balance,
    'held', a.held,
    'available', a.balance - a.held + a.credit_limit,
    'key', jsonb_build_object(
      'requests_per_minute', k.requests_per_minute,
      'max_concurrent', k.max_concurrent),
    'plan', a.plan,
    'limits', private.rate_limits_of(k, pl.requests_per_minute, pl.tokens_per_minute)
  )
  from public.accounts a
  join public.api_keys k on k.id = p_event.api_key_id
  left join public.plans pl on pl.id = a.plan
  where a.id = p_event.account_id
$$;

-- Refuses rate limits above the plan's, for what a user sets on a key.
create function private.check_limits_within_plan(p_account_id uuid, p_policy jsonb)
returns void
language plpgsql stable
set search_path = ''
as $$
declare
  v_plan public.plans;
  v_field text;
  v_plan_limit integer;
begin
  if p_policy is null or jsonb_typeof(p_policy) <> 'object' then
    return; -- apply_key_policy explains what is wrong with it
  end if;
  select pl.* into v_plan from public.accounts a join public.plans pl on pl.id = a.plan where a.id = p_account_id;
  foreach v_field in array array['requests_per_minute', 'tokens_per_minute'] loop
    v_plan_limit := case v_field when 'requests_per_minute' then v_plan.requests_per_minute else v_plan.tokens_per_minute end;
    if v_plan_limit is not null and jsonb_typeof(p_policy -> v_field) = 'number'
       and (p_policy ->> v_field)::numeric > v_plan_limit then
      raise exception '% % is above the % plan''s limit of %', v_field, p_policy ->> v_field, v_plan.name, v_plan_limit
        using errcode = '22023', hint = 'Only the operator raises a plan''s limits.';
    end if;
  end loop;
end;
$$;
revoke all on function private.check_limits_within_plan(uuid, jsonb) from public;

-- Redefined whole: the policy's rate limits are checked against the plan first.
create or replace function public.create_api_key(p_name text, p_expires_at timestamptz default null, p_policy jsonb default '{}')
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id uuid;
  v_key text;
  v_row public.api_keys;
begin
  select id into v_account_id from public.accounts where user_id = (select auth.uid());
  if v_account_id is null then
    raise exception 'no account for the signed-in user' using errcode = 'PT403';
  end if;
  if p_name is null or char_length(trim(p_name)) not between 1 and 100 then
    raise exception 'name must be 1 to 100 characters' using errcode = '22023';
  end if;
  if p_expires_at is not null and p_expires_at <= now() then
    raise exception 'expiry must be in the future' using errcode = '22023';
  end if;
  perform private.check_limits_within_plan(v_account_id, p_policy);

  -- 24 random bytes, base64url: 192 bits. Only the SHA-256 is stored.
  v_key := 'tg_' || translate(encode(extensions.gen_random_bytes(24), 'base64'), '+/', '-_');
  insert into public.api_keys (account_id, name, prefix, key_hash, expires_at)
  values (v_account_id, trim(p_name), left(v_key, 11),
          encode(sha256(convert_to(v_key, 'UTF8')), 'hex'), p_expires_at)
  returning * into v_row;
  v_row := private.apply_key_policy(v_row.id, coalesce(p_policy, '{}'));

  return private.key_summary(v_row) || jsonb_build_object('key', v_key);
end;
$$;

-- Redefined whole: the policy's rate limits are checked against the plan first.
create or replace function public.update_api_key_policy(p_key_id uuid, p_policy jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id uuid;
  v_row public.api_keys;
begin
  select k.account_id into v_account_id from public.api_keys k join public.accounts a on a.id = k.account_id
   where k.id = p_key_id and a.user_id = (select auth.uid());
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  perform private.check_limits_within_plan(v_account_id, p_policy);
  v_row := private.apply_key_policy(p_key_id, p_policy);
  return private.key_summary(v_row);
end;
$$;

-- The operator's exception: any policy on any key, rate limits above the plan
-- included (`exception`, true by default, marks the key so they apply).
create function public.set_api_key_limits(p_key_id uuid, p_policy jsonb, p_exception boolean default true)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.api_keys;
begin
  perform 1 from public.api_keys where id = p_key_id;
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  v_row := private.apply_key_policy(p_key_id, p_policy);
  update public.api_keys set limits_exception = coalesce(p_exception, false) where id = p_key_id returning * into v_row;
  return private.key_summary(v_row) || jsonb_build_object('limits_exception', v_row.limits_exception);
end;
$$;
revoke all on function public.set_api_key_limits(uuid, jsonb, boolean) from public, anon, authenticated;
grant execute on function public.set_api_key_limits(uuid, jsonb, boolean) to service_role;

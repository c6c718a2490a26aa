-- A hold given back while a single authorization waits for its account.
--
-- authorize_request checked cancelled_requests right after writing the
-- request's row, then took the hold on the account row. Waiting for that row
-- (other requests of the account hold it) left the check and the commit far
-- apart: a give-back arriving in between found no committed row, remembered
-- the request as given up, and committed; the authorization then committed
-- too, and its hold stayed until the stale-hold job released it. This is what
-- happens when a stalled database wakes up with an authorization that timed
-- out and its give-back both queued, and a test of exactly that failed once.
-- Batched authorizations were not affected: authorize_requests locks the
-- accounts before it takes each item's request-id lock.
--
-- Redefined whole; what changed: the cancelled_requests check moved from
-- before the account update to the end, under pg_advisory_xact_lock on the
-- request id (the lock the trigger from 20261127001200 takes before it
-- remembers a request). Taken after the account row, so the order stays
-- accounts before request ids, as in authorize_requests and settle_requests;
-- a request found given up has its hold taken back and its row deleted.

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

  -- Given up while it was being authorized? Checked last, under a lock on the
  -- request id that remembering a given-up request takes too (the trigger
  -- cancelled_requests_after_authorizations): a give-back that came first is
  -- seen here, and one that comes later waits for this commit and then finds
  -- the row. The hold just taken goes back with the row.
  perform pg_advisory_xact_lock(hashtextextended(p_request_id, 0));
  if exists (select 1 from public.cancelled_requests where request_id = p_request_id) then
    update public.accounts set held = held - v_hold, updated_at = now() where id = v_key.account_id;
    delete from public.usage_events where request_id = p_request_id;
    return private.refusal('request_cancelled', 'This request was given up before it was authorized.');
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

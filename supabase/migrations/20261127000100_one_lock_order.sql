-- The ledger under a busy key and a flaky database.
--
-- LOCK ORDER. Every function that touches money takes row locks in this order,
-- and never the other way round:
--
--   1. the business row the call is about: the request's usage_events row
--      (settle, expiry), a Stripe payment or invoice row, or the Stripe
--      customer's advisory lock;
--   2. the api_keys row (only where its counters change or its policy counts
--      what is in flight);
--   3. the accounts row;
--   4. then only new rows: credit_ledger, alerts.
--
-- Several rows of one table are locked in ascending key order (usage_events by
-- request_id, api_keys and accounts by id), all of one level before the next,
-- or with SKIP LOCKED, which never waits.
--
-- Rows of api_keys and accounts are locked FOR NO KEY UPDATE (an UPDATE that
-- changes no key column takes the same lock), never FOR UPDATE. Foreign keys
-- lock too: inserting a credit_ledger or alerts row takes FOR KEY SHARE on its
-- account, which conflicts only with FOR UPDATE, and is taken after the
-- function's own update of that account, so it never waits. (The first build's
-- deadlock: authorize_request held the account while its usage_events insert
-- waited for a key-share lock on the key, and settle_request held the key FOR
-- UPDATE while it waited for the account.) usage_events has no foreign keys any
-- more (see below): a request's row locks nothing but itself.
--
-- authorize_request creates its usage_events row before it updates the account:
-- a row being created is locked by nobody else (a second insert of the same
-- request id waits for the first, which holds no lock the second wants), and
-- the account row, the one every request of an account waits for, is held for
-- as short a time as possible: each function takes it as its last lock and does
-- as little as it can after it.
--
-- The one exception is a change of accounts.stripe_customer_id (a unique,
-- hence key, column), once per subscribing customer: it takes the stronger lock
-- on the account row, which only makes foreign-key inserts for that account wait
-- for it; it waits for nothing they hold.
--
-- What else changes here, and why:
-- - authorize_request and settle_request compute each price helper once per call
--   and build their results from values already read (the first build spent
--   about 1.5 ms of 3.7 ms per pair re-running SQL helpers, which PostgreSQL
--   plans again on every call because of their SET clause). The helpers the
--   tests and other functions use are redefined in PL/pgSQL, whose plans are
--   cached per session, with the same results.
-- - authorize_request takes p_providers: a route that serves only some providers
--   (Anthropic's Messages, OpenAI's embeddings) is refused before any hold; and
--   p_calls, priced calls (hosted web searches) held at their price per call.
-- - settle_request settles a request whose hold the stale-hold job already
--   released (a settlement delayed by an outage): it charges what was used, as
--   far as the balance allows, and records that the hold had expired.
-- - settle_requests settles many requests in one call (the settlement outbox).
-- - Giving back a hold that was never taken is remembered (cancelled_requests),
--   so an authorization that was only delayed cannot leave a hold behind.
-- - expire_stale_holds and the Stripe claw-back follow the lock order.

alter table public.usage_events add column hold_expired_at timestamptz;
comment on column public.usage_events.hold_expired_at is
  'Set when the stale-hold job released the hold before the request was settled. A late settlement still charges what was used (status then shows its outcome).';

-- Holds given back before their authorization arrived. When authorize does not
-- answer in time the gateway answers 503 and gives the hold back; if the
-- authorization was only delayed (a stalled database), it may still commit
-- later. Giving back an unknown request leaves its id here, and authorize
-- refuses that id, so no hold is left behind. expire_stale_holds clears old ids.
create table public.cancelled_requests (
  request_id text primary key,
  cancelled_at timestamptz not null default now()
);
alter table public.cancelled_requests enable row level security;
-- No policies: written by settle_request, read by authorize_request, both definers.
grant select on public.cancelled_requests to service_role;

-- usage_events loses its foreign keys. Each insert's foreign-key checks took FOR
-- KEY SHARE on the account, the key and the model; on rows that concurrent
-- requests lock or share (one busy key, one popular model) PostgreSQL records
-- several lockers of one row as a MultiXact, and every request of a busy key
-- paid for creating and reading them. Only authorize_request inserts into
-- usage_events, with the ids of rows it has just read in the same transaction;
-- accounts and keys are never deleted (no role may), and a model that has usage
-- may not be deleted either (disable it instead): the trigger below keeps that
-- promise, which the foreign key kept before.
alter table public.usage_events
  drop constraint usage_events_account_id_fkey,
  drop constraint usage_events_api_key_id_fkey,
  drop constraint usage_events_model_id_fkey;

create function private.refuse_used_model_delete()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from public.usage_events where model_id = old.id) then
    raise exception 'model % has usage and cannot be deleted', old.id
      using errcode = '23503', hint = 'Disable it instead: update public.models set enabled = false.';
  end if;
  return old;
end;
$$;
revoke all on function private.refuse_used_model_delete() from public;

create trigger models_keep_used
  before delete on public.models
  for each row execute function private.refuse_used_model_delete();

-- Price helpers in PL/pgSQL (same results as before) ---------------------------

-- Redefined: PL/pgSQL instead of SQL, so its plan is cached.
create or replace function private.with_bucket_fallbacks(p_rates jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'input', p_rates -> 'input',
    'cached_input', coalesce(p_rates -> 'cached_input', p_rates -> 'input'),
    'cache_write', coalesce(p_rates -> 'cache_write', p_rates -> 'input'),
    'cache_write_1h', coalesce(p_rates -> 'cache_write_1h', p_rates -> 'cache_write', p_rates -> 'input'),
    'output', p_rates -> 'output',
    'reasoning', coalesce(p_rates -> 'reasoning', p_rates -> 'output'),
    'image', coalesce(p_rates -> 'image', p_rates -> 'input'),
    'audio', coalesce(p_rates -> 'audio', p_rates -> 'input'));
end;
$$;

-- Redefined: PL/pgSQL; the ordinary rates are built from the columns directly.
create or replace function private.effective_rates(p_model public.models)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  v_price jsonb := jsonb_build_object(
    'input', p_model.price_input,
    'cached_input', coalesce(p_model.price_cached_input, p_model.price_input),
    'cache_write', coalesce(p_model.price_cache_write, p_model.price_input),
    'cache_write_1h', coalesce(p_model.price_cache_write_1h, p_model.price_cache_write, p_model.price_input),
    'output', p_model.price_output,
    'reasoning', coalesce(p_model.price_reasoning, p_model.price_output),
    'image', coalesce(p_model.price_image, p_model.price_input),
    'audio', coalesce(p_model.price_audio, p_model.price_input));
  v_cost jsonb := jsonb_build_object(
    'input', p_model.cost_input,
    'cached_input', coalesce(p_model.cost_cached_input, p_model.cost_input),
    'cache_write', coalesce(p_model.cost_cache_write, p_model.cost_input),
    'cache_write_1h', coalesce(p_model.cost_cache_write_1h, p_model.cost_cache_write, p_model.cost_input),
    'output', p_model.cost_output,
    'reasoning', coalesce(p_model.cost_reasoning, p_model.cost_output),
    'image', coalesce(p_model.cost_image, p_model.cost_input),
    'audio', coalesce(p_model.cost_audio, p_model.cost_input));
begin
  -- A tier's buckets follow the same fallbacks within the tier; what it leaves out keeps the ordinary rate.
  if p_model.long_context_threshold is not null then
    if p_model.long_context_price is not null then
      v_price := v_price || jsonb_build_object('long',
        jsonb_strip_nulls(private.with_bucket_fallbacks(p_model.long_context_price))
        || jsonb_build_object('threshold', p_model.long_context_threshold));
    end if;
    if p_model.long_context_cost is not null then
      v_cost := v_cost || jsonb_build_object('long',
        jsonb_strip_nulls(private.with_bucket_fallbacks(p_model.long_context_cost))
        || jsonb_build_object('threshold', p_model.long_context_threshold));
    end if;
  end if;
  return jsonb_build_object('price', v_price, 'cost', v_cost);
end;
$$;

-- Redefined: PL/pgSQL, one pass, no nested helpers. Same rule: the tier's rates
-- when the prompt passes its threshold; null when a bucket that has tokens has
-- no rate; ceil(Σ tokens × rate / 1,000,000) once.
create or replace function private.cost_of(p_usage jsonb, p_rates jsonb)
returns bigint
language plpgsql immutable
set search_path = ''
as $$
declare
  v_bucket text;
  v_tokens numeric;
  v_rate jsonb;
  v_sum numeric := 0;
  v_long jsonb := case when jsonb_typeof(p_rates -> 'long') = 'object' then p_rates -> 'long' end;
begin
  if v_long is not null and (
       coalesce((p_usage ->> 'input')::numeric, 0) + coalesce((p_usage ->> 'cached_input')::numeric, 0)
       + coalesce((p_usage ->> 'cache_write')::numeric, 0) + coalesce((p_usage ->> 'cache_write_1h')::numeric, 0)
       + coalesce((p_usage ->> 'image')::numeric, 0) + coalesce((p_usage ->> 'audio')::numeric, 0)
     ) <= (v_long ->> 'threshold')::numeric then
    v_long := null;
  end if;
  foreach v_bucket in array private.token_buckets() loop
    v_tokens := (p_usage ->> v_bucket)::numeric;
    if v_tokens > 0 then
      v_rate := coalesce(v_long -> v_bucket, p_rates -> v_bucket);
      if jsonb_typeof(v_rate) is distinct from 'number' then
        return null;
      end if;
      v_sum := v_sum + v_tokens * (v_rate #>> '{}')::numeric;
    end if;
  end loop;
  return ceil(v_sum / 1000000)::bigint;
end;
$$;

-- Redefined: PL/pgSQL. The dearest rate an input-side (output-side) token can be
-- billed at, the long-context tier included.
create or replace function private.max_input_rate(p_price jsonb)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  return greatest(
    (p_price ->> 'input')::numeric, (p_price ->> 'cached_input')::numeric, (p_price ->> 'cache_write')::numeric,
    (p_price ->> 'cache_write_1h')::numeric, (p_price ->> 'image')::numeric, (p_price ->> 'audio')::numeric,
    (p_price #>> '{long,input}')::numeric, (p_price #>> '{long,cached_input}')::numeric,
    (p_price #>> '{long,cache_write}')::numeric, (p_price #>> '{long,cache_write_1h}')::numeric,
    (p_price #>> '{long,image}')::numeric, (p_price #>> '{long,audio}')::numeric);
end;
$$;

create or replace function private.max_output_rate(p_price jsonb)
returns numeric
language plpgsql immutable
set search_path = ''
as $$
begin
  return greatest((p_price ->> 'output')::numeric, (p_price ->> 'reasoning')::numeric,
                  (p_price #>> '{long,output}')::numeric, (p_price #>> '{long,reasoning}')::numeric);
end;
$$;

-- Redefined: PL/pgSQL, same arithmetic.
create or replace function private.worst_case_cost(p_price jsonb, p_max_input_tokens bigint, p_max_output_tokens bigint)
returns bigint
language plpgsql immutable
set search_path = ''
as $$
begin
  return ceil((p_max_input_tokens::numeric * private.max_input_rate(p_price)
               + p_max_output_tokens::numeric * private.max_output_rate(p_price)) / 1000000)::bigint;
end;
$$;

-- Redefined: PL/pgSQL; validates as before, then builds the result in one expression.
create or replace function private.normalize_usage(p_usage jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  v_key text;
  v_value jsonb;
begin
  if p_usage is null then
    p_usage := '{}';
  end if;
  if jsonb_typeof(p_usage) <> 'object' then
    raise exception 'usage must be an object of token counts' using errcode = '22023';
  end if;
  for v_key, v_value in select key, value from jsonb_each(p_usage) loop
    if not v_key = any (private.token_buckets()) then
      raise exception 'unknown token bucket "%"', v_key
        using errcode = '22023', hint = 'Buckets: ' || array_to_string(private.token_buckets(), ', ');
    end if;
    if jsonb_typeof(v_value) <> 'null'
       and (jsonb_typeof(v_value) <> 'number' or (v_value #>> '{}') !~ '^-?[0-9]{1,18}$') then
      raise exception 'token count for "%" must be an integer, got %', v_key, v_value using errcode = '22023';
    end if;
  end loop;
  return jsonb_build_object(
    'input', greatest(0, coalesce((p_usage ->> 'input')::bigint, 0)),
    'cached_input', greatest(0, coalesce((p_usage ->> 'cached_input')::bigint, 0)),
    'cache_write', greatest(0, coalesce((p_usage ->> 'cache_write')::bigint, 0)),
    'cache_write_1h', greatest(0, coalesce((p_usage ->> 'cache_write_1h')::bigint, 0)),
    'output', greatest(0, coalesce((p_usage ->> 'output')::bigint, 0)),
    'reasoning', greatest(0, coalesce((p_usage ->> 'reasoning')::bigint, 0)),
    'image', greatest(0, coalesce((p_usage ->> 'image')::bigint, 0)),
    'audio', greatest(0, coalesce((p_usage ->> 'audio')::bigint, 0)));
end;
$$;

-- Redefined: PL/pgSQL, same states.
create or replace function private.balance_state_of(p_account public.accounts)
returns text
language plpgsql immutable
set search_path = ''
as $$
begin
  return case
    when p_account.balance + p_account.credit_limit <= 0 then 'depleted'
    when p_account.balance < p_account.low_balance_threshold then 'low'
    else 'ok'
  end;
end;
$$;

-- The alert of a crossing down (ok → low, → depleted), for an account whose new
-- values are given; crossing back up re-arms silently. One place for both callers.
create function private.raise_balance_alert(p_account public.accounts, p_previous_state text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_account.balance_state = 'low' and p_previous_state = 'ok' then
    insert into public.alerts (account_id, kind, message, details)
    values (p_account.id, 'low_balance', 'Your balance is below your alert threshold.',
            jsonb_build_object('balance', p_account.balance, 'threshold', p_account.low_balance_threshold));
  elsif p_account.balance_state = 'depleted' and p_previous_state <> 'depleted' then
    insert into public.alerts (account_id, kind, message, details)
    values (p_account.id, 'balance_depleted', 'Your balance is used up: requests are refused until you top up.',
            jsonb_build_object('balance', p_account.balance, 'credit_limit', p_account.credit_limit));
  end if;
end;
$$;

-- Redefined: the alert comes from raise_balance_alert; behaviour unchanged.
create or replace function private.refresh_balance_state(p_account_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account public.accounts;
  v_previous text;
begin
  select * into v_account from public.accounts where id = p_account_id;
  v_previous := v_account.balance_state;
  v_account.balance_state := private.balance_state_of(v_account);
  if v_account.balance_state = v_previous then
    return;
  end if;
  update public.accounts set balance_state = v_account.balance_state where id = p_account_id;
  perform private.raise_balance_alert(v_account, v_previous);
end;
$$;

-- The enabled model a request names, as the request will be billed and sent
-- upstream; a row of nulls when there is none.
create function private.priced_model(p_model text)
returns public.models
language plpgsql stable
set search_path = ''
as $$
declare
  v_model public.models;
begin
  select * into v_model from public.models where id = p_model and enabled;
  return v_model;
end;
$$;
revoke all on function private.priced_model(text) from public;

-- The rate limits a key is held to: its own, else its plan's; null means none.
create function private.rate_limits_of(p_key public.api_keys, p_plan_requests integer, p_plan_tokens integer)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
begin
  return jsonb_build_object(
    'requests_per_minute', coalesce(p_key.requests_per_minute, p_plan_requests),
    'tokens_per_minute', coalesce(p_key.tokens_per_minute, p_plan_tokens));
end;
$$;
revoke all on function private.rate_limits_of(public.api_keys, integer, integer) from public;

-- authorize_request ----------------------------------------------------------
-- Redefined with two more parameters, so the old signature is dropped:
-- p_providers, the providers the calling route can serve (null: any), and
-- p_calls, the priced calls the request may make at most ({"web_search": 10}):
-- held at their price per call, refused where they have none. Locks:
-- the key row (only when its policy counts what is in flight), then the account
-- (the conditional update that takes the hold), then the new usage_events row.
-- The result is built from the values read, with no second read.

drop function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean);

create function public.authorize_request(
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
  v_rates := private.effective_rates(v_model);
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
    hold, max_input_tokens, max_output_tokens, choices, output_capped, rates)
  values (
    p_request_id, v_key.account_id, v_key.id, v_model.id, v_model.provider, v_model.upstream_model,
    v_hold, p_max_input_tokens, v_max_output, p_choices, false, v_rates)
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
  select pl.requests_per_minute, pl.tokens_per_minute into v_plan_requests, v_plan_tokens
    from public.accounts a join public.plans pl on pl.id = a.plan where a.id = v_key.account_id;

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

-- Settlement -------------------------------------------------------------------
-- One request: its usage_events row (lock 1), its key (lock 2), its account
-- (lock 3), then the ledger row. Usage → cost in SQL; the rest of the hold is
-- released. Idempotent by request id. The charge never takes the account past
-- its credit limit: usage that overran the hold is charged as far as the balance
-- allows, the shortfall visible as amount - charged.
--
-- Late settlement: a request whose hold the stale-hold job already released
-- (status 'expired') is still settled once, with nothing left to release: what
-- was used is charged as far as the balance allows, and hold_expired_at keeps
-- the trace. A request that was never authorized is an error (PT404).

-- Closes the request's row and counts the charge on its key (locks 1 and 2,
-- which the caller holds or takes here).
create function private.record_settlement(
  p_event public.usage_events,
  p_outcome text,
  p_usage jsonb,
  p_usage_source text,
  p_error text,
  p_amount bigint,
  p_charge bigint,
  p_upstream_cost bigint
)
returns public.usage_events
language plpgsql
set search_path = ''
as $$
declare
  v_event public.usage_events;
  v_month date := date_trunc('month', now() at time zone 'UTC')::date;
begin
  update public.usage_events
     set status = p_outcome,
         input_tokens = (p_usage ->> 'input')::bigint,
         cached_input_tokens = (p_usage ->> 'cached_input')::bigint,
         cache_write_tokens = (p_usage ->> 'cache_write')::bigint,
         cache_write_1h_tokens = (p_usage ->> 'cache_write_1h')::bigint,
         output_tokens = (p_usage ->> 'output')::bigint,
         reasoning_tokens = (p_usage ->> 'reasoning')::bigint,
         image_tokens = (p_usage ->> 'image')::bigint,
         audio_tokens = (p_usage ->> 'audio')::bigint,
         usage_source = p_usage_source,
         amount = p_amount,
         charged = p_charge,
         upstream_cost = p_upstream_cost,
         error = left(p_error, 1000),
         settled_at = now()
   where request_id = p_event.request_id
  returning * into v_event;
  update public.api_keys
     set spent = spent + p_charge,
         month_spent = case when spent_month = v_month then month_spent + p_charge else p_charge end,
         spent_month = v_month,
         last_used_at = now()
   where id = p_event.api_key_id;
  return v_event;
end;
$$;
revoke all on function private.record_settlement(public.usage_events, text, jsonb, text, text, bigint, bigint, bigint) from public;

create function private.settle_one(
  p_request_id text,
  p_outcome text,
  p_usage jsonb,
  p_usage_source text,
  p_error text
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_usage jsonb;
  v_event public.usage_events;
  v_account public.accounts;
  v_previous_state text;
  v_release bigint;
  v_available bigint;
  v_amount bigint;
  v_upstream_cost bigint;
  v_charge bigint;
begin
  if p_outcome is null or p_outcome not in ('completed', 'aborted', 'failed') then
    raise exception 'outcome must be completed, aborted or failed, got %', coalesce(p_outcome, 'null')
      using errcode = '22023';
  end if;
  if p_usage_source is not null and p_usage_source not in ('provider', 'tokenizer', 'estimate') then
    raise exception 'usage source must be provider, tokenizer or estimate, got %', p_usage_source
      using errcode = '22023';
  end if;
  v_usage := private.normalize_usage(p_usage);

  -- Lock 1: the request.
  select * into v_event from public.usage_events where request_id = p_request_id for update;
  if not found then
    if v_usage = private.normalize_usage('{}') then
      -- Giving back a hold that was never taken (its authorization timed out at
      -- the gateway): remembered, so a late authorization is refused.
      insert into public.cancelled_requests (request_id) values (p_request_id) on conflict do nothing;
      return jsonb_build_object('status', 'cancelled', 'replayed', not found, 'request_id', p_request_id);
    end if;
    raise exception 'no authorized request with id %', p_request_id using errcode = 'PT404';
  end if;
  if v_event.status not in ('held', 'expired') then
    return private.settlement_result(v_event, true);
  end if;
  v_release := case when v_event.status = 'held' then v_event.hold else 0 end;
  v_amount := private.cost_of(v_usage, v_event.rates -> 'price');
  v_upstream_cost := private.cost_of(v_usage, v_event.rates -> 'cost');

  -- Lock 2: the key. Within its hold (the usual case) the charge is the amount
  -- whatever the balance, so the request and the key are written before the
  -- account is locked; otherwise the key is only locked now.
  if v_amount <= v_release then
    v_charge := v_amount;
    v_event := private.record_settlement(v_event, p_outcome, v_usage, p_usage_source, p_error, v_amount, v_charge, v_upstream_cost);
  else
    perform 1 from public.api_keys where id = v_event.api_key_id for no key update;
  end if;

  -- Lock 3: the account, by one update in the usual case. Beyond the hold, what
  -- may still be charged depends on the balance, read from the locked row first.
  if v_charge is null then
    select balance - held + credit_limit into v_available from public.accounts where id = v_event.account_id for no key update;
    v_charge := least(v_amount, greatest(0, v_available + v_release));
  end if;
  update public.accounts
     set balance = balance - v_charge, held = held - v_release, updated_at = now()
   where id = v_event.account_id
  returning * into v_account;
  if v_charge > 0 then
    insert into public.credit_ledger (account_id, amount, balance_after, reason, reference)
    values (v_account.id, -v_charge, v_account.balance, 'usage', p_request_id);
  end if;
  -- The returned row still carries the state before this charge.
  v_previous_state := v_account.balance_state;
  v_account.balance_state := private.balance_state_of(v_account);
  if v_account.balance_state <> v_previous_state then
    update public.accounts set balance_state = v_account.balance_state where id = v_account.id;
    perform private.raise_balance_alert(v_account, v_previous_state);
  end if;
  if v_event.status in ('held', 'expired') then
    v_event := private.record_settlement(v_event, p_outcome, v_usage, p_usage_source, p_error, v_amount, v_charge, v_upstream_cost);
  end if;

  return jsonb_build_object(
    'status', v_event.status,
    'replayed', false,
    'request_id', v_event.request_id,
    'account_id', v_event.account_id,
    'hold', v_event.hold,
    'amount', v_event.amount,
    'charged', v_event.charged,
    'upstream_cost', v_event.upstream_cost,
    'usage_source', v_event.usage_source,
    'balance', v_account.balance,
    'held', v_account.held,
    'available', v_account.balance - v_account.held + v_account.credit_limit);
end;
$$;
revoke all on function private.settle_one(text, text, jsonb, text, text) from public;

-- Redefined whole: the settlement is private.settle_one (lock order, late settlement).
create or replace function public.settle_request(
  p_request_id text,
  p_outcome text,
  p_usage jsonb default '{}',
  p_usage_source text default null,
  p_error text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  return private.settle_one(p_request_id, p_outcome, p_usage, p_usage_source, p_error);
end;
$$;

-- Many settlements in one call: [{request_id, outcome, usage, usage_source, error}].
-- The rows are locked level by level in key order first (requests, then keys,
-- then accounts), so two batches never wait on each other in a cycle. Each item
-- is settled on its own: one that fails (unknown request, bad usage) is reported
-- and the others still settle. Returns one result per item, in order:
-- {request_id, ok: true, result} or {request_id, ok: false, code, message}.
create function public.settle_requests(p_settlements jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_item jsonb;
  v_ids text[];
  v_results jsonb := '[]';
  v_code text;
  v_message text;
begin
  if jsonb_typeof(p_settlements) is distinct from 'array' then
    raise exception 'settlements must be an array' using errcode = '22023';
  end if;
  if jsonb_array_length(p_settlements) > 1000 then
    raise exception 'at most 1000 settlements per call' using errcode = '22023';
  end if;
  select array_agg(distinct item ->> 'request_id') into v_ids
    from jsonb_array_elements(p_settlements) as item where item ->> 'request_id' is not null;

  perform 1 from public.usage_events where request_id = any (v_ids) order by request_id for update;
  perform 1 from public.api_keys
   where id in (select api_key_id from public.usage_events where request_id = any (v_ids))
   order by id for no key update;
  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (v_ids))
   order by id for no key update;

  for v_item in select value from jsonb_array_elements(p_settlements) loop
    begin
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id',
        'ok', true,
        'result', private.settle_one(v_item ->> 'request_id', v_item ->> 'outcome', coalesce(v_item -> 'usage', '{}'),
                                     v_item ->> 'usage_source', v_item ->> 'error')));
    exception when others then
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text;
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', false, 'code', v_code, 'message', v_message));
    end;
  end loop;
  return v_results;
end;
$$;
revoke all on function public.settle_requests(jsonb) from public, anon, authenticated;
grant execute on function public.settle_requests(jsonb) to service_role;

-- Stale holds ------------------------------------------------------------------
-- Redefined whole: locks the stale requests (SKIP LOCKED: one being settled right
-- now is left to its settlement), then their accounts in id order, and releases
-- the holds set-wise. Marks hold_expired_at, so a settlement that arrives later
-- (an outage outlasted the gateway's retries) still charges what was used.

create or replace function public.expire_stale_holds(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz := p_now - (select stale_hold_after from public.billing_settings where id);
  v_ids text[];
  v_event public.usage_events;
begin
  select coalesce(array_agg(request_id), '{}') into v_ids
    from (select request_id from public.usage_events
           where status = 'held' and created_at < v_cutoff
           order by request_id
             for update skip locked) as stale;
  -- A late authorization comes within the stale-hold window or not at all.
  delete from public.cancelled_requests where cancelled_at < v_cutoff;
  if cardinality(v_ids) = 0 then
    return jsonb_build_object('expired', 0, 'cutoff', v_cutoff);
  end if;

  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (v_ids))
   order by id for no key update;
  update public.accounts a
     set held = a.held - stale.holds, updated_at = now()
    from (select account_id, sum(hold) as holds from public.usage_events where request_id = any (v_ids) group by account_id) as stale
   where a.id = stale.account_id;

  for v_event in
    update public.usage_events
       set status = 'expired', amount = 0, charged = 0, settled_at = p_now, hold_expired_at = p_now,
           error = 'not settled in time: the hold was released'
     where request_id = any (v_ids)
    returning *
  loop
    perform private.raise_alert_once(v_event.account_id, 'stale_hold',
      'A request was not settled in time; its hold was released. If its settlement arrives later, what was used is charged then.',
      jsonb_build_object('request_id', v_event.request_id, 'model', v_event.model_id, 'hold', v_event.hold,
                         'authorized_at', v_event.created_at),
      'stale_hold:' || v_event.request_id);
  end loop;
  return jsonb_build_object('expired', cardinality(v_ids), 'cutoff', v_cutoff);
end;
$$;

-- Stripe claw-back --------------------------------------------------------------
-- Redefined whole: the account is locked FOR NO KEY UPDATE (was FOR UPDATE, which
-- made every concurrent usage_events insert of the account wait for it).

create or replace function private.claw_back_stripe_payment(p_payment_id bigint, p_reason text, p_reference text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_payment public.stripe_payments;
  v_account public.accounts;
  v_target bigint;
  v_owed bigint;
  v_debit bigint;
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if v_payment.status <> 'credited' or coalesce(v_payment.amount_total, 0) <= 0 then
    return;
  end if;
  v_target := floor(v_payment.credits::numeric
                    * least(v_payment.amount_total, v_payment.refunded_amount + v_payment.disputed_amount)
                    / v_payment.amount_total)::bigint;
  v_owed := v_target - v_payment.debited - v_payment.uncollected;
  if v_owed <= 0 then
    return;
  end if;
  select * into v_account from public.accounts where id = v_payment.account_id for no key update;
  v_debit := least(v_owed, greatest(0, v_account.balance - v_account.held + v_account.credit_limit));
  if v_debit > 0 then
    perform private.post_ledger(v_payment.account_id, -v_debit, p_reason, p_reference,
                                format('%s of Stripe payment %s', p_reason, coalesce(v_payment.payment_intent_id, v_payment.checkout_session_id)));
  end if;
  update public.stripe_payments
     set debited = debited + v_debit, uncollected = uncollected + (v_owed - v_debit), updated_at = now()
   where id = p_payment_id;
  if v_owed > v_debit then
    perform private.raise_alert(v_payment.account_id, 'clawback_shortfall',
      format('A %s could not be taken back in full: %s credits were already spent.', p_reason, v_owed - v_debit),
      jsonb_build_object('payment_id', p_payment_id, 'owed', v_owed, 'debited', v_debit));
  end if;
end;
$$;

revoke all on function private.raise_balance_alert(public.accounts, text) from public;

-- Helpers nothing calls any more (their work is inlined above).
drop function private.dearest_rates(jsonb);
drop function private.rates_for(jsonb, numeric);
drop function private.prompt_tokens(jsonb);
drop function private.current_month();

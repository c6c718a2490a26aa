-- The money functions. Each is security definer with an empty search_path and
-- fully qualified names; execute is revoked from public and granted to exactly
-- the role that may call it.
--
-- Rounding rule (the only one): a request's cost is
--   ceil( sum over buckets of tokens * price_per_1M_tokens / 1,000,000 )
-- computed in exact numeric arithmetic and rounded up once, per request.

-- Helpers (schema private, not exposed) --------------------------------------

create function private.token_buckets()
returns text[]
language sql immutable
set search_path = ''
as $$
  select array['input', 'cached_input', 'cache_write', 'cache_write_1h',
               'output', 'reasoning', 'image', 'audio']
$$;

-- Validates a usage object ({bucket: tokens}) and returns it with every bucket
-- present. Unknown buckets and non-integers are refused; negative counts are
-- clamped to zero.
create function private.normalize_usage(p_usage jsonb)
returns jsonb
language plpgsql immutable
set search_path = ''
as $$
declare
  v_key text;
  v_value jsonb;
  v_result jsonb := '{}';
  v_bucket text;
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
    if jsonb_typeof(v_value) = 'null' then
      continue;
    end if;
    if jsonb_typeof(v_value) <> 'number' or (v_value #>> '{}') !~ '^-?[0-9]{1,18}$' then
      raise exception 'token count for "%" must be an integer, got %', v_key, v_value
        using errcode = '22023';
    end if;
  end loop;
  foreach v_bucket in array private.token_buckets() loop
    v_result := v_result || jsonb_build_object(
      v_bucket, greatest(0, coalesce((p_usage ->> v_bucket)::bigint, 0)));
  end loop;
  return v_result;
end;
$$;

-- The rates a request is billed at, with the documented fallbacks applied.
-- price.* is null only when the model is unpriced; cost.* may be null (unknown).
create function private.effective_rates(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'price', jsonb_build_object(
      'input', p_model.price_input,
      'cached_input', coalesce(p_model.price_cached_input, p_model.price_input),
      'cache_write', coalesce(p_model.price_cache_write, p_model.price_input),
      'cache_write_1h', coalesce(p_model.price_cache_write_1h, p_model.price_cache_write, p_model.price_input),
      'output', p_model.price_output,
      'reasoning', coalesce(p_model.price_reasoning, p_model.price_output),
      'image', coalesce(p_model.price_image, p_model.price_input),
      'audio', coalesce(p_model.price_audio, p_model.price_input)
    ),
    'cost', jsonb_build_object(
      'input', p_model.cost_input,
      'cached_input', coalesce(p_model.cost_cached_input, p_model.cost_input),
      'cache_write', coalesce(p_model.cost_cache_write, p_model.cost_input),
      'cache_write_1h', coalesce(p_model.cost_cache_write_1h, p_model.cost_cache_write, p_model.cost_input),
      'output', p_model.cost_output,
      'reasoning', coalesce(p_model.cost_reasoning, p_model.cost_output),
      'image', coalesce(p_model.cost_image, p_model.cost_input),
      'audio', coalesce(p_model.cost_audio, p_model.cost_input)
    )
  )
$$;

-- ceil(sum(tokens * rate) / 1e6). Null when a bucket that has tokens has no rate.
create function private.cost_of(p_usage jsonb, p_rates jsonb)
returns bigint
language sql immutable
set search_path = ''
as $$
  select case
    when bool_or((u.value)::numeric > 0 and jsonb_typeof(p_rates -> u.key) is distinct from 'number') then null
    else ceil(coalesce(sum(
      case when (u.value)::numeric > 0 then (u.value)::numeric * (p_rates ->> u.key)::numeric else 0 end
    ), 0) / 1000000)::bigint
  end
  from jsonb_each_text(p_usage) as u
$$;

-- The dearest rate an input-side token can be billed at, and an output-side one.
create function private.max_input_rate(p_price jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select greatest(
    (p_price ->> 'input')::numeric, (p_price ->> 'cached_input')::numeric,
    (p_price ->> 'cache_write')::numeric, (p_price ->> 'cache_write_1h')::numeric,
    (p_price ->> 'image')::numeric, (p_price ->> 'audio')::numeric)
$$;

create function private.max_output_rate(p_price jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select greatest((p_price ->> 'output')::numeric, (p_price ->> 'reasoning')::numeric)
$$;

-- Worst case of a request: every input token at the dearest input-side rate,
-- every output token at the dearer of output and reasoning.
create function private.worst_case_cost(p_price jsonb, p_max_input_tokens bigint, p_max_output_tokens bigint)
returns bigint
language sql immutable
set search_path = ''
as $$
  select ceil((
    p_max_input_tokens::numeric * private.max_input_rate(p_price)
    + p_max_output_tokens::numeric * private.max_output_rate(p_price)
  ) / 1000000)::bigint
$$;

-- The balance state an account is in: depleted when nothing is left to spend
-- (credit limit included), low below its threshold, ok otherwise.
create function private.balance_state_of(p_account public.accounts)
returns text
language sql immutable
set search_path = ''
as $$
  select case
    when p_account.balance + p_account.credit_limit <= 0 then 'depleted'
    when p_account.balance < p_account.low_balance_threshold then 'low'
    else 'ok'
  end
$$;

-- Moves an account to the state its balance is in. Crossing down (ok → low,
-- → depleted) writes one alert to the outbox; crossing back up re-arms silently.
create function private.refresh_balance_state(p_account_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_account public.accounts;
  v_state text;
begin
  select * into v_account from public.accounts where id = p_account_id;
  v_state := private.balance_state_of(v_account);
  if v_state = v_account.balance_state then
    return;
  end if;
  update public.accounts set balance_state = v_state where id = p_account_id;
  if v_state = 'low' and v_account.balance_state = 'ok' then
    insert into public.alerts (account_id, kind, message, details)
    values (p_account_id, 'low_balance', 'Your balance is below your alert threshold.',
            jsonb_build_object('balance', v_account.balance, 'threshold', v_account.low_balance_threshold));
  elsif v_state = 'depleted' then
    insert into public.alerts (account_id, kind, message, details)
    values (p_account_id, 'balance_depleted', 'Your balance is used up: requests are refused until you top up.',
            jsonb_build_object('balance', v_account.balance, 'credit_limit', v_account.credit_limit));
  end if;
end;
$$;

-- The one place a balance changes: moves the balance and appends the ledger row
-- in the same statement sequence. The accounts check constraint refuses any
-- change that would pass the credit limit.
create function private.post_ledger(
  p_account_id uuid,
  p_amount bigint,
  p_reason text,
  p_reference text,
  p_note text default null
)
returns public.credit_ledger
language plpgsql
set search_path = ''
as $$
declare
  v_balance bigint;
  v_entry public.credit_ledger;
begin
  update public.accounts
     set balance = balance + p_amount, updated_at = now()
   where id = p_account_id
  returning balance into v_balance;
  if not found then
    raise exception 'account % does not exist', p_account_id using errcode = 'PT404';
  end if;
  insert into public.credit_ledger (account_id, amount, balance_after, reason, reference, note)
  values (p_account_id, p_amount, v_balance, p_reason, p_reference, p_note)
  returning * into v_entry;
  perform private.refresh_balance_state(p_account_id);
  return v_entry;
end;
$$;

-- The first day of the current calendar month, UTC: key monthly spend resets then.
create function private.current_month()
returns date
language sql stable
set search_path = ''
as $$
  select date_trunc('month', now() at time zone 'UTC')::date
$$;

create function private.refusal(p_code text, p_message text, p_details jsonb default '{}')
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object('status', 'refused', 'code', p_code, 'message', p_message) || p_details
$$;

-- The top-up links of the active packs, for the gateway's 402 and /v1/credits.
create function private.top_up_links()
returns jsonb
language sql stable
set search_path = ''
as $$
  select coalesce(jsonb_agg(jsonb_build_object(
           'name', p.name, 'url', p.payment_link_url, 'unit_amount', p.unit_amount, 'currency', p.currency,
           'credits', p.credits + p.bonus_credits) order by p.unit_amount), '[]')
  from public.credit_packs p
  where p.active and p.payment_link_url is not null
$$;
revoke all on function private.top_up_links() from public;

revoke all on all functions in schema private from public;

-- New users get an account (and the configured starting credits) -------------

create function private.handle_new_user()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_settings public.billing_settings;
  v_account_id uuid;
begin
  select * into v_settings from public.billing_settings where id;
  insert into public.accounts (user_id, credit_limit, low_balance_threshold)
  values (new.id, coalesce(v_settings.default_credit_limit, 0),
          coalesce(v_settings.default_low_balance_threshold, 1000000))
  returning id into v_account_id;
  if coalesce(v_settings.signup_credits, 0) > 0 then
    perform private.post_ledger(v_account_id, v_settings.signup_credits, 'signup', new.id::text,
                                'Starting credits');
  end if;
  return new;
end;
$$;
revoke all on function private.handle_new_user() from public;

create trigger on_auth_user_created
  after insert on auth.users
  for each row execute function private.handle_new_user();

-- authorize_request ----------------------------------------------------------
-- One round trip before the upstream call: key hash → account, key policy and
-- model price; takes the hold atomically. Refusals come back as
-- {status: 'refused', code, message, ...} and write nothing. Idempotent by
-- request id: a repeat returns the first authorization, with replayed = true.

create function private.authorization_result(p_event public.usage_events, p_replayed boolean)
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
    -- Rate limits: the key's own, else its plan's; null means none.
    'limits', jsonb_build_object(
      'requests_per_minute', coalesce(k.requests_per_minute, pl.requests_per_minute),
      'tokens_per_minute', coalesce(k.tokens_per_minute, pl.tokens_per_minute))
  )
  from public.accounts a
  join public.api_keys k on k.id = p_event.api_key_id
  left join public.plans pl on pl.id = a.plan
  where a.id = p_event.account_id
$$;
revoke all on function private.authorization_result(public.usage_events, boolean) from public;

create function public.authorize_request(
  p_request_id text,
  p_key_hash text,
  p_model text,
  p_max_input_tokens bigint,
  p_max_output_tokens bigint default null,
  p_client_ip inet default null,
  p_choices integer default 1,
  p_cap_output boolean default false
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_model public.models;
  v_account public.accounts;
  v_event public.usage_events;
  v_rates jsonb;
  v_max_output bigint;
  v_hold bigint;
  v_affordable numeric;
  v_capped boolean := false;
  v_held boolean;
  v_open_count bigint;
  v_open_holds bigint;
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

  select * into v_model from public.models where id = p_model and enabled;
  if not found then
    return private.refusal('model_not_found', format('The model %s does not exist or is not available.', p_model));
  end if;
  if v_key.allowed_models is not null and not (p_model = any (v_key.allowed_models)) then
    return private.refusal('model_not_allowed', format('This API key may not use the model %s.', p_model));
  end if;
  v_rates := private.effective_rates(v_model);
  if v_rates #> '{price,input}' = 'null' or v_rates #> '{price,output}' = 'null' then
    return private.refusal('model_not_priced', format('The model %s has no price and cannot be billed.', p_model));
  end if;

  v_max_output := coalesce(p_max_output_tokens, v_model.max_output_tokens);
  if v_max_output > v_model.max_output_tokens then
    return private.refusal('invalid_max_tokens',
      format('max output tokens %s is above the model''s limit of %s', v_max_output, v_model.max_output_tokens),
      jsonb_build_object('limit', v_model.max_output_tokens));
  end if;
  v_hold := private.worst_case_cost(v_rates -> 'price', p_max_input_tokens, v_max_output * p_choices);

  -- Key policy that depends on what is in flight: the key's row is locked so
  -- concurrent requests of one key are counted one after the other.
  if v_key.spend_limit is not null or v_key.monthly_spend_limit is not null or v_key.max_concurrent is not null then
    select * into v_key from public.api_keys where id = v_key.id for update;
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
       and (case when v_key.spent_month = private.current_month() then v_key.month_spent else 0 end) + v_open_holds + v_hold
           > v_key.monthly_spend_limit then
      return private.refusal('key_monthly_limit_reached',
        format('This API key has reached its monthly spend limit of %s.', v_key.monthly_spend_limit),
        jsonb_build_object('limit', v_key.monthly_spend_limit));
    end if;
  end if;

  begin
    -- The hold is taken by one conditional update: never read-then-write. A
    -- depleted account is stopped until it is topped up.
    update public.accounts
       set held = held + v_hold, updated_at = now()
     where id = v_key.account_id
       and balance - held + credit_limit >= v_hold
       and balance_state <> 'depleted'
    returning * into v_account;
    v_held := found;
    if not v_held and p_cap_output then
      -- The caller set no output limit: offer the largest one the balance affords
      -- after the worst case of the input. The conditional update still decides.
      select * into v_account from public.accounts where id = v_key.account_id;
      if private.max_output_rate(v_rates -> 'price') > 0 then
        v_affordable := floor(
          ((v_account.balance - v_account.held + v_account.credit_limit)::numeric * 1000000
           - p_max_input_tokens::numeric * private.max_input_rate(v_rates -> 'price'))
          / (private.max_output_rate(v_rates -> 'price') * p_choices));
        if v_affordable >= 1 and v_affordable < v_max_output then
          v_max_output := v_affordable::bigint;
          v_capped := true;
          v_hold := private.worst_case_cost(v_rates -> 'price', p_max_input_tokens, v_max_output * p_choices);
          update public.accounts
             set held = held + v_hold, updated_at = now()
           where id = v_key.account_id
             and balance - held + credit_limit >= v_hold
             and balance_state <> 'depleted'
          returning * into v_account;
          v_held := found;
        end if;
      end if;
    end if;
    if not v_held then
      select * into v_account from public.accounts where id = v_key.account_id;
      return private.refusal('insufficient_credits',
        format('Insufficient credits: this request may cost up to %s, %s is available.',
               v_hold, greatest(0, v_account.balance - v_account.held + v_account.credit_limit)),
        jsonb_build_object(
          'account_id', v_account.id,
          'required', v_hold,
          'available', greatest(0, v_account.balance - v_account.held + v_account.credit_limit),
          'top_up_links', private.top_up_links()));
    end if;

    insert into public.usage_events (
      request_id, account_id, api_key_id, model_id, provider, upstream_model,
      hold, max_input_tokens, max_output_tokens, choices, output_capped, rates)
    values (
      p_request_id, v_key.account_id, v_key.id, v_model.id, v_model.provider, v_model.upstream_model,
      v_hold, p_max_input_tokens, v_max_output, p_choices, v_capped, v_rates)
    returning * into v_event;
  exception when unique_violation then
    -- The same request id was authorized concurrently: our hold is rolled back
    -- with this block and the first authorization stands.
    select * into v_event from public.usage_events where request_id = p_request_id;
    if v_event.api_key_id <> v_key.id then
      return private.refusal('request_id_conflict', 'This request id belongs to another key.');
    end if;
    return private.authorization_result(v_event, true);
  end;

  return private.authorization_result(v_event, false);
end;
$$;

-- settle_request -------------------------------------------------------------
-- Actual token buckets → cost in SQL → one ledger row; the rest of the hold is
-- released. Idempotent by request id. The charge never takes the account past
-- its credit limit: if usage overran the hold and the balance cannot cover it,
-- the shortfall stays visible as amount - charged.

create function private.settlement_result(p_event public.usage_events, p_replayed boolean)
returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'status', p_event.status,
    'replayed', p_replayed,
    'request_id', p_event.request_id,
    'account_id', p_event.account_id,
    'hold', p_event.hold,
    'amount', p_event.amount,
    'charged', p_event.charged,
    'upstream_cost', p_event.upstream_cost,
    'usage_source', p_event.usage_source,
    'balance', a.balance,
    'held', a.held,
    'available', a.balance - a.held + a.credit_limit
  )
  from public.accounts a
  where a.id = p_event.account_id
$$;
revoke all on function private.settlement_result(public.usage_events, boolean) from public;

create function public.settle_request(
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
declare
  v_usage jsonb;
  v_event public.usage_events;
  v_account public.accounts;
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

  select * into v_event from public.usage_events where request_id = p_request_id for update;
  if not found then
    raise exception 'no authorized request with id %', p_request_id using errcode = 'PT404';
  end if;
  if v_event.status <> 'held' then
    return private.settlement_result(v_event, true);
  end if;

  v_amount := private.cost_of(v_usage, v_event.rates -> 'price');
  v_upstream_cost := private.cost_of(v_usage, v_event.rates -> 'cost');

  -- Locks in the order authorize_request takes them (key, then account), so the
  -- two never wait on each other in a cycle.
  perform 1 from public.api_keys where id = v_event.api_key_id for update;
  select * into v_account from public.accounts where id = v_event.account_id for update;
  v_charge := least(v_amount,
                    greatest(0, v_account.balance - v_account.held + v_event.hold + v_account.credit_limit));

  update public.accounts
     set held = held - v_event.hold, updated_at = now()
   where id = v_event.account_id;
  if v_charge > 0 then
    perform private.post_ledger(v_event.account_id, -v_charge, 'usage', p_request_id);
  end if;

  update public.usage_events
     set status = p_outcome,
         input_tokens = (v_usage ->> 'input')::bigint,
         cached_input_tokens = (v_usage ->> 'cached_input')::bigint,
         cache_write_tokens = (v_usage ->> 'cache_write')::bigint,
         cache_write_1h_tokens = (v_usage ->> 'cache_write_1h')::bigint,
         output_tokens = (v_usage ->> 'output')::bigint,
         reasoning_tokens = (v_usage ->> 'reasoning')::bigint,
         image_tokens = (v_usage ->> 'image')::bigint,
         audio_tokens = (v_usage ->> 'audio')::bigint,
         usage_source = p_usage_source,
         amount = v_amount,
         charged = v_charge,
         upstream_cost = v_upstream_cost,
         error = left(p_error, 1000),
         settled_at = now()
   where request_id = p_request_id
  returning * into v_event;

  update public.api_keys
     set spent = spent + v_charge,
         month_spent = case when spent_month = private.current_month() then month_spent + v_charge else v_charge end,
         spent_month = private.current_month(),
         last_used_at = now()
   where id = v_event.api_key_id;

  return private.settlement_result(v_event, false);
end;
$$;

-- grant_credits --------------------------------------------------------------
-- Manual grants (positive) and adjustments (either sign). Idempotent by
-- reference: the same reason and reference never post twice.

create function public.grant_credits(
  p_account_id uuid,
  p_amount bigint,
  p_reason text default 'grant',
  p_reference text default null,
  p_note text default null
)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_entry public.credit_ledger;
begin
  if p_reason is null or p_reason not in ('grant', 'adjustment') then
    raise exception 'reason must be grant or adjustment, got %', coalesce(p_reason, 'null')
      using errcode = '22023';
  end if;
  if p_amount is null or p_amount = 0 then
    raise exception 'amount must be a non-zero integer of micro-units' using errcode = '22023';
  end if;
  if p_reason = 'grant' and p_amount < 0 then
    raise exception 'a grant must be positive; use reason adjustment to debit' using errcode = '22023';
  end if;
  if p_reference is not null and char_length(p_reference) not between 1 and 200 then
    raise exception 'reference must be 1 to 200 characters' using errcode = '22023';
  end if;

  if p_reference is not null then
    select * into v_entry from public.credit_ledger where reason = p_reason and reference = p_reference;
    if found then
      if v_entry.account_id <> p_account_id or v_entry.amount <> p_amount then
        raise exception 'reference % was already used for a different %', p_reference, p_reason
          using errcode = 'PT409';
      end if;
      return jsonb_build_object('replayed', true, 'entry_id', v_entry.id, 'account_id', v_entry.account_id,
                                'amount', v_entry.amount, 'balance', v_entry.balance_after);
    end if;
  end if;

  begin
    v_entry := private.post_ledger(p_account_id, p_amount, p_reason, p_reference, p_note);
  exception
    when check_violation then
      raise exception 'this adjustment would take the account past its credit limit'
        using errcode = 'PT409';
    when unique_violation then
      -- Lost a race with the same reference: report the entry that won.
      select * into v_entry from public.credit_ledger where reason = p_reason and reference = p_reference;
      return jsonb_build_object('replayed', true, 'entry_id', v_entry.id, 'account_id', v_entry.account_id,
                                'amount', v_entry.amount, 'balance', v_entry.balance_after);
  end;
  return jsonb_build_object('replayed', false, 'entry_id', v_entry.id, 'account_id', v_entry.account_id,
                            'amount', v_entry.amount, 'balance', v_entry.balance_after);
end;
$$;

-- API keys for signed-in users -----------------------------------------------

-- Sets a key's policy from {allowed_models, allowed_ips, spend_limit,
-- monthly_spend_limit, max_concurrent, requests_per_minute, tokens_per_minute}.
-- A field left out is unchanged; null clears it (no limit).
create function private.apply_key_policy(p_key_id uuid, p_policy jsonb)
returns public.api_keys
language plpgsql
set search_path = ''
as $$
declare
  v_field text;
  v_row public.api_keys;
  v_limits text[] := array['spend_limit', 'monthly_spend_limit', 'max_concurrent', 'requests_per_minute', 'tokens_per_minute'];
begin
  if p_policy is null or jsonb_typeof(p_policy) <> 'object' then
    raise exception 'policy must be an object' using errcode = '22023';
  end if;
  for v_field in select jsonb_object_keys(p_policy) loop
    if not v_field = any (v_limits || array['allowed_models', 'allowed_ips']) then
      raise exception 'unknown policy field "%"', v_field using errcode = '22023';
    end if;
    if v_field = any (v_limits) and jsonb_typeof(p_policy -> v_field) <> 'null'
       and (jsonb_typeof(p_policy -> v_field) <> 'number' or (p_policy ->> v_field) !~ '^[0-9]{1,15}$') then
      raise exception 'policy field "%" must be a non-negative integer or null', v_field using errcode = '22023';
    end if;
    if v_field in ('allowed_models', 'allowed_ips') and jsonb_typeof(p_policy -> v_field) not in ('array', 'null') then
      raise exception 'policy field "%" must be an array or null', v_field using errcode = '22023';
    end if;
  end loop;
  begin
    update public.api_keys set
      allowed_models = case when p_policy ? 'allowed_models'
        then (select array_agg(value) from jsonb_array_elements_text(nullif(p_policy -> 'allowed_models', 'null'))) else allowed_models end,
      allowed_ips = case when p_policy ? 'allowed_ips'
        then (select array_agg(value::cidr) from jsonb_array_elements_text(nullif(p_policy -> 'allowed_ips', 'null'))) else allowed_ips end,
      spend_limit = case when p_policy ? 'spend_limit' then (p_policy ->> 'spend_limit')::bigint else spend_limit end,
      monthly_spend_limit = case when p_policy ? 'monthly_spend_limit' then (p_policy ->> 'monthly_spend_limit')::bigint else monthly_spend_limit end,
      max_concurrent = case when p_policy ? 'max_concurrent' then (p_policy ->> 'max_concurrent')::integer else max_concurrent end,
      requests_per_minute = case when p_policy ? 'requests_per_minute' then (p_policy ->> 'requests_per_minute')::integer else requests_per_minute end,
      tokens_per_minute = case when p_policy ? 'tokens_per_minute' then (p_policy ->> 'tokens_per_minute')::integer else tokens_per_minute end
    where id = p_key_id
    returning * into v_row;
  exception
    when invalid_text_representation then
      raise exception 'allowed_ips must be CIDR networks, such as 10.0.0.0/8 or 2001:db8::/32' using errcode = '22023';
    when check_violation then
      raise exception 'limits must be positive' using errcode = '22023';
  end;
  return v_row;
end;
$$;
revoke all on function private.apply_key_policy(uuid, jsonb) from public;

create function private.key_summary(p_row public.api_keys)
returns jsonb
language sql stable
set search_path = ''
as $$
  select jsonb_build_object(
    'id', p_row.id, 'name', p_row.name, 'prefix', p_row.prefix, 'expires_at', p_row.expires_at,
    'created_at', p_row.created_at,
    'policy', jsonb_build_object(
      'allowed_models', to_jsonb(p_row.allowed_models), 'allowed_ips', to_jsonb(p_row.allowed_ips::text[]),
      'spend_limit', p_row.spend_limit, 'monthly_spend_limit', p_row.monthly_spend_limit,
      'max_concurrent', p_row.max_concurrent, 'requests_per_minute', p_row.requests_per_minute,
      'tokens_per_minute', p_row.tokens_per_minute))
$$;
revoke all on function private.key_summary(public.api_keys) from public;

create function public.create_api_key(p_name text, p_expires_at timestamptz default null, p_policy jsonb default '{}')
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

-- Users may restrict their own keys (models, addresses, spend, concurrency, rates).
create function public.update_api_key_policy(p_key_id uuid, p_policy jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.api_keys;
begin
  perform 1 from public.api_keys k join public.accounts a on a.id = k.account_id
   where k.id = p_key_id and a.user_id = (select auth.uid());
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  v_row := private.apply_key_policy(p_key_id, p_policy);
  return private.key_summary(v_row);
end;
$$;

create function public.revoke_api_key(p_key_id uuid)
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
    from public.accounts a
   where k.id = p_key_id and a.id = k.account_id and a.user_id = (select auth.uid())
  returning k.* into v_row;
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  return jsonb_build_object('id', v_row.id, 'revoked_at', v_row.revoked_at);
end;
$$;

-- key_overview ----------------------------------------------------------------
-- What a key may see of its own account (GET /v1/credits, GET /v1/models).
-- Read-only; refuses unknown, revoked and expired keys like authorize_request.

create function public.key_overview(p_key_hash text)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_account public.accounts;
begin
  select * into v_key from public.api_keys where key_hash = p_key_hash;
  if not found then
    return private.refusal('invalid_api_key', 'Invalid API key.');
  end if;
  if v_key.revoked_at is not null then
    return private.refusal('api_key_revoked', 'This API key has been revoked.');
  end if;
  if v_key.expires_at is not null and v_key.expires_at <= now() then
    return private.refusal('api_key_expired', 'This API key has expired.');
  end if;
  select * into v_account from public.accounts where id = v_key.account_id;
  return jsonb_build_object(
    'status', 'ok',
    'account', jsonb_build_object(
      'id', v_account.id,
      'balance', v_account.balance,
      'held', v_account.held,
      'credit_limit', v_account.credit_limit,
      'available', v_account.balance - v_account.held + v_account.credit_limit,
      'plan', v_account.plan),
    'key', jsonb_build_object(
      'id', v_key.id,
      'name', v_key.name,
      'prefix', v_key.prefix,
      'allowed_models', to_jsonb(v_key.allowed_models),
      'expires_at', v_key.expires_at),
    'top_up_links', private.top_up_links());
end;
$$;

-- Grants ---------------------------------------------------------------------

revoke all on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean) from public, anon, authenticated;
revoke all on function public.settle_request(text, text, jsonb, text, text) from public, anon, authenticated;
revoke all on function public.grant_credits(uuid, bigint, text, text, text) from public, anon, authenticated;
revoke all on function public.create_api_key(text, timestamptz, jsonb) from public, anon, service_role;
revoke all on function public.update_api_key_policy(uuid, jsonb) from public, anon, service_role;
revoke all on function public.revoke_api_key(uuid) from public, anon, service_role;

grant execute on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean) to service_role;
grant execute on function public.settle_request(text, text, jsonb, text, text) to service_role;
revoke all on function public.key_overview(text) from public, anon, authenticated;
grant execute on function public.key_overview(text) to service_role;
grant execute on function public.grant_credits(uuid, bigint, text, text, text) to service_role;
grant execute on function public.create_api_key(text, timestamptz, jsonb) to authenticated;
grant execute on function public.update_api_key_policy(uuid, jsonb) to authenticated;
grant execute on function public.revoke_api_key(uuid) to authenticated;

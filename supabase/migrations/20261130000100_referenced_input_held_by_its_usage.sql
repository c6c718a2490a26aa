-- Stored content a request refers to is held at what it can be, when every piece
-- of it is known.
--
-- A Responses request that continues a stored response (previous_response_id)
-- or sends stored items back by id (item_reference, a reasoning item by its id)
-- has that content added upstream, of a size the gateway cannot see in the
-- request: it was held as content of unknown size, 1,048,576 input tokens. The
-- AI SDK sends every earlier answer of a conversation back as item references
-- when responses are stored (its default), so every turn after the first was
-- held at a million tokens more than it carried: $1.57 at a $1.50 input price,
-- whatever the conversation's length, and 64 such requests at once $100.
--
-- The gateway records each stored response it answered, with the ids of its
-- output items (20261129003600), against the request that made it, whose usage
-- the provider reported. What such a reference adds is part of what that
-- response read or wrote: a continued response adds its input and its output;
-- an item is one of its output items. So when every referenced response and
-- item is recorded for the key's account, and each of those responses was
-- completed with usage from the provider, the request is held at its own
-- bound (the gateway sends the tokens besides the references) plus the tokens
-- of those responses, every bucket, each response once, and a little framing
-- per response and per item. Otherwise (an id recorded for no account yet, a
-- response still running, aborted, or billed by an estimate) it is held as
-- before. Never above the bound as before: least() of the two. The gateway
-- sends the references only for a request with no hosted tool (a search runs
-- the model again over the whole context).
--
-- authorize_request takes the references, so its signature changes: the old
-- function is dropped and the whole function created again. What changed from
-- 20261127001400: the parameter p_referenced, its check, and the input bound
-- (v_max_input) used for the hold, the row, the output cap and the result in
-- place of p_max_input_tokens. private.authorize_item (20261129000600) is
-- redefined whole to pass the item's `referenced`.

-- The shape the gateway sends: {previous_response_id: text | null, item_ids: [text],
-- besides: tokens}, naming at least one, within what stored_elsewhere takes.
create function private.references_well_formed(p_referenced jsonb)
returns boolean
language sql immutable
set search_path = ''
as $$
  select jsonb_typeof(p_referenced) = 'object'
     and jsonb_typeof(p_referenced -> 'besides') = 'number'
     and (p_referenced ->> 'besides')::numeric between 0 and 1e15
     and (p_referenced ->> 'besides')::numeric = floor((p_referenced ->> 'besides')::numeric)
     and coalesce(jsonb_typeof(p_referenced -> 'previous_response_id'), 'null') in ('string', 'null')
     and char_length(coalesce(p_referenced ->> 'previous_response_id', 'x')) between 1 and 200
     and coalesce(jsonb_typeof(p_referenced -> 'item_ids'), 'array') = 'array'
     and coalesce(jsonb_array_length(p_referenced -> 'item_ids'), 0) <= 1000
     and not exists (select 1 from jsonb_array_elements(coalesce(p_referenced -> 'item_ids', '[]')) as item (id)
                      where jsonb_typeof(item.id) <> 'string' or char_length(item.id #>> '{}') not between 1 and 200)
     and (p_referenced ->> 'previous_response_id' is not null or coalesce(jsonb_array_length(p_referenced -> 'item_ids'), 0) > 0)
$$;
revoke all on function private.references_well_formed(jsonb) from public;

-- The input a request is held at when all it refers to is known (see above), or
-- null. Each item id is looked up through the index on its own, the account
-- looked at among the responses that list it (as stored_elsewhere does, for the
-- reasons given in 20261129003800).
create function private.referenced_input_bound(p_account_id uuid, p_referenced jsonb)
returns bigint
language plpgsql stable
set search_path = ''
as $$
declare
  v_previous text := p_referenced ->> 'previous_response_id';
  v_ids text[] := array(select distinct item.id from jsonb_array_elements_text(coalesce(p_referenced -> 'item_ids', '[]')) as item (id));
  v_responses text[] := '{}';
  v_unknown boolean := false;
  v_unsettled bigint;
  v_tokens numeric;
  v_items numeric;
begin
  if v_previous is not null then
    if not exists (select 1 from public.stored_responses r where r.response_id = v_previous and r.account_id = p_account_id) then
      return null;
    end if;
    v_responses := array[v_previous];
  end if;
  if cardinality(v_ids) > 0 then
    select coalesce(bool_or(holding.response_id is null), false),
           v_responses || coalesce(array_agg(distinct holding.response_id) filter (where holding.response_id is not null), '{}')
      into v_unknown, v_responses
      from unnest(v_ids) as item (id)
      left join lateral (
        select r.response_id, r.account_id from public.stored_responses r where r.item_ids @> array[item.id] offset 0
      ) as listed on true
      left join lateral (select listed.response_id where listed.account_id = p_account_id) as holding on true;
    if v_unknown then
      return null;
    end if;
  end if;
  v_responses := array(select distinct response.id from unnest(v_responses) as response (id));
  select count(*) filter (where e.request_id is null or e.status <> 'completed' or e.usage_source is distinct from 'provider'),
         coalesce(sum(e.input_tokens + e.cached_input_tokens + e.cache_write_tokens + e.cache_write_1h_tokens
                      + e.output_tokens + e.reasoning_tokens + e.image_tokens + e.audio_tokens), 0),
         coalesce(sum(cardinality(r.item_ids)), 0)
    into v_unsettled, v_tokens, v_items
    from public.stored_responses r
    left join public.usage_events e on e.request_id = r.request_id
   where r.response_id = any (v_responses);
  if v_unsettled > 0 then
    return null;
  end if;
  -- Framing: an item's role and delimiters, a response's turn.
  return least((p_referenced ->> 'besides')::numeric + v_tokens + 64 * cardinality(v_responses) + 8 * v_items, 9e15)::bigint;
end;
$$;
revoke all on function private.referenced_input_bound(uuid, jsonb) from public;

drop function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean, text[], jsonb);

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
  p_calls jsonb default '{}',
  p_referenced jsonb default null
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
  v_max_input bigint;
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
  if p_referenced is not null and not private.references_well_formed(p_referenced) then
    return private.refusal('invalid_request', 'referenced input must name a response id or item ids (at most 1000, each 1 to 200 characters) and the tokens besides them, at most max input tokens');
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
  -- Stored content the request refers to, when every piece of it is known: held at what
  -- the responses it comes from read and wrote, not at a context window (least ignores
  -- the null of content not known).
  v_max_input := least(p_max_input_tokens, case when p_referenced is not null then private.referenced_input_bound(v_key.account_id, p_referenced) end);
  v_hold := ceil((v_max_input * v_input_rate + v_max_output * p_choices * v_output_rate + v_calls) / 1000000)::bigint;

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
    v_hold, v_max_input, v_max_output, p_choices, false, v_rates, coalesce(v_multiplier, 10000))
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
      v_affordable := floor((v_available::numeric * 1000000 - v_max_input * v_input_rate - v_calls) / (v_output_rate * p_choices));
      if v_affordable >= 1 and v_affordable < v_max_output then
        v_max_output := v_affordable::bigint;
        v_capped := true;
        v_hold := ceil((v_max_input * v_input_rate + v_max_output * p_choices * v_output_rate + v_calls) / 1000000)::bigint;
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
    'max_input_tokens', v_max_input,
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

revoke all on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean, text[], jsonb, jsonb) from public, anon, authenticated;
grant execute on function public.authorize_request(text, text, text, bigint, bigint, inet, integer, boolean, text[], jsonb, jsonb) to service_role;

create or replace function private.authorize_item(p_item jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  return public.authorize_request(
    p_item ->> 'request_id',
    p_item ->> 'key_hash',
    p_item ->> 'model',
    (p_item ->> 'max_input_tokens')::bigint,
    (p_item ->> 'max_output_tokens')::bigint,
    (p_item ->> 'client_ip')::inet,
    coalesce((p_item ->> 'choices')::integer, 1),
    coalesce((p_item ->> 'cap_output')::boolean, false),
    case when jsonb_typeof(p_item -> 'providers') = 'array'
         then array(select jsonb_array_elements_text(p_item -> 'providers')) end,
    coalesce(p_item -> 'calls', '{}'),
    case when jsonb_typeof(p_item -> 'referenced') = 'null' then null else p_item -> 'referenced' end);
end;
$$;

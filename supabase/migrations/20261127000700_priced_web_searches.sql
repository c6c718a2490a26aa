-- Hosted web searches, priced per call. The agents' default tools include the
-- providers' own web search (OpenAI's web_search, Anthropic's web_search server
-- tool, Gemini's Google Search grounding), which the upstream bills per search
-- beyond tokens. A model with a price per search serves them; the request is held
-- at its bound of searches (authorize_request's p_calls) and billed for the
-- searches its response reports; a model without one still refuses them.
--
-- The price is kept per call (micro-units per search); in the rates a request is
-- billed at it is a rate per million calls like every other bucket's, so the one
-- rounding rule applies unchanged.

alter table public.models
  add column cost_web_search bigint,
  add column price_web_search bigint,
  add constraint models_web_search_not_negative check (cost_web_search >= 0 and price_web_search >= 0);
comment on column public.models.price_web_search is 'Micro-units per hosted web search; null: the model does not serve them.';
grant select (price_web_search) on public.models to anon, authenticated;

alter table public.usage_events add column web_searches bigint not null default 0;
grant select (web_searches) on public.usage_events to authenticated;

create or replace view public.model_prices
with (security_invoker = true)
as
select
  id, provider, display_name, max_output_tokens,
  price_input, price_cached_input, price_cache_write, price_cache_write_1h,
  price_output, price_reasoning, price_image, price_audio, created_at,
  long_context_threshold, long_context_price, price_web_search
from public.models
where enabled and price_input is not null and price_output is not null;

-- Redefined: the cost and price per search are among a model's columns.
create or replace function private.model_costs(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object('input', p_model.cost_input, 'cached_input', p_model.cost_cached_input,
    'cache_write', p_model.cost_cache_write, 'cache_write_1h', p_model.cost_cache_write_1h, 'output', p_model.cost_output,
    'image', p_model.cost_image, 'audio', p_model.cost_audio, 'web_search', p_model.cost_web_search))
$$;

create or replace function private.model_prices(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object('input', p_model.price_input, 'cached_input', p_model.price_cached_input,
    'cache_write', p_model.price_cache_write, 'cache_write_1h', p_model.price_cache_write_1h, 'output', p_model.price_output,
    'image', p_model.price_image, 'audio', p_model.price_audio, 'web_search', p_model.price_web_search))
$$;

-- Redefined: web_search is a bucket (searches, not tokens).
create or replace function private.token_buckets()
returns text[]
language sql immutable
set search_path = ''
as $$
  select array['input', 'cached_input', 'cache_write', 'cache_write_1h',
               'output', 'reasoning', 'image', 'audio', 'web_search']
$$;

-- Redefined whole: the result has the web_search bucket too.
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
    'audio', greatest(0, coalesce((p_usage ->> 'audio')::bigint, 0)),
    'web_search', greatest(0, coalesce((p_usage ->> 'web_search')::bigint, 0)));
end;
$$;

-- Redefined whole: records the searches.
create or replace function private.record_settlement(
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
         web_searches = coalesce((p_usage ->> 'web_search')::bigint, 0),
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

-- Redefined whole: the rates have the price per search (per million searches).
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
    'audio', coalesce(p_model.price_audio, p_model.price_input),
    -- Per call, as a rate per million calls like every other bucket's.
    'web_search', p_model.price_web_search * 1000000);
  v_cost jsonb := jsonb_build_object(
    'input', p_model.cost_input,
    'cached_input', coalesce(p_model.cost_cached_input, p_model.cost_input),
    'cache_write', coalesce(p_model.cost_cache_write, p_model.cost_input),
    'cache_write_1h', coalesce(p_model.cost_cache_write_1h, p_model.cost_cache_write, p_model.cost_input),
    'output', p_model.cost_output,
    'reasoning', coalesce(p_model.cost_reasoning, p_model.cost_output),
    'image', coalesce(p_model.cost_image, p_model.cost_input),
    'audio', coalesce(p_model.cost_audio, p_model.cost_input),
    'web_search', p_model.cost_web_search * 1000000);
begin
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
  return jsonb_build_object('price', v_price, 'cost', v_cost, 'version', p_model.price_version_id);
end;
$$;

-- Redefined whole: a price version carries the price per search too.
create or replace function public.apply_price_versions(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_version public.price_versions;
  v_count integer := 0;
begin
  for v_version in
    select distinct on (model_id) * from public.price_versions
     where applied_at is null and effective_from <= p_now
     order by model_id, effective_from desc, id desc
  loop
    update public.models set
      cost_input = (v_version.costs ->> 'input')::bigint,
      cost_cached_input = (v_version.costs ->> 'cached_input')::bigint,
      cost_cache_write = (v_version.costs ->> 'cache_write')::bigint,
      cost_cache_write_1h = (v_version.costs ->> 'cache_write_1h')::bigint,
      cost_output = (v_version.costs ->> 'output')::bigint,
      cost_image = (v_version.costs ->> 'image')::bigint,
      cost_audio = (v_version.costs ->> 'audio')::bigint,
      cost_web_search = (v_version.costs ->> 'web_search')::bigint,
      price_input = (v_version.prices ->> 'input')::bigint,
      price_cached_input = (v_version.prices ->> 'cached_input')::bigint,
      price_cache_write = (v_version.prices ->> 'cache_write')::bigint,
      price_cache_write_1h = (v_version.prices ->> 'cache_write_1h')::bigint,
      price_output = (v_version.prices ->> 'output')::bigint,
      price_image = (v_version.prices ->> 'image')::bigint,
      price_audio = (v_version.prices ->> 'audio')::bigint,
      price_web_search = (v_version.prices ->> 'web_search')::bigint,
      long_context_threshold = v_version.long_context_threshold,
      long_context_cost = v_version.long_context_cost,
      long_context_price = v_version.long_context_price,
      price_version_id = v_version.id,
      updated_at = now()
    where id = v_version.model_id and price_source = 'dataset';
    -- Older versions that came due together are superseded by this one.
    update public.price_versions set applied_at = p_now
     where model_id = v_version.model_id and applied_at is null and effective_from <= p_now;
    v_count := v_count + 1;
  end loop;
  return jsonb_build_object('applied', v_count, 'at', p_now);
end;
$$;

-- The price-below-cost check watches the price per search too.
drop trigger models_price_covers_cost on public.models;
create trigger models_price_covers_cost
  after insert or update of cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h, cost_output, cost_reasoning,
    cost_image, cost_audio, cost_web_search, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
    price_reasoning, price_image, price_audio, price_web_search, long_context_threshold, long_context_cost, long_context_price
  on public.models
  for each row execute function private.check_price_covers_cost();

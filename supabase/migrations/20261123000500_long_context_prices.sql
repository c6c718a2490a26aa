-- Long-context price tiers. Some models charge more for the whole request once
-- its prompt passes a size (Gemini 2.5 Pro above 200k prompt tokens: input and
-- cached input ×2, output ×1.5). A model may carry such a tier: a prompt-token
-- threshold and the per-bucket rates above it; buckets it leaves out keep their
-- ordinary rate.
--
-- The tier travels inside the effective rates frozen on each request
-- ({"input": …, "long": {"threshold": N, "input": …}}), so the cost, the hold
-- and the output cap all see it without the money functions changing.

alter table public.models
  add column long_context_threshold bigint,
  add column long_context_price jsonb,
  add column long_context_cost jsonb,
  add constraint models_long_context_threshold_positive check (long_context_threshold > 0),
  add constraint models_long_context_rates_are_objects check (
    (long_context_price is null or jsonb_typeof(long_context_price) = 'object')
    and (long_context_cost is null or jsonb_typeof(long_context_cost) = 'object'));
comment on column public.models.long_context_threshold is
  'Prompt tokens (input, cached input, cache writes, image, audio) above which long_context_price applies to the whole request.';

grant select (long_context_threshold, long_context_price) on public.models to anon, authenticated;

create or replace view public.model_prices
with (security_invoker = true)
as
select
  id, provider, display_name, max_output_tokens,
  price_input, price_cached_input, price_cache_write, price_cache_write_1h,
  price_output, price_reasoning, price_image, price_audio, created_at,
  long_context_threshold, long_context_price
from public.models
where enabled and price_input is not null and price_output is not null;

-- The prompt side of a usage: what a long-context threshold is measured on.
create function private.prompt_tokens(p_usage jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select coalesce((p_usage ->> 'input')::numeric, 0) + coalesce((p_usage ->> 'cached_input')::numeric, 0)
       + coalesce((p_usage ->> 'cache_write')::numeric, 0) + coalesce((p_usage ->> 'cache_write_1h')::numeric, 0)
       + coalesce((p_usage ->> 'image')::numeric, 0) + coalesce((p_usage ->> 'audio')::numeric, 0)
$$;

-- The rates that apply to a usage: the long-context tier's when the prompt passes its threshold.
create function private.rates_for(p_rates jsonb, p_prompt_tokens numeric)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select case
    when jsonb_typeof(p_rates -> 'long') = 'object' and p_prompt_tokens > (p_rates #>> '{long,threshold}')::numeric
      then (p_rates - 'long') || ((p_rates -> 'long') - 'threshold')
    else p_rates - 'long'
  end
$$;

-- Per bucket, the dearer of the ordinary and the long-context rate: for worst cases.
create function private.dearest_rates(p_rates jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(key,
           case when jsonb_typeof(p_rates #> array['long', key]) = 'number'
                 and (p_rates #>> array['long', key])::numeric > (value #>> '{}')::numeric
                then p_rates #> array['long', key] else value end), '{}')
  from jsonb_each(p_rates - 'long')
  where jsonb_typeof(value) = 'number'
$$;

revoke all on function private.prompt_tokens(jsonb), private.rates_for(jsonb, numeric), private.dearest_rates(jsonb) from public;

-- Per-bucket rates with the documented fallbacks: cached input, cache writes,
-- image and audio to input (1-hour writes to 5-minute writes first), reasoning
-- to output. A bucket with no rate and nothing to fall back to is null.
create function private.with_bucket_fallbacks(p_rates jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_build_object(
    'input', p_rates -> 'input',
    'cached_input', coalesce(p_rates -> 'cached_input', p_rates -> 'input'),
    'cache_write', coalesce(p_rates -> 'cache_write', p_rates -> 'input'),
    'cache_write_1h', coalesce(p_rates -> 'cache_write_1h', p_rates -> 'cache_write', p_rates -> 'input'),
    'output', p_rates -> 'output',
    'reasoning', coalesce(p_rates -> 'reasoning', p_rates -> 'output'),
    'image', coalesce(p_rates -> 'image', p_rates -> 'input'),
    'audio', coalesce(p_rates -> 'audio', p_rates -> 'input'))
$$;
revoke all on function private.with_bucket_fallbacks(jsonb) from public;

create or replace function private.effective_rates(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  -- jsonb_strip_nulls then coalesce: a null column is "no rate", the same as an absent tier bucket.
  with rates as (
    select
      private.with_bucket_fallbacks(jsonb_strip_nulls(jsonb_build_object(
        'input', p_model.price_input, 'cached_input', p_model.price_cached_input, 'cache_write', p_model.price_cache_write,
        'cache_write_1h', p_model.price_cache_write_1h, 'output', p_model.price_output, 'reasoning', p_model.price_reasoning,
        'image', p_model.price_image, 'audio', p_model.price_audio))) as price,
      private.with_bucket_fallbacks(jsonb_strip_nulls(jsonb_build_object(
        'input', p_model.cost_input, 'cached_input', p_model.cost_cached_input, 'cache_write', p_model.cost_cache_write,
        'cache_write_1h', p_model.cost_cache_write_1h, 'output', p_model.cost_output, 'reasoning', p_model.cost_reasoning,
        'image', p_model.cost_image, 'audio', p_model.cost_audio))) as cost,
      -- The tier's buckets follow the same fallbacks within the tier; what the tier
      -- leaves out keeps the ordinary rate.
      case when p_model.long_context_price is not null
           then jsonb_strip_nulls(private.with_bucket_fallbacks(p_model.long_context_price)) end as long_price,
      case when p_model.long_context_cost is not null
           then jsonb_strip_nulls(private.with_bucket_fallbacks(p_model.long_context_cost)) end as long_cost
  )
  select jsonb_build_object(
    'price', rates.price || case when p_model.long_context_threshold is not null and rates.long_price is not null
                                 then jsonb_build_object('long', rates.long_price || jsonb_build_object('threshold', p_model.long_context_threshold))
                                 else '{}' end,
    'cost', rates.cost || case when p_model.long_context_threshold is not null and rates.long_cost is not null
                               then jsonb_build_object('long', rates.long_cost || jsonb_build_object('threshold', p_model.long_context_threshold))
                               else '{}' end)
  from rates
$$;

-- Cost of a usage: at the long-context tier when its prompt passes the threshold.
create or replace function private.cost_of(p_usage jsonb, p_rates jsonb)
returns bigint
language sql immutable
set search_path = ''
as $$
  with rates as (select private.rates_for(p_rates, private.prompt_tokens(p_usage)) as applied)
  select case
    when bool_or((u.value)::numeric > 0 and jsonb_typeof(rates.applied -> u.key) is distinct from 'number') then null
    else ceil(coalesce(sum(
      case when (u.value)::numeric > 0 then (u.value)::numeric * (rates.applied ->> u.key)::numeric else 0 end
    ), 0) / 1000000)::bigint
  end
  from jsonb_each_text(p_usage) as u, rates
$$;

-- Worst cases (holds, the output cap) take the dearer of the ordinary and the
-- long-context rate of each bucket: a hold may be larger than needed, never smaller.
create or replace function private.max_input_rate(p_price jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select greatest(
    (r ->> 'input')::numeric, (r ->> 'cached_input')::numeric, (r ->> 'cache_write')::numeric,
    (r ->> 'cache_write_1h')::numeric, (r ->> 'image')::numeric, (r ->> 'audio')::numeric)
  from (select private.dearest_rates(p_price) as r) as dearest
$$;

create or replace function private.max_output_rate(p_price jsonb)
returns numeric
language sql immutable
set search_path = ''
as $$
  select greatest((r ->> 'output')::numeric, (r ->> 'reasoning')::numeric)
  from (select private.dearest_rates(p_price) as r) as dearest
$$;

-- Prices that keep themselves current: what the upstream charges comes from a
-- maintained dataset (`npm run prices:sync`, @pydantic/genai-prices), what we
-- charge follows the operator's margin rules, in SQL; every change is a dated
-- price version, and a request settles at the rates it was authorized with
-- (usage_events.rates), which now name their version.

alter table public.models
  add column price_source text not null default 'manual',
  add column price_version_id bigint,
  add constraint models_price_source check (price_source in ('manual', 'dataset'));
comment on column public.models.price_source is
  'manual: set by the operator, which a sync never overwrites; dataset: kept by npm run prices:sync.';

-- Margin rules ----------------------------------------------------------------------
-- A markup in basis points (2000 = +20%) for one model, else for its provider,
-- else the default (both null). Price = cost × (1 + markup), rounded up to a whole
-- micro-unit, bucket by bucket.

create table public.margin_rules (
  id bigint generated always as identity primary key,
  provider text,
  model_id text,
  markup_bps integer not null,
  note text,
  created_at timestamptz not null default now(),
  constraint margin_rules_markup check (markup_bps between 0 and 100000),
  constraint margin_rules_scope unique nulls not distinct (provider, model_id)
);
alter table public.margin_rules enable row level security;
-- No policies: the operator's (service role).
grant select, insert, update, delete on public.margin_rules to service_role;
insert into public.margin_rules (provider, model_id, markup_bps, note) values (null, null, 2000, 'default: cost + 20%');

create function private.markup_bps(p_provider text, p_model_id text)
returns integer
language sql stable
set search_path = ''
as $$
  select coalesce(
    (select markup_bps from public.margin_rules where model_id = p_model_id),
    (select markup_bps from public.margin_rules where provider = p_provider and model_id is null),
    (select markup_bps from public.margin_rules where provider is null and model_id is null),
    0)
$$;

-- {bucket: cost} → {bucket: price}: ceil(cost × (10000 + bps) / 10000).
create function private.with_markup(p_costs jsonb, p_bps integer)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select coalesce(jsonb_object_agg(key, ceil((value #>> '{}')::numeric * (10000 + p_bps) / 10000)::bigint), '{}')
  from jsonb_each(coalesce(p_costs, '{}'))
  where jsonb_typeof(value) = 'number'
$$;

revoke all on function private.markup_bps(text, text), private.with_markup(jsonb, integer) from public;

-- A model's cost and price columns as {bucket: micro-units per 1M}, nulls left out:
-- what a price version's costs and prices are compared with.
create function private.model_costs(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object('input', p_model.cost_input, 'cached_input', p_model.cost_cached_input,
    'cache_write', p_model.cost_cache_write, 'cache_write_1h', p_model.cost_cache_write_1h, 'output', p_model.cost_output,
    'image', p_model.cost_image, 'audio', p_model.cost_audio))
$$;

create function private.model_prices(p_model public.models)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select jsonb_strip_nulls(jsonb_build_object('input', p_model.price_input, 'cached_input', p_model.price_cached_input,
    'cache_write', p_model.price_cache_write, 'cache_write_1h', p_model.price_cache_write_1h, 'output', p_model.price_output,
    'image', p_model.price_image, 'audio', p_model.price_audio))
$$;
revoke all on function private.model_costs(public.models), private.model_prices(public.models) from public;

-- Price versions ------------------------------------------------------------------------

create table public.price_versions (
  id bigint generated always as identity primary key,
  model_id text not null,
  effective_from timestamptz not null,
  source text not null,
  costs jsonb not null,
  prices jsonb not null,
  long_context_threshold bigint,
  long_context_cost jsonb,
  long_context_price jsonb,
  applied_at timestamptz,
  created_at timestamptz not null default now()
);
comment on table public.price_versions is 'Every price a model has had or will have; apply_price_versions puts the due ones in force.';
create index price_versions_due_idx on public.price_versions (effective_from) where applied_at is null;
create index price_versions_model_idx on public.price_versions (model_id, effective_from);
alter table public.price_versions enable row level security;
-- No policies: the operator's (service role).
grant select on public.price_versions to service_role;

-- Redefined: the rates frozen on a request name the price version they came from.
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

-- A model sold below what it costs is never silent: one open alert per model,
-- bucket by bucket (long-context tier included), whoever changed it.
-- Security definer: whoever changes a model (the service role, the operator's
-- console) raises the alert, though only the owner may call the private helpers.
create function private.check_price_covers_cost()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_rates jsonb := private.effective_rates(new);
  v_below text[];
begin
  select coalesce(array_agg(bucket), '{}') into v_below
    from (
      select c.key as bucket from jsonb_each(v_rates -> 'cost') c
       where jsonb_typeof(c.value) = 'number' and jsonb_typeof(v_rates #> array['price', c.key]) = 'number'
         and (c.value #>> '{}')::numeric > (v_rates #>> array['price', c.key])::numeric
      union all
      select 'long.' || c.key from jsonb_each(v_rates #> '{cost,long}') c
       where c.key <> 'threshold' and jsonb_typeof(c.value) = 'number'
         and (c.value #>> '{}')::numeric > coalesce((v_rates #>> array['price', 'long', c.key])::numeric, (v_rates #>> array['price', c.key])::numeric)
    ) as below;
  if cardinality(v_below) > 0 then
    perform private.raise_alert_once(null, 'price_below_cost',
      format('The model %s costs more upstream than it is sold for (%s).', new.id, array_to_string(v_below, ', ')),
      jsonb_build_object('model', new.id, 'buckets', v_below, 'cost', v_rates -> 'cost', 'price', v_rates -> 'price'),
      'price_below_cost:' || new.id);
  else
    update public.alerts set resolved_at = now() where dedupe_key = 'price_below_cost:' || new.id and resolved_at is null;
  end if;
  return new;
end;
$$;
revoke all on function private.check_price_covers_cost() from public;

create trigger models_price_covers_cost
  after insert or update of cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h, cost_output, cost_reasoning,
    cost_image, cost_audio, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
    price_reasoning, price_image, price_audio, long_context_threshold, long_context_cost, long_context_price
  on public.models
  for each row execute function private.check_price_covers_cost();

-- Puts due price versions in force (pg_cron every minute, and at once on import).
create function public.apply_price_versions(p_now timestamptz)
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
      price_input = (v_version.prices ->> 'input')::bigint,
      price_cached_input = (v_version.prices ->> 'cached_input')::bigint,
      price_cache_write = (v_version.prices ->> 'cache_write')::bigint,
      price_cache_write_1h = (v_version.prices ->> 'cache_write_1h')::bigint,
      price_output = (v_version.prices ->> 'output')::bigint,
      price_image = (v_version.prices ->> 'image')::bigint,
      price_audio = (v_version.prices ->> 'audio')::bigint,
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

-- The sync's write: [{id, provider, upstream_model, display_name, max_output_tokens,
-- versions: [{effective_from, costs: {bucket: micro per 1M}, long: {threshold, costs} | null}]}].
-- A model the operator set by hand (price_source manual) is never touched; only
-- reported, with an alert if the dataset says it now costs more than its price.
-- Others get a price version per dated price (prices by the margin rules), new
-- models are created, and what is due is put in force at once.
create function public.import_model_costs(p_models jsonb, p_source text, p_now timestamptz default now())
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_entry jsonb;
  v_version jsonb;
  v_model public.models;
  v_bps integer;
  v_effective timestamptz;
  v_report jsonb := '[]';
  v_added integer;
  v_below text[];
  v_prices jsonb;
  v_long_prices jsonb;
begin
  if jsonb_typeof(p_models) is distinct from 'array' then
    raise exception 'models must be an array' using errcode = '22023';
  end if;
  for v_entry in select value from jsonb_array_elements(p_models) loop
    select * into v_model from public.models where id = v_entry ->> 'id';
    if found and v_model.price_source = 'manual' then
      -- Never overwritten; said out loud when the dataset's cost is above the price.
      select coalesce(array_agg(c.key), '{}') into v_below
        from jsonb_each(v_entry #> '{versions,0,costs}') c
       where (c.value #>> '{}')::numeric > coalesce((private.effective_rates(v_model) #>> array['price', c.key])::numeric, 0);
      if cardinality(v_below) > 0 then
        perform private.raise_alert_once(null, 'price_below_cost',
          format('The model %s is priced by hand below what the price dataset says it costs (%s).', v_model.id, array_to_string(v_below, ', ')),
          jsonb_build_object('model', v_model.id, 'buckets', v_below, 'dataset_costs', v_entry #> '{versions,0,costs}'),
          'price_below_cost:' || v_model.id);
      end if;
      v_report := v_report || jsonb_build_array(jsonb_build_object('id', v_model.id, 'action', 'kept_manual', 'below_cost', to_jsonb(v_below)));
      continue;
    end if;
    if not found then
      insert into public.models (id, provider, upstream_model, display_name, max_output_tokens, price_source)
      values (v_entry ->> 'id', v_entry ->> 'provider', coalesce(v_entry ->> 'upstream_model', v_entry ->> 'id'),
              v_entry ->> 'display_name', (v_entry ->> 'max_output_tokens')::bigint, 'dataset');
    end if;
    v_bps := private.markup_bps(v_entry ->> 'provider', v_entry ->> 'id');
    v_added := 0;
    for v_version in select value from jsonb_array_elements(v_entry -> 'versions') loop
      v_effective := coalesce((v_version ->> 'effective_from')::timestamptz, p_now);
      v_prices := private.with_markup(v_version -> 'costs', v_bps);
      v_long_prices := case when v_version #> '{long,costs}' is not null then private.with_markup(v_version #> '{long,costs}', v_bps) end;
      -- Nothing new adds nothing: an undated price is compared with what the model
      -- is sold at now (so a changed margin rule, or a row changed by hand, is
      -- brought back in line), a dated one with the version of that date.
      if v_version ->> 'effective_from' is null then
        continue when exists (
          select 1 from public.models m
           where m.id = v_entry ->> 'id'
             and private.model_costs(m) = v_version -> 'costs'
             and private.model_prices(m) = v_prices
             and m.long_context_threshold is not distinct from (v_version #>> '{long,threshold}')::bigint
             and m.long_context_cost is not distinct from (v_version #> '{long,costs}')
             and m.long_context_price is not distinct from v_long_prices);
      else
        continue when exists (
          select 1 from public.price_versions pv
           where pv.model_id = v_entry ->> 'id' and pv.effective_from = v_effective and pv.costs = v_version -> 'costs' and pv.prices = v_prices
             and pv.long_context_threshold is not distinct from (v_version #>> '{long,threshold}')::bigint
             and pv.long_context_cost is not distinct from (v_version #> '{long,costs}'));
      end if;
      insert into public.price_versions (model_id, effective_from, source, costs, prices, long_context_threshold, long_context_cost, long_context_price)
      values (v_entry ->> 'id', v_effective, p_source, v_version -> 'costs', v_prices,
              (v_version #>> '{long,threshold}')::bigint, v_version #> '{long,costs}', v_long_prices);
      v_added := v_added + 1;
    end loop;
    v_report := v_report || jsonb_build_array(jsonb_build_object(
      'id', v_entry ->> 'id', 'action', case when v_model.id is null then 'created' when v_added > 0 then 'updated' else 'unchanged' end,
      'versions_added', v_added, 'markup_bps', v_bps));
  end loop;
  perform public.apply_price_versions(p_now);
  return v_report;
end;
$$;

revoke all on function public.apply_price_versions(timestamptz), public.import_model_costs(jsonb, text, timestamptz)
  from public, anon, authenticated;
grant execute on function public.apply_price_versions(timestamptz), public.import_model_costs(jsonb, text, timestamptz)
  to service_role;

do $$
begin
  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('tollgate-apply-price-versions', '* * * * *', 'select public.apply_price_versions(now())');
  end if;
end;
$$;

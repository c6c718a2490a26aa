-- Money model v2, part two: plan pricing. A plan may apply a multiplier to the
-- prices its accounts pay (Pro pays 90 %: price_multiplier_bps = 9000). It is
-- applied to the price rates when a request is authorized (authorize_request is
-- redefined once, for this and for organisations, in 20261127001100_organisations.sql,
-- which ships with this migration), exactly (numeric
-- rates, never rounded), so the hold and the charge both follow it and the one
-- rounding rule still applies once per request: ceil(Σ tokens × price × m /
-- 10,000 / 1,000,000). The rates frozen on the request's row are the multiplied
-- ones, so it settles at them; the row records the multiplier used. Costs (what
-- the upstream charges) are not multiplied. The public price list shows list
-- prices.

alter table public.plans add column price_multiplier_bps integer not null default 10000,
  add constraint plans_price_multiplier check (price_multiplier_bps between 1 and 1000000);
comment on column public.plans.price_multiplier_bps is 'Prices this plan''s accounts pay, in basis points of the list price (10000: list price).';

alter table public.usage_events add column price_multiplier_bps integer;
comment on column public.usage_events.price_multiplier_bps is 'The plan multiplier the request was priced with (basis points); null before multipliers existed (list price).';
grant select (price_multiplier_bps) on public.usage_events to authenticated;

-- Every rate of a price times bps / 10000, exactly; the long-context tier's too
-- (not its threshold). 10000 leaves the price as it is.
create function private.apply_price_multiplier(p_price jsonb, p_bps integer)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select case when p_bps = 10000 or p_price is null then p_price else (
    select coalesce(jsonb_object_agg(e.key,
      case
        when jsonb_typeof(e.value) = 'number' then to_jsonb((e.value #>> '{}')::numeric * p_bps / 10000)
        when e.key = 'long' and jsonb_typeof(e.value) = 'object' then (
          select jsonb_object_agg(l.key, case when l.key <> 'threshold' and jsonb_typeof(l.value) = 'number'
                                              then to_jsonb((l.value #>> '{}')::numeric * p_bps / 10000) else l.value end)
            from jsonb_each(e.value) l)
        else e.value
      end), '{}')
      from jsonb_each(p_price) e) end
$$;
revoke all on function private.apply_price_multiplier(jsonb, integer) from public;

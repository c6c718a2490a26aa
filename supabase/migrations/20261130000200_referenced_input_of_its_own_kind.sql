-- Stored content is held at the usage of the response it comes from only where
-- that usage covers what it carries on into the request.
--
-- 20261130000100 held a request referring to stored responses at those
-- responses' usage. A review found where that usage is not a bound of what the
-- upstream then adds and bills:
-- * Another model, or another version of it: an image costs gpt-4o-mini about
--   33 times the tokens it costs gpt-4o, and a model with a larger context
--   window renders the whole stored chain that a smaller one truncated.
-- * A response made with `reasoning.context` (the reasoning of earlier turns
--   left out of its input, so out of its usage) or with `truncation: "auto"`
--   (earlier items dropped from its input): a request continuing it with other
--   settings reads what that usage never counted.
-- Now every referenced response must have been made by the same model, at the
-- same upstream model, as the request (the gateway names the requested model in
-- the references, resolved here as authorize_request resolves it), and must be
-- recorded as whole: made with neither setting. The gateway sends no
-- references for a request that has either setting itself. A response recorded
-- before this migration, or by an instance that does not say, is not whole:
-- held as content of unknown size, as before 20261130000100.
--
-- record_stored_response takes whether the response is whole, so its signature
-- changes: the old function is dropped and the whole function created again
-- (what changed from 20261129003600: p_whole, kept with the response, false once
-- any record of it says so). private.referenced_input_bound is redefined whole
-- (what changed from 20261130000100: the model check and the whole check).

alter table public.stored_responses add column whole boolean not null default false;
comment on column public.stored_responses.whole is 'Whether the response''s usage covers all that a request continuing it or sending its items back adds: made with no reasoning.context and no truncation "auto".';

drop function public.record_stored_response(text, text, text[]);

create function public.record_stored_response(p_request_id text, p_response_id text, p_item_ids text[] default '{}', p_whole boolean default false)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_response_id is null or char_length(p_response_id) not between 1 and 200 then
    raise exception 'response id must be 1 to 200 characters' using errcode = '22023';
  end if;
  if p_item_ids is null or cardinality(p_item_ids) > 1000
     or exists (select 1 from unnest(p_item_ids) as item (id) where item.id is null or char_length(item.id) not between 1 and 200) then
    raise exception 'item ids must be at most 1000, each 1 to 200 characters' using errcode = '22023';
  end if;
  insert into public.stored_responses (response_id, account_id, request_id, item_ids, whole)
  select p_response_id, e.account_id, e.request_id, array(select distinct item.id from unnest(p_item_ids) as item (id) order by 1),
         coalesce(p_whole, false)
    from public.usage_events e where e.request_id = p_request_id
  on conflict (response_id) do update
    set item_ids = array(select distinct item.id from unnest(stored_responses.item_ids || excluded.item_ids) as item (id) order by 1),
        whole = stored_responses.whole and excluded.whole
    where not excluded.item_ids <@ stored_responses.item_ids or (stored_responses.whole and not excluded.whole);
end;
$$;

revoke all on function public.record_stored_response(text, text, text[], boolean) from public, anon, authenticated;
grant execute on function public.record_stored_response(text, text, text[], boolean) to service_role;

create or replace function private.referenced_input_bound(p_account_id uuid, p_referenced jsonb)
returns bigint
language plpgsql stable
set search_path = ''
as $$
declare
  v_previous text := p_referenced ->> 'previous_response_id';
  v_ids text[] := array(select distinct item.id from jsonb_array_elements_text(coalesce(p_referenced -> 'item_ids', '[]')) as item (id));
  v_responses text[] := '{}';
  v_unknown boolean := false;
  v_model public.models;
  v_unfit bigint;
  v_tokens numeric;
  v_items numeric;
begin
  if jsonb_typeof(p_referenced -> 'model') is distinct from 'string' then
    return null;
  end if;
  v_model := private.priced_model(p_referenced ->> 'model');
  if v_model.id is null then
    return null;
  end if;
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
  -- Each must be whole, completed with the provider's usage, by this very model.
  select count(*) filter (where not r.whole or e.request_id is null or e.status <> 'completed' or e.usage_source is distinct from 'provider'
                                or e.model_id <> v_model.id or e.upstream_model <> v_model.upstream_model),
         coalesce(sum(e.input_tokens + e.cached_input_tokens + e.cache_write_tokens + e.cache_write_1h_tokens
                      + e.output_tokens + e.reasoning_tokens + e.image_tokens + e.audio_tokens), 0),
         coalesce(sum(cardinality(r.item_ids)), 0)
    into v_unfit, v_tokens, v_items
    from public.stored_responses r
    left join public.usage_events e on e.request_id = r.request_id
   where r.response_id = any (v_responses);
  if v_unfit > 0 then
    return null;
  end if;
  -- Framing: an item's role and delimiters, a response's turn.
  return least((p_referenced ->> 'besides')::numeric + v_tokens + 64 * cardinality(v_responses) + 8 * v_items, 9e15)::bigint;
end;
$$;

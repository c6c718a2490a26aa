-- A request refers only to its own account's stored items.
--
-- One operator key stores every customer's responses at OpenAI, and a stored
-- response's output items (messages, reasoning, tool calls) can be sent back
-- by id: an input item {"type": "item_reference", "id": "msg_..."}, or an item
-- carrying its id (OpenAI looks a reasoning item up by it). The AI SDK does
-- this on every turn when responses are stored, its default. Only
-- previous_response_id was checked (20261129002500): a customer who had
-- another account's item ids had that content put in their prompt.
--
-- The ids of each stored response's output items are now recorded with it,
-- and a request is asked about its previous response and its input items'
-- ids together. As before, an id recorded for no account passes: a response's
-- items are recorded once it is answered (off the request's path), and the
-- next turn of a fast client may come first.
--
-- record_stored_response takes the items' ids, so its signature changes: the
-- old function is dropped and the whole function created again. A call without
-- them (an instance still running the code before this) records the response
-- alone, as before. stored_response_elsewhere stays for such instances; the
-- gateway now calls stored_elsewhere.

alter table public.stored_responses add column item_ids text[] not null default '{}';
comment on column public.stored_responses.item_ids is 'The ids of the response''s output items, as its final answer listed them: whose they are, for requests that refer to them.';
create index stored_responses_item_ids_idx on public.stored_responses using gin (item_ids);

drop function public.record_stored_response(text, text);

-- Redefined whole (20261127000500_uncharged_calls): also records the ids of the
-- response's output items, added to any recorded before (a streamed response is
-- recorded as it starts, and again with its items once complete).
create function public.record_stored_response(p_request_id text, p_response_id text, p_item_ids text[] default '{}')
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
  insert into public.stored_responses (response_id, account_id, request_id, item_ids)
  select p_response_id, e.account_id, e.request_id, array(select distinct item.id from unnest(p_item_ids) as item (id) order by 1)
    from public.usage_events e where e.request_id = p_request_id
  on conflict (response_id) do update
    set item_ids = array(select distinct item.id from unnest(stored_responses.item_ids || excluded.item_ids) as item (id) order by 1)
    where not excluded.item_ids <@ stored_responses.item_ids;
end;
$$;

-- The first of a request's stored ids (its previous response, then its input
-- items') recorded as another account's than this key's, or null.
create function public.stored_elsewhere(p_key_hash text, p_response_id text, p_item_ids text[] default '{}')
returns text
language sql stable
security definer
set search_path = ''
as $$
  with own as (select k.account_id from public.api_keys k where k.key_hash = p_key_hash)
  select coalesce(
    (select p_response_id from public.stored_responses r
      where p_response_id is not null and r.response_id = p_response_id
        and r.account_id is distinct from (select account_id from own)),
    (select item.id from unnest(coalesce(p_item_ids, '{}')) with ordinality as item (id, position)
      where exists (select 1 from public.stored_responses r
                     where r.item_ids @> array[item.id]
                       and r.account_id is distinct from (select account_id from own))
      order by item.position limit 1))
$$;

revoke all on function public.record_stored_response(text, text, text[]), public.stored_elsewhere(text, text, text[]) from public, anon, authenticated;
grant execute on function public.record_stored_response(text, text, text[]), public.stored_elsewhere(text, text, text[]) to service_role;

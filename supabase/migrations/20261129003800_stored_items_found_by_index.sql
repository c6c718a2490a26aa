-- The check of a request's stored ids finds them through the index, whoever's
-- they are.
--
-- stored_elsewhere (20261129003600) asked, for each id, whether a response of
-- another account holds it. Where the table's statistics know few accounts
-- (one busy account's responses, say), the planner took "another account" to
-- match almost no row, scanned the whole table for it and tested each id
-- against every row: with 100,000 stored responses of one account, a turn of
-- another account carrying 300 ids of its own ran past the gateway's database
-- deadline (a 503 for an ordinary request), 10 ids took 250 ms, and the query
-- kept running after the gateway gave up.
--
-- Now each id is looked up on its own through the GIN index on item_ids (a
-- lateral lookup kept apart from the rest of the query, so the account is
-- looked at only among the responses that hold the id), and the key's account
-- is read once. (Finding the responses holding any of the ids in one step did
-- not do: with 300 ids the planner expected most rows to match and scanned the
-- table, 870 ms.) With both this and the index change below, 300 ids among
-- 100,000 stored responses take 1 ms where they took 5.3 s. Otherwise unchanged:
-- the first of the ids (the previous response, then the items in order)
-- recorded as another account's, or null.

-- The index takes new ids at once rather than in a pending list: a search reads the
-- whole pending list, which grows with every stored response until vacuum (2 ms a search
-- with 100,000 responses' ids pending), and this index is searched on every turn that
-- sends earlier items back. What was pending is merged now.
alter index public.stored_responses_item_ids_idx set (fastupdate = off);
select gin_clean_pending_list('public.stored_responses_item_ids_idx'::regclass);

create or replace function public.stored_elsewhere(p_key_hash text, p_response_id text, p_item_ids text[] default '{}')
returns text
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_account_id uuid;
  v_found text;
begin
  select k.account_id into v_account_id from public.api_keys k where k.key_hash = p_key_hash;
  if p_response_id is not null then
    select r.response_id into v_found
      from public.stored_responses r
     where r.response_id = p_response_id and r.account_id is distinct from v_account_id;
    if v_found is not null then
      return v_found;
    end if;
  end if;
  if coalesce(cardinality(p_item_ids), 0) = 0 then
    return null;
  end if;
  -- Each id looked up through the index on its own (offset 0 keeps the lookup apart, so
  -- the planner cannot turn it into one pass over the table).
  select item.id into v_found
    from unnest(p_item_ids) with ordinality as item (id, position)
   cross join lateral (
     select r.account_id from public.stored_responses r where r.item_ids @> array[item.id] offset 0
   ) as holding
   where holding.account_id is distinct from v_account_id
   order by item.position
   limit 1;
  return v_found;
end;
$$;

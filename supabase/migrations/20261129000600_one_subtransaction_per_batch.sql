-- Batches of authorizations and settlements in one subtransaction, not one per item.
--
-- authorize_requests and settle_requests lock the batch's rows up front (its
-- accounts, and the keys and requests they write), then ran each item in an
-- exception block of its own, so that a failing item is rolled back alone. An
-- exception block is a subtransaction with a transaction id of its own: a row
-- that the batch had locked and an item then updated (every account row, at
-- every item) or locked again for a foreign key (the account, when a request's
-- row or a ledger entry is inserted) carried two lockers, and PostgreSQL
-- records two lockers of one row in a multixact. Every later reader of those
-- row versions looks the multixact's members up: with one key's requests in
-- flight from 64 connections, GetMultiXactIdMembers was 7.5% of PostgreSQL's
-- CPU in `npm run bench -- load`, and the most of any one function.
--
-- Now the whole batch first runs in one exception block, its locks taken
-- inside it: one transaction id locks and writes every row, and no multixact
-- is made. Should any item fail, that block is rolled back whole (nothing of
-- the batch stays) and the batch runs again as before: locks in the
-- transaction, each item in an exception block of its own, the failing item
-- answered as failed and the others as they come. An item that is refused
-- (insufficient credits, a revoked key, a settlement of a request already
-- settled) is an answer, not a failure, and stays on the first path.
--
-- In pgbench on the local stack, each client calling authorize_ahead for 3
-- requests of one key, then settle_requests for them, the two definitions
-- alternated three times: with 8 clients, PostgreSQL's CPU per request was
-- 3.62-3.68 ms before and 2.92-3.43 ms after (304-310 requests/s before,
-- 322-378 after); with one client, 2.67 ms before and 2.45 after.
--
-- Redefined whole; what changed in each: the first path, and the lock queries
-- and the item's call moved into functions of their own (private.lock_* and
-- private.*_item), which both paths call. Everything else is as in
-- 20261127001600 (authorize_requests) and 20261129000200 (settle_requests).

-- The rows a batch of authorizations writes, locked in the one order every
-- money function follows: memberships, keys whose policy counts what is in
-- flight, then accounts, each in id order.
create function private.lock_for_authorization(p_key_hashes text[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from public.account_members m
   where (m.account_id, m.user_id) in (select k.account_id, k.member_user_id from public.api_keys k
                                         where k.key_hash = any (p_key_hashes) and k.member_user_id is not null)
   order by m.account_id, m.user_id for no key update;
  perform 1 from public.api_keys k
   where k.key_hash = any (p_key_hashes)
     and (k.spend_limit is not null or k.monthly_spend_limit is not null or k.max_concurrent is not null)
   order by k.id for no key update;
  perform 1 from public.accounts a
   where a.id in (select k.account_id from public.api_keys k where k.key_hash = any (p_key_hashes))
   order by a.id for no key update;
end;
$$;
revoke all on function private.lock_for_authorization(text[]) from public;

create function private.authorize_item(p_item jsonb)
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
    coalesce(p_item -> 'calls', '{}'));
end;
$$;
revoke all on function private.authorize_item(jsonb) from public;

create or replace function public.authorize_requests(p_items jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_item jsonb;
  v_hashes text[];
  v_results jsonb := '[]';
  v_code text;
  v_message text;
begin
  if jsonb_typeof(p_items) is distinct from 'array' then
    raise exception 'authorizations must be an array' using errcode = '22023';
  end if;
  if jsonb_array_length(p_items) > 1000 then
    raise exception 'at most 1000 authorizations per call' using errcode = '22023';
  end if;
  select array_agg(distinct item ->> 'key_hash') into v_hashes
    from jsonb_array_elements(p_items) as item where item ->> 'key_hash' is not null;

  -- The usual batch: every item in one subtransaction, the locks with them.
  begin
    perform private.lock_for_authorization(v_hashes);
    for v_item in select value from jsonb_array_elements(p_items) loop
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', true, 'result', private.authorize_item(v_item)));
    end loop;
    return v_results;
  exception when others then
    v_results := '[]';
  end;

  -- An item failed: each item on its own, the failing one rolled back alone.
  perform private.lock_for_authorization(v_hashes);
  for v_item in select value from jsonb_array_elements(p_items) loop
    begin
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', true, 'result', private.authorize_item(v_item)));
    exception when others then
      get stacked diagnostics v_code = returned_sqlstate, v_message = message_text;
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', false, 'code', v_code, 'message', v_message));
    end;
  end loop;
  return v_results;
end;
$$;

revoke all on function public.authorize_requests(jsonb) from public, anon, authenticated;
grant execute on function public.authorize_requests(jsonb) to service_role;

-- The rows a batch of settlements writes, in the same order: the requests,
-- their keys, then their accounts.
create function private.lock_for_settlement(p_request_ids text[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from public.usage_events where request_id = any (p_request_ids) order by request_id for update;
  perform 1 from public.api_keys
   where id in (select api_key_id from public.usage_events where request_id = any (p_request_ids))
   order by id for no key update;
  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (p_request_ids))
   order by id for no key update;
end;
$$;
revoke all on function private.lock_for_settlement(text[]) from public;

create function private.settle_item(p_item jsonb)
returns jsonb
language plpgsql
set search_path = ''
as $$
begin
  return private.settle_one(p_item ->> 'request_id', p_item ->> 'outcome', coalesce(p_item -> 'usage', '{}'),
                            p_item ->> 'usage_source', p_item ->> 'error');
end;
$$;
revoke all on function private.settle_item(jsonb) from public;

create or replace function public.settle_requests(p_settlements jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
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

  -- The usual batch: every item in one subtransaction, the locks with them.
  begin
    perform private.lock_for_settlement(v_ids);
    for v_item in select value from jsonb_array_elements(p_settlements) loop
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', true, 'result', private.settle_item(v_item)));
    end loop;
    return v_results;
  exception when others then
    v_results := '[]';
  end;

  -- An item failed: each item on its own, the failing one rolled back alone.
  perform private.lock_for_settlement(v_ids);
  for v_item in select value from jsonb_array_elements(p_settlements) loop
    begin
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', true, 'result', private.settle_item(v_item)));
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

-- authorize_requests with generic plans, as settle_requests has had since
-- 20261129000200.
--
-- Its first lock query, on the memberships of the batch's keys
-- (private.lock_for_authorization: `(account_id, user_id) in (select ... where
-- key_hash = any (...))`), was planned again at every call: the plan cache
-- judged a generic plan for an array of unknown length costlier than one made
-- for the array at hand. pg_stat_statements (track_planning) over 600 calls of
-- authorize_ahead, 3 items each: 602 plans of that query at 0.24 ms each, to run
-- it in 0.02 ms; with the setting, 2 plans (one per session). Every hold taken
-- ahead is such a call, so a warm key's request paid that planning once for
-- itself when its instance was not busy (a batch of one). The generic plan
-- looks the keys up by key_hash and the memberships by their primary key, the
-- plan every custom one was. In pgbench (one client, authorize_ahead then
-- settle_requests for one request each, the two settings alternated three
-- times, pg_stat_statements tracking on) PostgreSQL's CPU per request was
-- 3.41-3.80 ms with the custom plans and 3.14-3.71 ms with generic ones: within
-- the machine's noise, though the planning saved is certain.
--
-- Redefined whole; what changed: `set plan_cache_mode = force_generic_plan`,
-- for the function and what it calls (authorize_request's queries took generic
-- plans after their first five calls already). Everything else is as in
-- 20261129000600.

create or replace function public.authorize_requests(p_items jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
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

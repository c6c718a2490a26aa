-- authorize_requests without a lock of its own on each request id.
--
-- Since 20261127001400, authorize_request itself takes the lock on the request
-- id (after the account row, before it checks cancelled_requests) and holds it
-- until the transaction ends, so every item of a batch already holds it until
-- the batch commits, and a give-back of that request still waits for the batch.
-- The lock this function took before each item was the same lock taken twice.
--
-- Redefined whole; what changed: the pg_advisory_xact_lock before each item is
-- gone. Everything else is as in 20261127001200.

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

  perform 1 from public.account_members m
   where (m.account_id, m.user_id) in (select k.account_id, k.member_user_id from public.api_keys k
                                         where k.key_hash = any (v_hashes) and k.member_user_id is not null)
   order by m.account_id, m.user_id for no key update;
  perform 1 from public.api_keys k
   where k.key_hash = any (v_hashes)
     and (k.spend_limit is not null or k.monthly_spend_limit is not null or k.max_concurrent is not null)
   order by k.id for no key update;
  perform 1 from public.accounts a
   where a.id in (select k.account_id from public.api_keys k where k.key_hash = any (v_hashes))
   order by a.id for no key update;

  for v_item in select value from jsonb_array_elements(p_items) loop
    begin
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id',
        'ok', true,
        'result', public.authorize_request(
          v_item ->> 'request_id',
          v_item ->> 'key_hash',
          v_item ->> 'model',
          (v_item ->> 'max_input_tokens')::bigint,
          (v_item ->> 'max_output_tokens')::bigint,
          (v_item ->> 'client_ip')::inet,
          coalesce((v_item ->> 'choices')::integer, 1),
          coalesce((v_item ->> 'cap_output')::boolean, false),
          case when jsonb_typeof(v_item -> 'providers') = 'array'
               then array(select jsonb_array_elements_text(v_item -> 'providers')) end,
          coalesce(v_item -> 'calls', '{}'))));
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

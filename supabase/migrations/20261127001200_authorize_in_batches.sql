-- Authorizations in batches.
--
-- A busy gateway instance sends the authorizations that arrive while its
-- earlier calls are in flight together, in one call: one PostgREST request,
-- one transaction and one commit for many requests instead of one each.
-- Every item is authorized by public.authorize_request itself (unchanged), in
-- a subtransaction of its own: an item that fails is rolled back alone and
-- reported, and the others stand.
--
-- Lock order. One transaction now takes the locks of many requests, so it
-- takes them up front, class by class and each class in id order, as
-- settle_requests does: the membership rows of members' keys, the rows of keys
-- whose policy counts what is in flight, then the accounts. The items then
-- find their rows already locked by their own transaction. Between classes the
-- order is the one authorize_request follows (membership, key, account), so a
-- batch waits for a single authorization or a settlement, never in a cycle
-- with one. (A key that gains a spend limit, or becomes a member's, between
-- the up-front locks and its item is locked by its item after the accounts;
-- should that ever close a cycle, PostgreSQL breaks it, the item's
-- subtransaction catches the error and the gateway sends that item again
-- alone.) The gateway sends at most 64 items per call: PostgreSQL caches 64
-- subtransactions per transaction.

create function public.authorize_requests(p_items jsonb)
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
      -- Until this transaction ends, a hold given back for this request waits (see below).
      perform pg_advisory_xact_lock(hashtextextended(v_item ->> 'request_id', 0));
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

-- A hold given back while its batch is still open.
--
-- The gateway gives back a hold whose authorization it never saw answered
-- (settle_request with no usage): when the request's row is not there, the
-- request id is remembered in cancelled_requests so that a late authorization
-- is refused; an authorization checks that table after writing its row. A
-- batch keeps its rows uncommitted, so invisible, until its last item is
-- done: a give-back arriving in that time would find no row, remember the id
-- after the item had checked, and the hold would stay until the stale-hold
-- job. So each item holds a lock on its request id until the batch commits,
-- and remembering an id takes the same lock first: it waits for the batch,
-- and if the request was authorized meanwhile it fails with a passing error
-- (40001): PostgREST runs such a transaction again by itself, which now finds
-- the row and releases the hold (tests/gateway/authorization-batches.test.ts);
-- any other caller gives it back again, as it would after any passing error.

create function private.cancelled_request_not_authorized()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  perform pg_advisory_xact_lock(hashtextextended(new.request_id, 0));
  if exists (select 1 from public.usage_events where request_id = new.request_id) then
    raise exception 'request % was authorized while it was being given back: give it back again', new.request_id
      using errcode = '40001';
  end if;
  return new;
end;
$$;
revoke all on function private.cancelled_request_not_authorized() from public, anon, authenticated;

create trigger cancelled_requests_after_authorizations
  before insert on public.cancelled_requests
  for each row execute function private.cancelled_request_not_authorized();

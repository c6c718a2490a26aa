-- A hold taken ahead given back before its authorization reached the database.
--
-- When the instance's authorize_ahead call fails or misses the database
-- deadline, the instance gives the hold back (return_ready_holds). That call
-- found only rows already committed: an authorize_ahead still queued (in
-- PostgREST's pool, say) or still open found nothing to give back, committed
-- afterwards, and its hold, under a request id no instance knew any more,
-- stayed held until expire_stale_holds, six minutes after its window. A single
-- authorization given back that way is remembered in cancelled_requests (by
-- settle_one), and refused when it comes; a hold taken ahead was not.
--
-- Redefined whole; what changed: the ids given back that have no row at all
-- are remembered in cancelled_requests, so the authorization is refused when
-- it comes (authorize_request checks that table last, under the request id's
-- lock). The insert's trigger waits for an authorization of the id still open
-- and fails with 40001 should it commit meanwhile; the instance's next call
-- then finds the row and gives it back. The ids are remembered last, after the
-- account rows, so the order stays accounts before request ids, as in
-- authorize_requests. Everything else is as in 20261129000200.

create or replace function public.return_ready_holds(p_request_ids text[])
returns integer
language plpgsql
security definer
set search_path = ''
set plan_cache_mode = force_generic_plan
as $$
declare
  v_ids text[];
begin
  select coalesce(array_agg(request_id), '{}') into v_ids
    from (select request_id from public.usage_events
           where request_id = any (p_request_ids) and status = 'held' and ready_until is not null
           order by request_id
             for update) as ready;
  if cardinality(v_ids) > 0 then
    perform 1 from public.accounts
     where id in (select account_id from public.usage_events where request_id = any (v_ids))
     order by id for no key update;
    update public.accounts a
       set held = a.held - ready.holds, updated_at = now()
      from (select account_id, sum(hold) as holds from public.usage_events where request_id = any (v_ids) group by account_id) as ready
     where a.id = ready.account_id;
    delete from public.usage_events where request_id = any (v_ids);
  end if;
  insert into public.cancelled_requests (request_id)
  select given.request_id
    from (select distinct unnest(p_request_ids) as request_id) as given
   where not exists (select 1 from public.usage_events e where e.request_id = given.request_id)
     and not (given.request_id = any (v_ids))
   order by given.request_id
  on conflict do nothing;
  return cardinality(v_ids);
end;
$$;

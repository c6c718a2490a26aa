-- Holds taken ahead: a warm key's next request served with no database round
-- trip before its upstream call or its answer.
--
-- An instance that has just authorized a request for a key with ample headroom
-- may authorize one more request of the same shape ahead of time, under a
-- request id of its own making: a real hold, in a real usage_events row, taken
-- by authorize_request as any other. The next request of that key and shape on
-- that instance adopts the row (its request id becomes the row's) and is
-- settled against it like any request: no request is served without a hold.
-- A hold nobody adopts within its window is given back by the instance
-- (return_ready_holds: the row goes, as a refused authorization's does); one
-- whose instance stopped first is released by expire_stale_holds.
--
-- ready_until: until when the instance that took the hold may still adopt it;
-- null for every request authorized as it arrived. Not readable by customers
-- (no column grant): it is the gateway's bookkeeping.

alter table public.usage_events add column ready_until timestamptz;

-- Keys whose policy counts what is in flight (a spend limit, a concurrency cap,
-- a member's monthly budget) get no hold ahead: an unused one would count
-- against the customer's own limit. Their items are answered as refusals
-- (not_taken_ahead) without touching anything.
create function public.authorize_ahead(p_items jsonb, p_ready_seconds integer)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_allowed jsonb;
  v_answers jsonb;
  v_results jsonb := '[]';
  v_item jsonb;
  v_next integer := 0;
begin
  if jsonb_typeof(p_items) is distinct from 'array' then
    raise exception 'authorizations must be an array' using errcode = '22023';
  end if;
  if p_ready_seconds is null or p_ready_seconds not between 1 and 60 then
    raise exception 'a hold is taken ahead for 1 to 60 seconds' using errcode = '22023';
  end if;
  select coalesce(jsonb_agg(item order by position), '[]') into v_allowed
    from jsonb_array_elements(p_items) with ordinality as items (item, position)
   where exists (
     select 1 from public.api_keys k
      where k.key_hash = item ->> 'key_hash'
        and k.spend_limit is null and k.monthly_spend_limit is null and k.max_concurrent is null
        and not exists (select 1 from public.account_members m
                         where m.account_id = k.account_id and m.user_id = k.member_user_id
                           and m.monthly_budget is not null));
  v_answers := public.authorize_requests(v_allowed);

  update public.usage_events e
     set ready_until = now() + make_interval(secs => p_ready_seconds)
    from jsonb_array_elements(v_answers) as answer
   where e.request_id = answer ->> 'request_id'
     and (answer ->> 'ok')::boolean
     and answer -> 'result' ->> 'status' = 'authorized'
     and not (answer -> 'result' ->> 'replayed')::boolean;

  -- Answered in the order asked, the skipped ones in their places.
  for v_item in select value from jsonb_array_elements(p_items) loop
    if v_next < jsonb_array_length(v_answers) and v_answers -> v_next ->> 'request_id' = v_item ->> 'request_id' then
      v_results := v_results || jsonb_build_array(v_answers -> v_next);
      v_next := v_next + 1;
    else
      v_results := v_results || jsonb_build_array(jsonb_build_object(
        'request_id', v_item ->> 'request_id', 'ok', true,
        'result', private.refusal('not_taken_ahead', 'This key''s policy counts what is in flight: no hold is taken ahead for it.')));
    end if;
  end loop;
  return v_results;
end;
$$;
revoke all on function public.authorize_ahead(jsonb, integer) from public, anon, authenticated;
grant execute on function public.authorize_ahead(jsonb, integer) to service_role;

-- Gives back holds taken ahead that their instance did not use: the holds go
-- back to their accounts and the rows go, as for a refused authorization. Only
-- rows still held and taken ahead are touched, so a request id that was
-- adopted and settled, or never taken ahead, is left alone. Lock order as
-- everywhere: the requests' rows, then their accounts in id order.
create function public.return_ready_holds(p_request_ids text[])
returns integer
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_ids text[];
begin
  select coalesce(array_agg(request_id), '{}') into v_ids
    from (select request_id from public.usage_events
           where request_id = any (p_request_ids) and status = 'held' and ready_until is not null
           order by request_id
             for update) as ready;
  if cardinality(v_ids) = 0 then
    return 0;
  end if;
  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (v_ids))
   order by id for no key update;
  update public.accounts a
     set held = a.held - ready.holds, updated_at = now()
    from (select account_id, sum(hold) as holds from public.usage_events where request_id = any (v_ids) group by account_id) as ready
   where a.id = ready.account_id;
  delete from public.usage_events where request_id = any (v_ids);
  return cardinality(v_ids);
end;
$$;
revoke all on function public.return_ready_holds(text[]) from public, anon, authenticated;
grant execute on function public.return_ready_holds(text[]) to service_role;

-- Stale holds ------------------------------------------------------------------
-- Redefined whole; what changed: a hold taken ahead whose instance stopped
-- before giving it back is released once its window has been over for six
-- minutes (an adopted one has finished by then: requests run 300 s at most),
-- marked expired like a stale hold so that a settlement arriving late still
-- charges, but without a stale_hold alert: the customer made no such request
-- unless one was adopted, and that one's settlement is then on its way.

create or replace function public.expire_stale_holds(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz := p_now - (select stale_hold_after from public.billing_settings where id);
  v_ids text[];
  v_ready text[];
  v_event public.usage_events;
begin
  select coalesce(array_agg(request_id) filter (where ready_until is null), '{}'),
         coalesce(array_agg(request_id) filter (where ready_until is not null), '{}')
    into v_ids, v_ready
    from (select request_id, ready_until from public.usage_events
           where status = 'held'
             and ((ready_until is null and created_at < v_cutoff)
                  or ready_until < p_now - interval '6 minutes')
           order by request_id
             for update skip locked) as stale;
  -- A late authorization comes within the stale-hold window or not at all.
  delete from public.cancelled_requests where cancelled_at < v_cutoff;
  if cardinality(v_ids) + cardinality(v_ready) = 0 then
    return jsonb_build_object('expired', 0, 'cutoff', v_cutoff);
  end if;

  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (v_ids || v_ready))
   order by id for no key update;
  update public.accounts a
     set held = a.held - stale.holds, updated_at = now()
    from (select account_id, sum(hold) as holds from public.usage_events where request_id = any (v_ids || v_ready) group by account_id) as stale
   where a.id = stale.account_id;

  update public.usage_events
     set status = 'expired', amount = 0, charged = 0, settled_at = p_now, hold_expired_at = p_now,
         error = 'taken ahead and not given back by its instance: the hold was released'
   where request_id = any (v_ready);

  for v_event in
    update public.usage_events
       set status = 'expired', amount = 0, charged = 0, settled_at = p_now, hold_expired_at = p_now,
           error = 'not settled in time: the hold was released'
     where request_id = any (v_ids)
    returning *
  loop
    perform private.raise_alert_once(v_event.account_id, 'stale_hold',
      'A request was not settled in time; its hold was released. If its settlement arrives later, what was used is charged then.',
      jsonb_build_object('request_id', v_event.request_id, 'model', v_event.model_id, 'hold', v_event.hold,
                         'authorized_at', v_event.created_at),
      'stale_hold:' || v_event.request_id);
  end loop;
  return jsonb_build_object('expired', cardinality(v_ids) + cardinality(v_ready), 'cutoff', v_cutoff);
end;
$$;

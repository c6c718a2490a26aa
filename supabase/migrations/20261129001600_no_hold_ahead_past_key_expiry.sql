-- No hold is taken ahead for a key that expires within the hold's window.
--
-- A hold taken ahead is adopted with no database round trip: only the key's
-- revocation mark in Redis is checked then, not its expires_at. A key that
-- expired while a hold was ready for it was served (and charged) once more
-- per instance and request shape, up to READY_HOLD_SECONDS after it ended.
-- The window is known when the hold is taken, so a key that ends before the
-- window does gets none (not_taken_ahead): its requests are authorized as
-- they come, and the one after the end is refused (api_key_expired).
--
-- Redefined whole; what changed: the expires_at condition and the refusal's
-- wording. Everything else is as in 20261127001500.

create or replace function public.authorize_ahead(p_items jsonb, p_ready_seconds integer)
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
        and (k.expires_at is null or k.expires_at > now() + make_interval(secs => p_ready_seconds))
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
        'result', private.refusal('not_taken_ahead', 'This key''s policy counts what is in flight, or it expires within the window: no hold is taken ahead for it.')));
    end if;
  end loop;
  return v_results;
end;
$$;

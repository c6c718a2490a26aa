-- Expiry waits only for the part of what is due that requests in flight hold.
--
-- expire_grants (20261127000900) left a whole account for a later run as soon
-- as what was due passed what it had available. Two things were wrong with it:
-- * A key always at work (a coding agent, or a hold taken ahead) has a hold
--   in flight at every run, so a whole expired grant was deferred run after
--   run, for the sake of a request holding a few units of it, and kept being
--   spent long after it expired.
-- * "Available" counted the credit limit: on an account with one, an expired
--   grant was written off under a request's hold, and the request then paid in
--   debt what it was authorized to pay from the grant.
--
-- Now each run writes off what the holds do not cover, balance - held (never
-- the credit limit), grant by grant in id order, and leaves only the rest on
-- the grant for a later run; the requests in flight draw on it as they
-- settle. A part written off is a ledger row of its own: reason 'expiry',
-- reference 'expiry:<grant id>' for what ends the grant, and
-- 'expiry:<grant id>:<what it had left>' for a part (what is left only ever
-- falls, so no reference is written twice).
--
-- Redefined whole.

create or replace function public.expire_grants(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account uuid;
  v_grant record;
  v_grants integer := 0;
  v_amount bigint := 0;
  v_room bigint;
  v_off bigint;
  v_deferred integer := 0;
begin
  for v_account in
    select distinct g.account_id from public.credit_grants g
     where g.expired_at is null and g.expires_at <= p_now order by g.account_id
  loop
    -- What no request in flight holds: all of it may go now.
    select greatest(0, balance - held) into v_room from public.accounts where id = v_account for no key update;
    for v_grant in
      select g.id, g.remaining from public.credit_grants g
       where g.account_id = v_account and g.expired_at is null and g.expires_at <= p_now
       order by g.id for update
    loop
      v_off := least(v_grant.remaining, v_room);
      if v_off = v_grant.remaining then
        update public.credit_grants set remaining = 0, expired_at = p_now where id = v_grant.id;
        if v_off > 0 then
          perform private.post_ledger(v_account, -v_off, 'expiry', 'expiry:' || v_grant.id, format('grant %s expired', v_grant.id));
        end if;
        v_grants := v_grants + 1;
      else
        -- The rest is held by requests in flight, which draw on it as they settle.
        update public.credit_grants set remaining = remaining - v_off where id = v_grant.id;
        if v_off > 0 then
          perform private.post_ledger(v_account, -v_off, 'expiry', format('expiry:%s:%s', v_grant.id, v_grant.remaining),
                                      format('grant %s expired, but for what requests in flight hold', v_grant.id));
        end if;
      end if;
      v_room := v_room - v_off;
      v_amount := v_amount + v_off;
    end loop;
    if exists (select 1 from public.credit_grants g
                where g.account_id = v_account and g.expired_at is null and g.expires_at <= p_now) then
      v_deferred := v_deferred + 1;
    end if;
  end loop;
  return jsonb_build_object('expired', v_grants, 'amount', v_amount, 'deferred_accounts', v_deferred);
end;
$$;

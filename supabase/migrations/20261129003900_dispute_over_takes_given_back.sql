-- What a payment's disputes took back beyond what they keep is given back, for
-- payments the functions before 20261129003500 took back twice; and a
-- dispute's flag is cleared once none of the account's disputes is open or lost.
--
-- 20261129003700 made what a payment's disputes keep taken back whole, in one
-- direction only: private.take_back_what_disputes_keep takes a shortfall back
-- and never gives anything back, and its correction set disputed_amount to the
-- sum of the disputes open or lost without touching debited. Two payments the
-- functions before 20261129003500 had taken back twice stayed so ($50 pack, 55
-- credits with its bonus):
-- * A dispute created, closed as won (the 55 credits given back), then its
--   created event again under a new event id: the 55 credits taken again. The
--   backfill recorded the dispute won, and after the correction the payment had
--   disputed_amount 0 and debited 55M: a balance of 0 for a payment that none
--   of its disputes keeps anything of.
-- * A dispute closed as won before its created event (nothing to give back
--   then), its created event then taking the 55 credits: the same, and the
--   account stayed flagged ("payment … disputed") with no dispute open or
--   lost; its won close delivered again ('already_won') cleared nothing.
--
-- Now:
-- * private.give_back_what_disputes_do_not_keep gives back what of a payment is
--   taken back (debited, or recorded uncollected) beyond what its refund and its
--   disputes open or lost keep, within what the payment had taken back: what was
--   recorded uncollected is forgiven first, then the rest is posted as a dispute
--   won posts it (private.give_back_dispute_draws, the give-back of
--   apply_stripe_dispute_closed moved into a function of its own, unchanged):
--   part by part, each on the terms of the grant it was drawn from (here the
--   draws that name no dispute first: the old functions' second take recorded
--   those; the last drawn first), what no draw covers on the payment's own paid
--   terms. Its ledger rows are 'dispute_won:reconciled:<payment intent>', then
--   ':2', ':3' per part; a payment with that row is not given back again, and
--   its arithmetic finds nothing more either.
-- * What the refund and the disputes keep is counted without taking off what
--   expired of the payment's credits, unlike the claw-back's target: that counts
--   an expiry as taken back whether it came before or after the take, so a
--   dispute lost, the payment's other credits then expiring, would look taken
--   back beyond its share, and be given back. Counted so, no payment kept by
--   today's functions is beyond it (each took at most its share). The two are
--   the same for a pack (its credits never expire) and for a payment none of
--   whose disputes keeps anything, with no refund (both 0). For a month's
--   allowance taken back twice, partly expired and partly refunded or disputed
--   too, what is given back stops at that share; a dispute of it still open
--   gives back the rest when it is won, as before.
-- * It runs here, once, for every payment with a recorded dispute.
-- * It does not run on dispute events, and take_back_what_disputes_keep still
--   never gives anything back. With today's functions nothing takes back twice
--   (a dispute takes its share when it is first recorded, once; a dispute won
--   gives back down to what the others keep); the payments the old functions
--   took back twice are all put right here, before any later event. What a
--   payment gets back is then always decided by an event that says so (a
--   dispute won, its own draws first, under its own reference) or by this
--   migration, never by a check that runs on every event: such a check would
--   pay out, silently and under each event's reference, whatever a future
--   mistake took twice, and a check counting expiry as the claw-back does would
--   give back what a dispute lost keeps.
-- * A dispute's flag (flagged_reason 'payment … disputed') is cleared when none
--   of the account's disputes, of any of its payments, is open or lost
--   (private.clear_dispute_flag): by a dispute won (as before), by a dispute
--   closed as won before its created event, by an event of a dispute already
--   closed (its closed event again, its created event after its close), and
--   here, for every account with a disputed payment. A dispute won looked only
--   at its own payment's disputes: with two payments disputed, the one named by
--   the flag won cleared it while the other's dispute was open or lost.
--
-- Lock order (as in 20261129003500 and 20261129003700): a payment intent's
-- advisory lock, then its payment's row, then the account. clear_dispute_flag
-- locks the account's row before it reads the account's disputes, so that a
-- dispute of another of its payments, recorded by a transaction that flags the
-- account (every one locks the account last, after its own payment), is seen
-- once that one commits. This migration takes the advisory locks of every
-- payment it puts right, then their rows, in ascending id, then their accounts,
-- in ascending id, before it changes any, as 20261129003700 did.
--
-- Redefined whole: public.apply_stripe_dispute and
-- public.apply_stripe_dispute_closed (20261129003700); what changed: a dispute
-- already known (created again or after its close, closed again) and a dispute
-- closed as won before its created event clear the flag when none of the
-- account's disputes is open or lost, and a dispute won clears it on the same
-- condition (it looked at its own payment's disputes and a flag naming its
-- payment); a dispute won posts what it gives back through
-- private.give_back_dispute_draws (the same parts, terms, order and
-- references). Everything else is as in that migration.

-- Gives back p_amount of a payment's credits taken back, as a dispute won does (see
-- above): part by part, the draws of p_dispute_id first, then those of no dispute, then
-- other disputes', the last drawn first; what is given back of a draw is no longer
-- recorded as drawn. The caller holds the payment's row and updates its debited.
create function private.give_back_dispute_draws(p_payment_id bigint, p_amount bigint, p_dispute_id text,
                                                p_reference text, p_note text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_payment public.stripe_payments;
  v_own_terms jsonb;
  v_draw record;
  v_left bigint := p_amount;
  v_part bigint;
  v_parts integer := 0;
begin
  if p_amount <= 0 then
    return;
  end if;
  select * into v_payment from public.stripe_payments where id = p_payment_id;
  -- The payment's own paid terms, for what was taken past its grants or never recorded:
  -- a month's allowance still ends with its month (a checkout's pack has no end).
  v_own_terms := jsonb_build_object('source', 'dispute_won', 'category', 'paid',
    'reference', coalesce(v_payment.checkout_session_id, v_payment.invoice_id),
    'expires_at', (select g.expires_at from public.credit_grants g
                    where g.account_id = v_payment.account_id and g.reference = coalesce(v_payment.checkout_session_id, v_payment.invoice_id)
                      and g.category = 'paid'
                    order by g.id limit 1));
  for v_draw in
    select d.id as draw_id, d.amount, g.id as grant_id, g.category, g.priority, g.expires_at, g.reference
      from private.dispute_draws d
      left join public.credit_grants g on g.id = d.grant_id
     where d.payment_id = p_payment_id
     order by case when d.dispute_id = p_dispute_id then 0 when d.dispute_id is null then 1 else 2 end, d.id desc
  loop
    exit when v_left = 0;
    v_part := least(v_left, v_draw.amount);
    v_parts := v_parts + 1;
    perform private.set_next_grant_terms(case when v_draw.grant_id is null then v_own_terms
      else jsonb_build_object('source', 'dispute_won', 'category', v_draw.category, 'priority', v_draw.priority,
                              'expires_at', v_draw.expires_at, 'reference', v_draw.reference) end);
    perform private.post_ledger(v_payment.account_id, v_part, 'dispute_won',
                                p_reference || case when v_parts > 1 then ':' || v_parts else '' end, p_note);
    if v_part = v_draw.amount then
      delete from private.dispute_draws where id = v_draw.draw_id;
    else
      update private.dispute_draws set amount = amount - v_part where id = v_draw.draw_id;
    end if;
    v_left := v_left - v_part;
  end loop;
  if v_left > 0 then
    v_parts := v_parts + 1;
    perform private.set_next_grant_terms(v_own_terms);
    perform private.post_ledger(v_payment.account_id, v_left, 'dispute_won',
                                p_reference || case when v_parts > 1 then ':' || v_parts else '' end, p_note);
  end if;
end;
$$;
revoke all on function private.give_back_dispute_draws(bigint, bigint, text, text, text) from public;

-- Gives back what of a payment is taken back beyond what its refund and its disputes open
-- or lost keep (see above), once: returns what it gave back or forgave. The caller holds
-- the payment intent's advisory lock; this locks the payment's row, then (the ledger)
-- the account.
create function private.give_back_what_disputes_do_not_keep(p_payment_id bigint, p_reference text)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_payment public.stripe_payments;
  v_disputed bigint;
  v_kept bigint;
  v_excess bigint;
  v_forgiven bigint;
  v_restored bigint;
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if not found or p_reference is null then
    return 0;
  end if;
  if exists (select 1 from public.credit_ledger l where l.reason = 'dispute_won' and l.reference = p_reference) then
    -- Given back already: once is all.
    return 0;
  end if;
  v_disputed := private.disputed_of_payment(p_payment_id);
  if v_payment.disputed_amount <> v_disputed then
    update public.stripe_payments set disputed_amount = v_disputed, updated_at = now() where id = p_payment_id;
  end if;
  v_kept := case when coalesce(v_payment.amount_total, 0) > 0
                 then floor(coalesce(v_payment.credits, 0)::numeric
                            * least(v_payment.amount_total, v_payment.refunded_amount + v_disputed)
                            / v_payment.amount_total)::bigint
                 else 0 end;
  v_excess := greatest(0, v_payment.debited + v_payment.uncollected - v_kept);
  if v_excess = 0 then
    return 0;
  end if;
  v_forgiven := least(v_excess, v_payment.uncollected);
  v_restored := v_excess - v_forgiven;
  update public.stripe_payments
     set uncollected = uncollected - v_forgiven, debited = debited - v_restored, updated_at = now()
   where id = p_payment_id;
  perform private.give_back_dispute_draws(p_payment_id, v_restored, null, p_reference,
    format('Stripe payment %s: taken back beyond what its refund and disputes keep, given back', v_payment.payment_intent_id));
  if not exists (select 1 from private.stripe_disputes s where s.payment_id = p_payment_id and s.status = 'open') then
    -- No dispute of the payment is open: nothing more of it will be given back.
    delete from private.dispute_draws where payment_id = p_payment_id;
  end if;
  return v_excess;
end;
$$;
revoke all on function private.give_back_what_disputes_do_not_keep(bigint, text) from public;

-- Clears the account's dispute flag when none of its disputes, of any of its payments, is
-- open or lost (see above). Locks the account's row: the caller holds its payment's.
create function private.clear_dispute_flag(p_account_id uuid)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_account_id is null
     or not exists (select 1 from public.accounts a where a.id = p_account_id and a.flagged_reason like 'payment % disputed%') then
    return;
  end if;
  perform 1 from public.accounts a where a.id = p_account_id for no key update;
  -- Read after the lock: a dispute recorded by a transaction that flagged the account is seen.
  if exists (select 1 from private.stripe_disputes s join public.stripe_payments p on p.id = s.payment_id
              where p.account_id = p_account_id and s.status in ('open', 'lost')) then
    return;
  end if;
  update public.accounts set flagged_reason = null, updated_at = now()
   where id = p_account_id and flagged_reason like 'payment % disputed%';
end;
$$;
revoke all on function private.clear_dispute_flag(uuid) from public;

create or replace function public.apply_stripe_dispute(p_event_id text, p_dispute jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment_intent text := p_dispute ->> 'payment_intent';
  v_dispute_id text := p_dispute ->> 'id';
  v_amount bigint := (p_dispute ->> 'amount')::bigint;
  v_payment public.stripe_payments;
  v_known private.stripe_disputes;
  v_last_draw bigint;
begin
  if v_payment_intent is null then
    raise exception 'the dispute has no payment intent' using errcode = '22023';
  end if;
  if v_dispute_id is null then
    -- Stripe's disputes always have one: without it, its close could not be told from another dispute's.
    raise exception 'the dispute has no id' using errcode = '22023';
  end if;
  if v_amount is null or v_amount < 0 then
    raise exception 'the dispute has no amount' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  if not private.record_stripe_event(p_event_id, 'charge.dispute.created', v_payment_intent, p_dispute) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  insert into public.stripe_payments (payment_intent_id, currency)
  values (v_payment_intent, p_dispute ->> 'currency')
  on conflict (payment_intent_id) do update set updated_at = now()
  returning * into v_payment;
  select * into v_known from private.stripe_disputes where id = v_dispute_id for update;
  if found then
    -- Its created event again under another id, or its close came first: nothing more is its own
    -- to take. What the payment's disputes keep is taken back all the same (one closed as lost
    -- before its created event, before 20261129003500, had taken nothing), and the flag is
    -- cleared when none of the account's disputes is open or lost.
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
    perform private.clear_dispute_flag(v_payment.account_id);
    return private.finish_stripe_event(p_event_id,
      'already_' || case v_known.status when 'open' then 'disputed' else v_known.status end, v_payment.account_id);
  end if;
  insert into private.stripe_disputes (id, payment_id, amount, status) values (v_dispute_id, v_payment.id, v_amount, 'open');
  update public.stripe_payments set disputed_amount = private.disputed_of_payment(v_payment.id), updated_at = now()
   where id = v_payment.id;
  v_last_draw := coalesce((select max(d.id) from private.dispute_draws d where d.payment_id = v_payment.id), 0);
  perform private.claw_back_stripe_payment(v_payment.id, 'dispute', 'dispute:' || p_event_id);
  -- What this claw-back drew is this dispute's.
  update private.dispute_draws set dispute_id = v_dispute_id where payment_id = v_payment.id and id > v_last_draw;
  perform private.flag_dispute(v_payment.account_id, v_payment_intent, p_dispute ->> 'reason',
    'A payment was disputed; its credits were taken back.',
    jsonb_build_object('dispute', p_dispute ->> 'id', 'amount', p_dispute ->> 'amount', 'reason', p_dispute ->> 'reason'));
  return private.finish_stripe_event(p_event_id, 'disputed', v_payment.account_id);
end;
$$;

create or replace function public.apply_stripe_dispute_closed(p_event_id text, p_dispute jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment_intent text := p_dispute ->> 'payment_intent';
  v_outcome text := p_dispute ->> 'status';
  v_dispute_id text := p_dispute ->> 'id';
  v_reference text := 'dispute_won:' || (p_dispute ->> 'id');
  v_closed text;
  v_known private.stripe_disputes;
  v_payment public.stripe_payments;
  v_target bigint;
  v_excess bigint;
  v_forgiven bigint;
  v_restored bigint;
  v_last_draw bigint;
begin
  if v_payment_intent is null then
    raise exception 'the dispute has no payment intent' using errcode = '22023';
  end if;
  if v_dispute_id is null then
    -- Stripe's disputes always have one: without it, its close could not be told from another dispute's.
    raise exception 'the dispute has no id' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  if not private.record_stripe_event(p_event_id, 'charge.dispute.closed', v_payment_intent, p_dispute) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  if v_outcome is null or v_outcome not in ('won', 'warning_closed', 'lost') then
    select * into v_payment from public.stripe_payments where payment_intent_id = v_payment_intent;
    return private.finish_stripe_event(p_event_id, 'recorded', v_payment.account_id);
  end if;
  v_closed := case when v_outcome = 'lost' then 'lost' else 'won' end;

  select * into v_payment from public.stripe_payments where payment_intent_id = v_payment_intent for update;
  select * into v_known from private.stripe_disputes where id = v_dispute_id for update;
  if found and v_known.status <> 'open' then
    -- Closed already: its closed event again, under another id. What the payment's disputes
    -- keep is taken back all the same, and the flag is cleared when none of the account's
    -- disputes is open or lost.
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
    perform private.clear_dispute_flag(v_payment.account_id);
    return private.finish_stripe_event(p_event_id, 'already_' || v_known.status, v_payment.account_id);
  end if;

  if v_known.id is null then
    -- Its created event has not come (yet): the dispute is recorded closed, so that event takes nothing.
    if (p_dispute ->> 'amount')::bigint is null or (p_dispute ->> 'amount')::bigint < 0 then
      raise exception 'the dispute has no amount' using errcode = '22023';
    end if;
    if v_payment.id is null then
      insert into public.stripe_payments (payment_intent_id, currency)
      values (v_payment_intent, p_dispute ->> 'currency')
      returning * into v_payment;
    end if;
    insert into private.stripe_disputes (id, payment_id, amount, status)
    values (v_dispute_id, v_payment.id, (p_dispute ->> 'amount')::bigint, v_closed);
    if v_closed = 'lost' then
      -- Lost for good: its share is taken back now, and what that drew is never given back.
      update public.stripe_payments set disputed_amount = private.disputed_of_payment(v_payment.id), updated_at = now()
       where id = v_payment.id;
      v_last_draw := coalesce((select max(d.id) from private.dispute_draws d where d.payment_id = v_payment.id), 0);
      perform private.claw_back_stripe_payment(v_payment.id, 'dispute', 'dispute:' || p_event_id);
      delete from private.dispute_draws where payment_id = v_payment.id and id > v_last_draw;
      perform private.flag_dispute(v_payment.account_id, v_payment_intent, p_dispute ->> 'reason',
        'A payment was disputed and the dispute lost; its credits were taken back.',
        jsonb_build_object('dispute', p_dispute ->> 'id', 'amount', p_dispute ->> 'amount', 'reason', p_dispute ->> 'reason'));
    else
      -- Won: it takes nothing; what the payment's other disputes keep is taken back all the
      -- same, and the flag is cleared when none of the account's disputes is open or lost.
      perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
      perform private.clear_dispute_flag(v_payment.account_id);
    end if;
    return private.finish_stripe_event(p_event_id, 'dispute_' || v_closed, v_payment.account_id);
  end if;

  update private.stripe_disputes set status = v_closed, updated_at = now() where id = v_dispute_id;
  if v_closed = 'lost' then
    -- The credits stay taken back, and what the payment's disputes keep is taken back (one
    -- applied before 20261129003500 may have taken less than its share); what it drew is
    -- never given back.
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
    delete from private.dispute_draws where payment_id = v_payment.id and dispute_id = v_dispute_id;
    if not exists (select 1 from private.stripe_disputes s where s.payment_id = v_payment.id and s.status = 'open') then
      delete from private.dispute_draws where payment_id = v_payment.id;
    end if;
    return private.finish_stripe_event(p_event_id, 'dispute_lost', v_payment.account_id);
  end if;

  -- What should stay taken back now is the refunded share and the share of the payment's
  -- other disputes, open or lost, less what expired of the payment's credits, as the
  -- claw-back counts it.
  update public.stripe_payments set disputed_amount = private.disputed_of_payment(v_payment.id), updated_at = now()
   where id = v_payment.id
  returning * into v_payment;
  v_target := case when coalesce(v_payment.amount_total, 0) > 0
                   then greatest(0, floor(v_payment.credits::numeric
                                          * least(v_payment.amount_total, v_payment.refunded_amount + v_payment.disputed_amount)
                                          / v_payment.amount_total)::bigint - private.expired_of_payment(v_payment))
                   else 0 end;
  v_excess := greatest(0, v_payment.debited + v_payment.uncollected - v_target);
  v_forgiven := least(v_excess, v_payment.uncollected);
  v_restored := v_excess - v_forgiven;
  update public.stripe_payments
     set uncollected = uncollected - v_forgiven, debited = debited - v_restored, updated_at = now()
   where id = v_payment.id;
  -- Given back part by part, each on the terms of the grant it came from: this dispute's
  -- draws first, then those of no dispute in particular, then other disputes', the last
  -- drawn first.
  perform private.give_back_dispute_draws(v_payment.id, v_restored, v_dispute_id, v_reference,
                                          format('dispute of Stripe payment %s won', v_payment_intent));
  -- Nothing was given back beyond what stays taken back; what the other disputes keep and was
  -- not taken (a dispute applied before 20261129003500) is taken back now.
  perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
  -- What it drew and a refund or another dispute keeps taken back is theirs now; once no
  -- dispute of the payment is open, nothing of it will be given back.
  delete from private.dispute_draws where payment_id = v_payment.id and dispute_id = v_dispute_id;
  if not exists (select 1 from private.stripe_disputes s where s.payment_id = v_payment.id and s.status = 'open') then
    delete from private.dispute_draws where payment_id = v_payment.id;
  end if;
  -- The flag stays while a dispute of the account, of this payment or another, is open or was lost.
  perform private.clear_dispute_flag(v_payment.account_id);
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

-- The payments disputed so far, put right once: what their disputes do not keep is given
-- back, and their accounts' flags cleared when none of their disputes is open or lost.
do $$
declare
  v_payments bigint[];
  v_payment public.stripe_payments;
begin
  select coalesce(array_agg(p.id order by p.id), '{}') into v_payments
    from public.stripe_payments p
   where exists (select 1 from private.stripe_disputes d where d.payment_id = p.id);
  -- Every lock before any change: the payments' advisory locks, then their rows, in ascending
  -- id; then their accounts, in ascending id.
  for v_payment in select * from public.stripe_payments p where p.id = any (v_payments) order by p.id loop
    perform private.lock_stripe_payment(null, v_payment.payment_intent_id);
  end loop;
  perform 1 from public.stripe_payments p where p.id = any (v_payments) order by p.id for update;
  perform 1 from public.accounts a
    where a.id in (select p.account_id from public.stripe_payments p where p.id = any (v_payments))
    order by a.id for no key update;
  for v_payment in select * from public.stripe_payments p where p.id = any (v_payments) order by p.id loop
    perform private.give_back_what_disputes_do_not_keep(v_payment.id, 'dispute_won:reconciled:' || v_payment.payment_intent_id);
    perform private.clear_dispute_flag(v_payment.account_id);
  end loop;
end;
$$;

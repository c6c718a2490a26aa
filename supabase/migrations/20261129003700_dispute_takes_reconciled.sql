-- What a payment's disputes keep is taken back, for disputes applied before
-- 20261129003500 too.
--
-- 20261129003500 recorded the disputes applied before it from the events
-- stored and left their payments as the functions of then had left them
-- ("until their next dispute event"); but its functions count on each dispute
-- having taken its share when it was recorded, which those had not always done:
-- * Two disputes of parts of a payment ($20 and $30 of a $50 pack, 55 credits
--   with its bonus), open at the deploy, had taken 33 credits, as the larger
--   alone (disputed_amount 3000). Both then lost: closing an open dispute as
--   lost changed only its status, so 33 stayed taken back, not 55 (22 left to
--   spend, disputed_amount still 3000).
-- * A dispute closed as lost before its created event came had taken nothing
--   (its created event was to take it). Recorded lost, its created event after
--   the deploy found it known, and a known dispute takes nothing: all 55
--   credits stayed. So too a dispute lost, then another won, before the deploy:
--   the win had given back everything, the lost one's share with it.
--
-- Now private.take_back_what_disputes_keep makes a payment's take whole:
-- disputed_amount becomes the sum of its disputes open or lost, and the
-- claw-back takes what of the refunded and disputed share is neither taken back
-- nor recorded as uncollected, within the credit limit as any claw-back does
-- (the rest uncollected and alerted). It never gives anything back (a dispute
-- won does, from its own draws first); what it draws names no dispute and is
-- not kept once no dispute of the payment is open; when it took something while
-- a dispute of the payment is open or lost, the account is flagged.
-- * It runs here, once, for every payment with a recorded dispute. That is the
--   fix: a payment whose events have all come (both disputes lost, or the
--   created event, between 20261129003500 and this migration) gets no later
--   event to put it right, and until one came its credits could be spent.
-- * It also runs on every dispute event that closes a dispute or finds it known
--   already (created again or after its close, closed again, closed won or
--   lost), after the event's own change. For a payment kept by today's
--   functions, and every one put right here, it finds nothing to take; it is
--   there so that what a payment's disputes keep is checked against all of them
--   whenever one changes, not only through each path's own arithmetic, whose
--   gaps these two were.
--
-- Lock order (as in 20261129003500): a payment intent's advisory lock, then its
-- payment's row, then the account. This migration takes the advisory locks of
-- every payment it puts right, then their rows, in ascending id, then their
-- accounts, in ascending id, before it changes any: every other function takes
-- one payment intent's lock, or an invoice's payment rows in ascending id, and
-- the account last.
--
-- Redefined whole: public.apply_stripe_dispute and
-- public.apply_stripe_dispute_closed (20261129003500); what changed: a dispute
-- already known (created again or after its close, closed again), the close of
-- an open dispute (lost or won) and a dispute closed as won before its created
-- event run private.take_back_what_disputes_keep for the payment (one closed as
-- lost before its created event already took its share, as before). Everything
-- else is as in that migration.

-- Makes what a payment's disputes keep taken back whole (see above): returns what
-- it took back or recorded as uncollected. The caller holds the payment intent's
-- advisory lock; this locks the payment's row, then (the claw-back) the account.
create function private.take_back_what_disputes_keep(p_payment_id bigint, p_reference text, p_dispute jsonb)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_before public.stripe_payments;
  v_after public.stripe_payments;
  v_disputed bigint;
  v_last_draw bigint;
  v_taken bigint;
begin
  select * into v_before from public.stripe_payments where id = p_payment_id for update;
  if not found then
    return 0;
  end if;
  v_disputed := private.disputed_of_payment(p_payment_id);
  if v_before.disputed_amount <> v_disputed then
    update public.stripe_payments set disputed_amount = v_disputed, updated_at = now() where id = p_payment_id;
  end if;
  v_last_draw := coalesce((select max(d.id) from private.dispute_draws d where d.payment_id = p_payment_id), 0);
  perform private.claw_back_stripe_payment(p_payment_id, 'dispute', p_reference);
  select * into v_after from public.stripe_payments where id = p_payment_id;
  v_taken := (v_after.debited + v_after.uncollected) - (v_before.debited + v_before.uncollected);
  if v_taken <= 0 then
    return 0;
  end if;
  if not exists (select 1 from private.stripe_disputes s where s.payment_id = p_payment_id and s.status = 'open') then
    -- No dispute of the payment is open: nothing of what this drew will be given back.
    delete from private.dispute_draws where payment_id = p_payment_id and id > v_last_draw;
  end if;
  if exists (select 1 from private.stripe_disputes s where s.payment_id = p_payment_id and s.status in ('open', 'lost')) then
    perform private.flag_dispute(v_after.account_id, v_after.payment_intent_id, p_dispute ->> 'reason',
      'A payment''s disputes had taken back less than they keep; the rest was taken back.',
      jsonb_build_object('payment_id', p_payment_id, 'taken', v_taken)
        || case when p_dispute is null then '{}'::jsonb
                else jsonb_build_object('dispute', p_dispute ->> 'id', 'amount', p_dispute ->> 'amount', 'reason', p_dispute ->> 'reason') end);
  end if;
  return v_taken;
end;
$$;
revoke all on function private.take_back_what_disputes_keep(bigint, text, jsonb) from public;

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
    -- before its created event, before 20261129003500, had taken nothing).
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
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
  v_own_terms jsonb;
  v_draw record;
  v_left bigint;
  v_part bigint;
  v_parts integer := 0;
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
    -- keep is taken back all the same.
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
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
      -- Won: it takes nothing; what the payment's other disputes keep is taken back all the same.
      perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
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
  if v_restored > 0 then
    -- The payment's own paid terms, for what was taken past its grants or never recorded:
    -- a month's allowance still ends with its month (a checkout's pack has no end).
    v_own_terms := jsonb_build_object('source', 'dispute_won', 'category', 'paid',
      'reference', coalesce(v_payment.checkout_session_id, v_payment.invoice_id),
      'expires_at', (select g.expires_at from public.credit_grants g
                      where g.account_id = v_payment.account_id and g.reference = coalesce(v_payment.checkout_session_id, v_payment.invoice_id)
                        and g.category = 'paid'
                      order by g.id limit 1));
    -- Given back part by part, each on the terms of the grant it came from: this dispute's
    -- draws first, then those of no dispute in particular, then other disputes', the last
    -- drawn first; what is given back of a draw is no longer recorded as drawn.
    v_left := v_restored;
    for v_draw in
      select d.id as draw_id, d.amount, g.id as grant_id, g.category, g.priority, g.expires_at, g.reference
        from private.dispute_draws d
        left join public.credit_grants g on g.id = d.grant_id
       where d.payment_id = v_payment.id
       order by case when d.dispute_id = v_dispute_id then 0 when d.dispute_id is null then 1 else 2 end, d.id desc
    loop
      exit when v_left = 0;
      v_part := least(v_left, v_draw.amount);
      v_parts := v_parts + 1;
      perform private.set_next_grant_terms(case when v_draw.grant_id is null then v_own_terms
        else jsonb_build_object('source', 'dispute_won', 'category', v_draw.category, 'priority', v_draw.priority,
                                'expires_at', v_draw.expires_at, 'reference', v_draw.reference) end);
      perform private.post_ledger(v_payment.account_id, v_part, 'dispute_won',
                                  v_reference || case when v_parts > 1 then ':' || v_parts else '' end,
                                  format('dispute of Stripe payment %s won', v_payment_intent));
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
                                  v_reference || case when v_parts > 1 then ':' || v_parts else '' end,
                                  format('dispute of Stripe payment %s won', v_payment_intent));
    end if;
  end if;
  -- Nothing was given back beyond what stays taken back; what the other disputes keep and was
  -- not taken (a dispute applied before 20261129003500) is taken back now.
  perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:' || p_event_id, p_dispute);
  -- What it drew and a refund or another dispute keeps taken back is theirs now; once no
  -- dispute of the payment is open, nothing of it will be given back.
  delete from private.dispute_draws where payment_id = v_payment.id and dispute_id = v_dispute_id;
  if not exists (select 1 from private.stripe_disputes s where s.payment_id = v_payment.id and s.status = 'open') then
    delete from private.dispute_draws where payment_id = v_payment.id;
  end if;
  -- The flag stays while another dispute of the payment is open, or was lost.
  if not exists (select 1 from private.stripe_disputes s where s.payment_id = v_payment.id and s.status in ('open', 'lost')) then
    update public.accounts set flagged_reason = null, updated_at = now()
     where id = v_payment.account_id and flagged_reason like format('payment %s disputed%%', v_payment_intent);
  end if;
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

-- The payments disputed so far, put right once: what their disputes keep is taken back.
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
    perform private.take_back_what_disputes_keep(v_payment.id, 'dispute:reconciled:' || v_payment.payment_intent_id, null);
  end loop;
end;
$$;

-- Each dispute of a payment counts on its own: a dispute won gives back what
-- that dispute took, never what another dispute of the payment took.
--
-- A payment could be disputed more than once (an inquiry closed, then a
-- chargeback; a dispute of another of its charges), and a dispute's events can
-- come again under a new event id or in any order, but a payment kept one
-- disputed_amount, with no record of which dispute it was for:
-- * A dispute lost, then a second dispute won (or an inquiry closed): the win
--   set disputed_amount to 0 and gave back everything disputes had taken, the
--   first's included, lost for good ($50 pack: 55 credits back, not 0).
-- * Two disputes of parts of one payment ($20 and $30 of $50) counted as the
--   larger alone (`greatest`): 33 of 55 credits taken, not 55; the $20 won then
--   gave back all 33, the $30 still open.
-- * A dispute's closed event delivered again under a new event id after a
--   second dispute opened gave back what the second took (55 credits, when the
--   first had taken nothing), or, when the first had given something back, hit
--   the ledger's unique reference and was answered 400, over and over.
-- * A dispute's created event arriving after its close (or again, under a new
--   event id, after it was won) took the credits back for good; a dispute closed
--   as lost before its created event took nothing until that came.
--
-- Now each dispute is a row of private.stripe_disputes (its Stripe id, its
-- payment, its amount, open, won or lost), and a payment's disputed_amount is
-- the sum of its disputes open or lost: what disputes keep taken back.
-- * created: a new dispute is recorded open and its share taken back; a dispute
--   already recorded (open, or closed before this event came) changes nothing.
-- * closed, of a dispute open: lost, it stays counted; won (or warning_closed),
--   it no longer counts, and what is given back is what is taken back beyond
--   the refunded share and the other disputes' (open or lost), less what expired.
-- * closed, of a dispute not recorded yet (its created event still to come): it
--   is recorded as closed; lost, its share is taken back now; won, nothing is.
-- * closed, of a dispute already closed: nothing changes ('already_won',
--   'already_lost'), and the answer is 2xx.
-- * The account's dispute flag is cleared only when none of the payment's
--   disputes is open or lost.
-- * What a dispute drew from each grant (private.dispute_draws) names the
--   dispute: a dispute won gives back its own draws first (then draws that name
--   no dispute, then other disputes', the last drawn first), and deletes what it
--   gave back; a dispute lost deletes its own; when no dispute of the payment is
--   open any more, what is left (a refund's, or lost) is deleted, as before.
-- * A dispute object without an id is refused (22023, answered 400): Stripe's
--   always have one, and without it a close could not be told from another
--   dispute's.
--
-- Disputes applied before this migration are recorded from the events stored
-- (charge.dispute.created, then charge.dispute.closed), so that one still open
-- closes as it would have, and one closed stays closed. disputed_amount of
-- those payments is left as it was until their next dispute event.
--
-- Lock order: stripe_disputes and dispute_draws rows are only read and written
-- under their payment intent's advisory lock, after the payment's row and
-- before the account's; they lock nothing else.
--
-- Redefined whole: public.apply_stripe_dispute (20261127000300); what changed:
-- the dispute is recorded, disputed_amount is the sum of the payment's disputes
-- open or lost (it was the largest amount seen), a dispute already recorded
-- takes nothing, and its draws name it. public.apply_stripe_dispute_closed
-- (20261129003000); what changed: the dispute's own row decides (already closed,
-- not recorded yet, open), what is given back leaves the other disputes'
-- share taken back, draws are given back and deleted per dispute, and the flag
-- stays while another dispute is open or lost. Both refuse a dispute without
-- an id. Everything else is as in those migrations.

create table private.stripe_disputes (
  -- Stripe's dispute id (a legacy dispute event without one: that event's id).
  id text primary key,
  payment_id bigint not null references public.stripe_payments (id),
  amount bigint not null,
  status text not null,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint stripe_disputes_status check (status in ('open', 'won', 'lost')),
  constraint stripe_disputes_amount check (amount >= 0)
);
comment on table private.stripe_disputes is
  'Each dispute of a Stripe payment, open, won (or an inquiry closed) or lost; a payment''s disputed_amount is the sum of those open or lost (private: never exposed through PostgREST).';
create index stripe_disputes_payment_id_idx on private.stripe_disputes (payment_id);
revoke all on private.stripe_disputes from public, anon, authenticated;

alter table private.dispute_draws add column dispute_id text;
comment on column private.dispute_draws.dispute_id is
  'The dispute whose claw-back drew it; null for a claw-back of every dispute at once (a checkout or invoice payment credited after its disputes came).';

comment on column public.stripe_payments.disputed_amount is
  'What the payment''s disputes open or lost dispute, in the currency''s minor unit: the sum of their amounts.';

-- The disputes applied so far, from the events stored: opened, then closed.
insert into private.stripe_disputes (id, payment_id, amount, status, created_at)
select distinct on (coalesce(e.payload ->> 'id', e.id)) coalesce(e.payload ->> 'id', e.id), p.id,
       greatest(0, coalesce((e.payload ->> 'amount')::bigint, 0)), 'open', e.received_at
  from public.stripe_events e
  join public.stripe_payments p on p.payment_intent_id = e.business_key
 where e.type = 'charge.dispute.created'
 order by coalesce(e.payload ->> 'id', e.id), e.received_at;
insert into private.stripe_disputes (id, payment_id, amount, status, created_at)
select distinct on (coalesce(e.payload ->> 'id', e.id)) coalesce(e.payload ->> 'id', e.id), p.id,
       greatest(0, coalesce((e.payload ->> 'amount')::bigint, 0)),
       case when e.payload ->> 'status' = 'lost' then 'lost' else 'won' end, e.received_at
  from public.stripe_events e
  join public.stripe_payments p on p.payment_intent_id = e.business_key
 where e.type = 'charge.dispute.closed' and e.payload ->> 'status' in ('won', 'warning_closed', 'lost')
 order by coalesce(e.payload ->> 'id', e.id), e.received_at
on conflict (id) do update set status = excluded.status, updated_at = now();

-- What the payment's disputes open or lost dispute.
create function private.disputed_of_payment(p_payment_id bigint)
returns bigint
language sql stable
set search_path = ''
as $$
  select coalesce(sum(d.amount), 0)::bigint from private.stripe_disputes d
   where d.payment_id = p_payment_id and d.status in ('open', 'lost');
$$;
revoke all on function private.disputed_of_payment(bigint) from public;

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
    -- Its created event again under another id, or its close came first: nothing more to take.
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
    -- Closed already: its closed event again, under another id.
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
    end if;
    return private.finish_stripe_event(p_event_id, 'dispute_' || v_closed, v_payment.account_id);
  end if;

  update private.stripe_disputes set status = v_closed, updated_at = now() where id = v_dispute_id;
  if v_closed = 'lost' then
    -- The credits stay taken back; what it drew is never given back.
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

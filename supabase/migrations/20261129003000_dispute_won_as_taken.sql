-- A dispute won gives back what the dispute took, each part on the terms of
-- the grant it was taken from.
--
-- apply_stripe_dispute_closed (20261129002900) gave back what a dispute had
-- taken as one paid grant, on the terms of the payment's first paid grant,
-- whatever the dispute had taken:
-- * A pack's bonus (a promotional grant, drawn first, with its own end if it
--   has one) came back as paid credits that never end: a $50 pack of 50
--   credits and a 5-credit bonus, disputed and won, was 55 paid credits.
-- * What the dispute took from the customer's other credits (the payment's own
--   being partly spent) came back on the payment's terms: a month's allowance,
--   5 of its 20 credits spent, disputed and won, came back as 20 credits
--   ending with the month, 5 of them taken from credits bought apart that
--   never end; at the month's end they expired with it.
-- * The grant given back named the dispute, not the payment: a later refund
--   did not take back from it first, and what of it expired was not counted
--   as the payment's (private.expired_of_payment), so a refund of that month
--   took the expired part again from the customer's other credits.
--
-- Now the dispute's claw-back records what it drew from each grant, in the
-- order it drew (private.dispute_draws; what no grant covered, below zero, is
-- a part without a grant), and a dispute won gives back, part by part, the
-- last drawn first: each part a grant of the category, priority, end and
-- reference of the grant it was taken from (source 'dispute_won'); a part
-- without a grant on the terms of the payment's own paid grant, as before.
-- What the dispute won gives back is worked out as before (what stays taken
-- back is the refunded share, less what expired, less what was never
-- collected): when a refund keeps part of it taken back, that is the part
-- drawn first (a pack's bonus before its paid credits, as a refund takes it).
-- What is given back beyond what was recorded (a dispute taken back before
-- this migration) comes back on the payment's own paid terms.
--
-- One ledger row per part: 'dispute_won:<dispute>' is the first, then
-- 'dispute_won:<dispute>:<n>' (credit_ledger's (reason, reference) is unique).
--
-- Lock order: dispute_draws rows are only written under their payment's row
-- lock and the account's (claw_back_stripe_payment) or read and deleted under
-- the payment's (apply_stripe_dispute_closed); they lock nothing else.
--
-- Redefined whole: private.claw_back_stripe_payment (20261129002600); what
-- changed: a dispute's draws are recorded. public.apply_stripe_dispute_closed
-- (20261129002900); what changed: the credit given back is posted part by part
-- with the terms of the grant each part was taken from, and the payment's
-- recorded draws are cleared. Everything else is as in those migrations.

create table private.dispute_draws (
  id bigint generated always as identity primary key,
  payment_id bigint not null references public.stripe_payments (id),
  -- null: what the claw-back took past the account's grants (below zero).
  grant_id bigint references public.credit_grants (id),
  amount bigint not null,
  created_at timestamptz not null default now(),
  constraint dispute_draws_amount check (amount > 0)
);
comment on table private.dispute_draws is
  'What a dispute''s claw-back took from each grant, in the order it drew; given back by a dispute won (private: never exposed through PostgREST).';
create index dispute_draws_payment_id_idx on private.dispute_draws (payment_id);
revoke all on private.dispute_draws from public, anon, authenticated;

create or replace function private.claw_back_stripe_payment(p_payment_id bigint, p_reason text, p_reference text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_payment public.stripe_payments;
  v_account public.accounts;
  v_target bigint;
  v_owed bigint;
  v_debit bigint;
  v_expired bigint;
  v_first text;
  v_before jsonb;
  v_draw record;
  v_drawn bigint := 0;
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if v_payment.status <> 'credited' or coalesce(v_payment.amount_total, 0) <= 0 then
    return;
  end if;
  -- What of the payment's credits expired unused is gone already: it counts as taken back.
  v_expired := private.expired_of_payment(v_payment);
  v_target := greatest(0, floor(v_payment.credits::numeric
                                * least(v_payment.amount_total, v_payment.refunded_amount + v_payment.disputed_amount)
                                / v_payment.amount_total)::bigint - v_expired);
  v_owed := v_target - v_payment.debited - v_payment.uncollected;
  if v_owed <= 0 then
    return;
  end if;
  select * into v_account from public.accounts where id = v_payment.account_id for no key update;
  v_debit := least(v_owed, greatest(0, v_account.balance - v_account.held + v_account.credit_limit));
  if v_debit > 0 then
    v_first := coalesce(v_payment.checkout_session_id, v_payment.invoice_id, '');
    if p_reason = 'dispute' then
      -- What each grant has left before the draw (under the account's lock, nothing else draws).
      select coalesce(jsonb_object_agg(g.id::text, g.remaining), '{}') into v_before
        from public.credit_grants g
       where g.account_id = v_payment.account_id and not g.used_up and g.expired_at is null;
    end if;
    perform set_config('tollgate.draw_first', v_first, true);
    perform private.post_ledger(v_payment.account_id, -v_debit, p_reason, p_reference,
                                format('%s of Stripe payment %s', p_reason, coalesce(v_payment.payment_intent_id, v_payment.checkout_session_id)));
    if p_reason = 'dispute' then
      -- What the dispute took from each grant, in the order private.draw_from_grants drew it,
      -- then what no grant covered: a dispute won gives it back on the same terms.
      for v_draw in
        select g.id, (v_before ->> g.id::text)::bigint - g.remaining as amount
          from public.credit_grants g
         where g.account_id = v_payment.account_id and v_before ? g.id::text
           and g.remaining < (v_before ->> g.id::text)::bigint
         order by coalesce(g.reference = v_first, false) desc,
                  g.category = 'promotional' desc, g.priority desc, g.expires_at nulls last, g.id
      loop
        insert into private.dispute_draws (payment_id, grant_id, amount) values (p_payment_id, v_draw.id, v_draw.amount);
        v_drawn := v_drawn + v_draw.amount;
      end loop;
      if v_debit > v_drawn then
        insert into private.dispute_draws (payment_id, grant_id, amount) values (p_payment_id, null, v_debit - v_drawn);
      end if;
    end if;
  end if;
  update public.stripe_payments
     set debited = debited + v_debit, uncollected = uncollected + (v_owed - v_debit), updated_at = now()
   where id = p_payment_id;
  if v_owed > v_debit then
    perform private.raise_alert(v_payment.account_id, 'clawback_shortfall',
      format('A %s could not be taken back in full: %s credits were already spent.', p_reason, v_owed - v_debit),
      jsonb_build_object('payment_id', p_payment_id, 'owed', v_owed, 'debited', v_debit));
  end if;
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
  v_reference text := 'dispute_won:' || coalesce(p_dispute ->> 'id', p_event_id);
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
begin
  if v_payment_intent is null then
    raise exception 'the dispute has no payment intent' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  if not private.record_stripe_event(p_event_id, 'charge.dispute.closed', v_payment_intent, p_dispute) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  select * into v_payment from public.stripe_payments where payment_intent_id = v_payment_intent for update;
  if not found or v_outcome not in ('won', 'warning_closed') then
    return private.finish_stripe_event(p_event_id, case when v_outcome = 'lost' then 'dispute_lost' else 'recorded' end,
                                       v_payment.account_id);
  end if;

  -- What should stay taken back now is the refunded share alone, less what expired of
  -- the payment's credits, as the claw-back counts it.
  v_target := case when coalesce(v_payment.amount_total, 0) > 0
                   then greatest(0, floor(v_payment.credits::numeric * least(v_payment.amount_total, v_payment.refunded_amount)
                                          / v_payment.amount_total)::bigint - private.expired_of_payment(v_payment))
                   else 0 end;
  v_excess := greatest(0, v_payment.debited + v_payment.uncollected - v_target);
  v_forgiven := least(v_excess, v_payment.uncollected);
  v_restored := v_excess - v_forgiven;
  update public.stripe_payments
     set disputed_amount = 0, uncollected = uncollected - v_forgiven, debited = debited - v_restored, updated_at = now()
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
    -- Given back part by part, the last drawn first, each on the terms of the grant it came
    -- from: a pack's bonus stays a bonus, with its end; what came from other credits, theirs.
    v_left := v_restored;
    for v_draw in
      select d.amount, g.id as grant_id, g.category, g.priority, g.expires_at, g.reference
        from private.dispute_draws d
        left join public.credit_grants g on g.id = d.grant_id
       where d.payment_id = v_payment.id
       order by d.id desc
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
  -- The dispute is over: what it drew and a refund keeps taken back is the refund's now.
  delete from private.dispute_draws where payment_id = v_payment.id;
  update public.accounts set flagged_reason = null, updated_at = now()
   where id = v_payment.account_id and flagged_reason like format('payment %s disputed%%', v_payment_intent);
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

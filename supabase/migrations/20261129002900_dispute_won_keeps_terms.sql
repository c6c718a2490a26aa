-- Credits given back for a dispute won keep the terms of the credits taken.
--
-- apply_stripe_dispute_closed (20261129002600) gave back what a dispute had
-- taken as paid credits that never expire, whatever they had been: a month's
-- allowance, which ends with its month, outlived it. Now what is given back
-- takes the end of the payment's own paid grant (none for a checkout's pack,
-- as before; the allowance's period end for an invoice's).
--
-- Redefined whole; what changed: the grant terms set before the credit.
-- Everything else is as in 20261129002600.

create or replace function public.apply_stripe_dispute_closed(p_event_id text, p_dispute jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment_intent text := p_dispute ->> 'payment_intent';
  v_outcome text := p_dispute ->> 'status';
  v_payment public.stripe_payments;
  v_target bigint;
  v_excess bigint;
  v_forgiven bigint;
  v_restored bigint;
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
    -- Given back on the terms of the payment's own paid credits: a month's allowance
    -- still ends with its month (a checkout's pack has no end, as before).
    perform private.set_next_grant_terms(jsonb_build_object('source', 'dispute_won', 'category', 'paid', 'expires_at',
      (select g.expires_at from public.credit_grants g
        where g.account_id = v_payment.account_id and g.reference = coalesce(v_payment.checkout_session_id, v_payment.invoice_id)
          and g.category = 'paid'
        order by g.id limit 1)));
    perform private.post_ledger(v_payment.account_id, v_restored, 'dispute_won', 'dispute_won:' || coalesce(p_dispute ->> 'id', p_event_id),
                                format('dispute of Stripe payment %s won', v_payment_intent));
  end if;
  update public.accounts set flagged_reason = null, updated_at = now()
   where id = v_payment.account_id and flagged_reason like format('payment %s disputed%%', v_payment_intent);
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

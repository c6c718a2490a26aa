-- A refund or dispute never takes back credits that already expired.
--
-- claw_back_stripe_payment (20261129001400) took back the refunded share of
-- what a payment credited, whatever had become of it. When part of it had
-- expired unused (a month's allowance at the period's end, an expiring
-- bonus), the expiry had already taken that part off the balance, and the
-- refund took it again from the customer's other credits: 20 credits of
-- allowance, 5 spent and 15 expired, refunded in full, took 20 from credits
-- the customer had bought apart.
--
-- Now what expired of the payment's own grants (its checkout's, or its
-- invoice's) counts as taken back already: the claw-back takes the refunded
-- share less that. A dispute won still gives back what the claw-back took.
--
-- Redefined whole; what changed: the expired part. Everything else is as in
-- 20261129001400.

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
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if v_payment.status <> 'credited' or coalesce(v_payment.amount_total, 0) <= 0 then
    return;
  end if;
  -- What of the payment's credits expired unused is gone already: it counts as taken back.
  select coalesce(sum(-l.amount), 0) into v_expired
    from public.credit_grants g
    join public.credit_ledger l on l.reason = 'expiry' and (l.reference = 'expiry:' || g.id or l.reference like 'expiry:' || g.id || ':%')
   where g.account_id = v_payment.account_id
     and g.reference = coalesce(v_payment.checkout_session_id, v_payment.invoice_id);
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
    perform set_config('tollgate.draw_first', coalesce(v_payment.checkout_session_id, v_payment.invoice_id, ''), true);
    perform private.post_ledger(v_payment.account_id, -v_debit, p_reason, p_reference,
                                format('%s of Stripe payment %s', p_reason, coalesce(v_payment.payment_intent_id, v_payment.checkout_session_id)));
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

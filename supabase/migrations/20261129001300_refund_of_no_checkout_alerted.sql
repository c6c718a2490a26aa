-- A refund that matches no credited checkout is told to the operator.
--
-- Refunds are applied to the checkout they belong to, by payment intent. A
-- refund of a subscription invoice's payment matches none: since Stripe's API
-- version 2025-03-31 an invoice no longer names its payment intent, and
-- nothing here links the two yet. Such a refund was recorded on a payment row
-- of its own and took nothing back, without a word (a dispute of one raised
-- its alert already). Now it raises `refund_unmatched`, once per payment
-- intent: the operator takes the credits back by hand. A refund that came
-- before its checkout raises it too, and is still applied when the checkout
-- arrives.
--
-- Redefined whole; what changed: the alert at the end. Everything else is as
-- in 20261127000300.

create or replace function public.apply_stripe_refund(p_event_id text, p_charge jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment_intent text := p_charge ->> 'payment_intent';
  v_refunded bigint := coalesce((p_charge ->> 'amount_refunded')::bigint, 0);
  v_payment public.stripe_payments;
begin
  if v_payment_intent is null then
    raise exception 'the charge has no payment intent' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  if not private.record_stripe_event(p_event_id, 'charge.refunded', v_payment_intent, p_charge) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  insert into public.stripe_payments (payment_intent_id, amount_total, currency, refunded_amount)
  values (v_payment_intent, (p_charge ->> 'amount')::bigint, p_charge ->> 'currency', v_refunded)
  on conflict (payment_intent_id) do update
    -- amount_refunded is cumulative: a late, smaller figure never lowers it.
    set refunded_amount = greatest(public.stripe_payments.refunded_amount, excluded.refunded_amount), updated_at = now()
  returning * into v_payment;
  perform private.claw_back_stripe_payment(v_payment.id, 'refund', 'refund:' || p_event_id);
  select * into v_payment from public.stripe_payments where id = v_payment.id;
  if v_payment.status <> 'credited' then
    perform private.raise_alert_once(v_payment.account_id, 'refund_unmatched',
      'A Stripe refund matches no credited checkout. If it refunds a subscription invoice, its credits were not taken back: take them back by hand. If its checkout arrives later, it is applied then.',
      jsonb_build_object('payment_intent', v_payment_intent, 'charge', p_charge ->> 'id', 'amount_refunded', v_refunded,
                         'currency', p_charge ->> 'currency'),
      'refund_unmatched:' || v_payment_intent);
  end if;
  return private.finish_stripe_event(p_event_id, case when v_payment.status = 'credited' then 'refunded' else 'recorded' end,
                                     v_payment.account_id);
end;
$$;

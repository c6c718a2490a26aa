-- Checkout sessions as Stripe settles them: paid first, then fulfilled.
--
-- apply_stripe_checkout (20261127000300) had two ways to act on a payment as
-- it was not:
-- * A subscription checkout put the account on the plan whatever the payment
--   did: `checkout.session.async_payment_failed`, or `completed` with
--   payment_status `unpaid`, answered `subscribed` and set accounts.plan, with
--   its rate limits and its pricing. Stripe's payment_status is what says
--   whether to fulfil. Now an unpaid one waits (`pending`) for
--   async_payment_succeeded, and a failed one is `failed`.
-- * A one-time payment by a delayed method (a bank debit) was matched against
--   its pack twice: when the checkout completed, and again, by the pack's
--   Payment Link as it then was, when the payment cleared days later. A pack
--   given a new link (a new price) or taken off sale meanwhile left the
--   customer paid and not credited (`unmatched`). Now the pack, quantity and
--   account matched at completion are the ones credited.
-- And a second subscription checkout for an account that had one moved the
-- account to the new Stripe customer silently, leaving the first one's
-- invoices matched to nothing: it now raises `subscription_replaced`.
--
-- Redefined whole; everything else is as in 20261127000300.

create or replace function public.apply_stripe_checkout(p_event_id text, p_event_type text, p_session jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_session_id text := p_session ->> 'id';
  v_payment_intent text := p_session ->> 'payment_intent';
  v_link text := p_session ->> 'payment_link';
  v_reference text := p_session ->> 'client_reference_id';
  v_amount bigint := (p_session ->> 'amount_total')::bigint;
  v_subtotal bigint := coalesce((p_session ->> 'amount_subtotal')::bigint, (p_session ->> 'amount_total')::bigint);
  v_discount bigint := coalesce((p_session #>> '{total_details,amount_discount}')::bigint, 0);
  v_tax bigint := coalesce((p_session #>> '{total_details,amount_tax}')::bigint, 0);
  v_currency text := p_session ->> 'currency';
  v_quantity bigint;
  v_account public.accounts;
  v_pack public.credit_packs;
  v_plan public.plans;
  v_payment public.stripe_payments;
  v_problem text;
  v_invoice text;
begin
  if p_event_type not in ('checkout.session.completed', 'checkout.session.async_payment_succeeded',
                          'checkout.session.async_payment_failed') then
    raise exception 'not a checkout event: %', p_event_type using errcode = '22023';
  end if;
  if v_session_id is null then
    raise exception 'the checkout session has no id' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(v_session_id, v_payment_intent);
  if not private.record_stripe_event(p_event_id, p_event_type, v_session_id, p_session) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;

  if v_reference ~ '^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$' then
    select * into v_account from public.accounts where id = v_reference::uuid;
  end if;

  -- Subscriptions: remember the customer; credits come with each paid invoice.
  if p_session ->> 'mode' = 'subscription' then
    -- Serialized with invoice.paid for the same customer, so an invoice that
    -- arrives at the same moment is either seen here or sees this account.
    perform pg_advisory_xact_lock(hashtext('stripe_customer:' || coalesce(p_session ->> 'customer', '')));
    select * into v_plan from public.plans where stripe_payment_link_id = v_link and active;
    if v_account.id is null or v_plan.id is null or p_session ->> 'customer' is null then
      perform private.raise_alert(v_account.id, 'unmatched_payment', 'A subscription checkout matches no account or plan.',
        jsonb_build_object('session', v_session_id, 'client_reference_id', v_reference, 'payment_link', v_link));
      return private.finish_stripe_event(p_event_id, 'unmatched', v_account.id);
    end if;
    -- Not paid: a bank debit is subscribed when it clears (async_payment_succeeded); a
    -- failed one never is. The plan's limits and pricing come with payment, not before.
    if p_event_type = 'checkout.session.async_payment_failed' then
      return private.finish_stripe_event(p_event_id, 'failed', v_account.id);
    end if;
    if coalesce(p_session ->> 'payment_status', '') not in ('paid', 'no_payment_required') then
      return private.finish_stripe_event(p_event_id, 'pending', v_account.id);
    end if;
    -- A second subscription takes the account's place of the first, whose invoices then
    -- match no account: said, so the operator can end the one no longer wanted.
    if v_account.stripe_customer_id is distinct from p_session ->> 'customer' and v_account.stripe_customer_id is not null then
      perform private.raise_alert(v_account.id, 'subscription_replaced',
        'The account subscribed again: invoices of its earlier Stripe customer are no longer credited to it.',
        jsonb_build_object('session', v_session_id, 'previous_customer', v_account.stripe_customer_id,
                           'customer', p_session ->> 'customer', 'plan', v_plan.id));
    end if;
    update public.accounts set stripe_customer_id = p_session ->> 'customer', plan = v_plan.id, updated_at = now()
     where id = v_account.id;
    for v_invoice in select id from public.stripe_invoices where customer_id = p_session ->> 'customer' and status = 'pending' loop
      perform private.credit_stripe_invoice(v_invoice);
    end loop;
    return private.finish_stripe_event(p_event_id, 'subscribed', v_account.id);
  end if;

  -- One payment row per checkout; it may already exist from an earlier event
  -- of the same checkout, or from a refund or dispute that arrived first. The
  -- locks above make this read-then-insert safe.
  select * into v_payment from public.stripe_payments
   where checkout_session_id = v_session_id or (v_payment_intent is not null and payment_intent_id = v_payment_intent)
   order by checkout_session_id nulls last
   limit 1
   for update;
  if not found then
    insert into public.stripe_payments (checkout_session_id, payment_intent_id, amount_total, currency)
    values (v_session_id, v_payment_intent, v_amount, v_currency)
    returning * into v_payment;
  else
    update public.stripe_payments
       set checkout_session_id = v_session_id, payment_intent_id = coalesce(payment_intent_id, v_payment_intent),
           amount_total = v_amount, currency = v_currency, updated_at = now()
     where id = v_payment.id
    returning * into v_payment;
  end if;
  update public.stripe_payments
     set amount_subtotal = v_subtotal, amount_discount = v_discount, amount_tax = v_tax
   where id = v_payment.id;

  if v_payment.status in ('credited', 'unmatched', 'failed') then
    return private.finish_stripe_event(p_event_id, 'already_' || v_payment.status, v_payment.account_id);
  end if;

  if v_payment.credit_pack_id is not null and v_payment.quantity is not null and v_payment.account_id is not null then
    -- Matched when the checkout completed, its payment still clearing (a bank debit, days):
    -- credited as it was bought, whatever became of the pack's link or sale since.
    select * into v_pack from public.credit_packs where id = v_payment.credit_pack_id;
    select * into v_account from public.accounts where id = v_payment.account_id;
    v_quantity := v_payment.quantity;
  else
    select * into v_pack from public.credit_packs where stripe_payment_link_id = v_link;
    if v_pack.id is not null and v_subtotal > 0 and v_subtotal % v_pack.unit_amount = 0 then
      v_quantity := v_subtotal / v_pack.unit_amount;
    end if;
  end if;
  v_problem := case
    when v_account.id is null then 'no account matches client_reference_id'
    when v_pack.id is null then 'no credit pack matches the payment link'
    when not v_pack.active and v_payment.quantity is null then 'the credit pack is no longer sold'
    when v_currency is distinct from v_pack.currency then format('paid in %s, the pack is sold in %s', v_currency, v_pack.currency)
    when v_quantity is null
      then format('a subtotal of %s %s is not a whole number of packs at %s', v_subtotal, v_currency, v_pack.unit_amount)
  end;
  if v_problem is not null then
    update public.stripe_payments
       set status = 'unmatched', problem = v_problem, account_id = v_account.id, credit_pack_id = v_pack.id, updated_at = now()
     where id = v_payment.id;
    perform private.raise_alert(v_account.id, 'unmatched_payment', 'A Stripe payment was not credited: ' || v_problem || '.',
      jsonb_build_object('session', v_session_id, 'client_reference_id', v_reference, 'payment_link', v_link,
                         'amount_total', v_amount, 'amount_subtotal', v_subtotal, 'currency', v_currency));
    return private.finish_stripe_event(p_event_id, 'unmatched', v_account.id);
  end if;

  update public.stripe_payments set account_id = v_account.id, credit_pack_id = v_pack.id, quantity = v_quantity, updated_at = now()
   where id = v_payment.id;

  if p_event_type = 'checkout.session.async_payment_failed' then
    update public.stripe_payments set status = 'failed', updated_at = now() where id = v_payment.id;
    return private.finish_stripe_event(p_event_id, 'failed', v_account.id);
  end if;
  if coalesce(p_session ->> 'payment_status', '') not in ('paid', 'no_payment_required') then
    -- Delayed methods (bank debits): credited on async_payment_succeeded.
    return private.finish_stripe_event(p_event_id, 'pending', v_account.id);
  end if;

  perform private.post_ledger(v_account.id, (v_pack.credits + v_pack.bonus_credits) * v_quantity, 'purchase', v_session_id,
                              case when v_quantity = 1 then format('%s credit pack', v_pack.name)
                                   else format('%s × %s credit pack', v_quantity, v_pack.name) end);
  update public.stripe_payments
     set status = 'credited', credits = (v_pack.credits + v_pack.bonus_credits) * v_quantity, updated_at = now()
   where id = v_payment.id
  returning * into v_payment;
  -- A refund or dispute that arrived before this checkout takes effect now.
  if v_payment.disputed_amount > 0 then
    perform private.claw_back_stripe_payment(v_payment.id, 'dispute', 'dispute:' || p_event_id);
    perform private.flag_dispute(v_account.id, v_payment.payment_intent_id, null,
      'A disputed payment was credited late; its credits were taken back.', jsonb_build_object('session', v_session_id));
  else
    perform private.claw_back_stripe_payment(v_payment.id, 'refund', 'refund:' || p_event_id);
  end if;
  return private.finish_stripe_event(p_event_id, 'credited', v_account.id);
end;
$$;

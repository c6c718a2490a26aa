-- Stripe as it really delivers: events of one payment at the same moment, Payment
-- Links with tax, promotion codes and quantities, disputes that close, plans
-- that change or end, and invoices the operator may not want to credit.
--
-- Locks (level 1 of the order in *_one_lock_order.sql): an advisory lock per
-- checkout session, then per payment intent, then per customer, always in that
-- order; then the payment or invoice row; then the account.

alter table public.stripe_payments
  add column quantity integer,
  add column amount_subtotal bigint,
  add column amount_discount bigint,
  add column amount_tax bigint;
comment on column public.stripe_payments.quantity is 'Packs bought: the subtotal (before discounts and tax) over the pack''s price.';
comment on column public.stripe_payments.amount_discount is 'Promotion codes and coupons, in the currency''s minor unit: kept for reconciliation.';
comment on column public.stripe_payments.amount_tax is 'Tax collected by Stripe Tax, in the currency''s minor unit: kept for reconciliation.';

alter table public.billing_settings
  add column credit_zero_amount_invoices boolean not null default false,
  add column accept_legacy_invoice_shape boolean not null default false;
comment on column public.billing_settings.credit_zero_amount_invoices is
  'Credit a plan''s monthly credits for a $0 invoice (a trial, a 100% coupon). Off: recorded, not credited, alerted.';
comment on column public.billing_settings.accept_legacy_invoice_shape is
  'Take invoices in the shape of API versions before 2025 (top-level subscription, lines[].price). Off: recorded, not credited, alerted.';

alter table public.stripe_invoices drop constraint stripe_invoices_status;
alter table public.stripe_invoices add constraint stripe_invoices_status check (status in ('pending', 'credited', 'unmatched', 'not_credited'));
alter table public.stripe_invoices add column problem text;

-- One payment at a time: distinct events of one checkout session, or of one
-- payment intent, delivered together wait for each other instead of racing to
-- create its row.
create function private.lock_stripe_payment(p_session_id text, p_payment_intent text)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_session_id is not null then
    perform pg_advisory_xact_lock(hashtextextended('stripe_session:' || p_session_id, 0));
  end if;
  if p_payment_intent is not null then
    perform pg_advisory_xact_lock(hashtextextended('stripe_payment:' || p_payment_intent, 0));
  end if;
end;
$$;
revoke all on function private.lock_stripe_payment(text, text) from public;

-- Checkout sessions -------------------------------------------------------------
-- Redefined whole: takes the payment's locks first (concurrent events of one
-- session all answer 2xx and credit once); matches the pack by its Payment Link
-- and the quantity (the subtotal before discounts and tax over the pack's
-- price), credits (credits + bonus) × quantity, records discount and tax; a
-- checkout that needs no payment (a 100% promotion code) is credited too.

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

  select * into v_pack from public.credit_packs where stripe_payment_link_id = v_link;
  if v_pack.id is not null and v_subtotal > 0 and v_subtotal % v_pack.unit_amount = 0 then
    v_quantity := v_subtotal / v_pack.unit_amount;
  end if;
  v_problem := case
    when v_account.id is null then 'no account matches client_reference_id'
    when v_pack.id is null then 'no credit pack matches the payment link'
    when not v_pack.active then 'the credit pack is no longer sold'
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

-- charge.refunded, charge.dispute.created -----------------------------------------
-- Redefined whole: the payment intent's lock first, as the checkout takes it.

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
  return private.finish_stripe_event(p_event_id, case when v_payment.status = 'credited' then 'refunded' else 'recorded' end,
                                     v_payment.account_id);
end;
$$;

create or replace function public.apply_stripe_dispute(p_event_id text, p_dispute jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_payment_intent text := p_dispute ->> 'payment_intent';
  v_payment public.stripe_payments;
begin
  if v_payment_intent is null then
    raise exception 'the dispute has no payment intent' using errcode = '22023';
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  if not private.record_stripe_event(p_event_id, 'charge.dispute.created', v_payment_intent, p_dispute) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  insert into public.stripe_payments (payment_intent_id, currency, disputed_amount)
  values (v_payment_intent, p_dispute ->> 'currency', (p_dispute ->> 'amount')::bigint)
  on conflict (payment_intent_id) do update
    set disputed_amount = greatest(public.stripe_payments.disputed_amount, excluded.disputed_amount), updated_at = now()
  returning * into v_payment;
  perform private.claw_back_stripe_payment(v_payment.id, 'dispute', 'dispute:' || p_event_id);
  perform private.flag_dispute(v_payment.account_id, v_payment_intent, p_dispute ->> 'reason',
    'A payment was disputed; its credits were taken back.',
    jsonb_build_object('dispute', p_dispute ->> 'id', 'amount', p_dispute ->> 'amount', 'reason', p_dispute ->> 'reason'));
  return private.finish_stripe_event(p_event_id, 'disputed', v_payment.account_id);
end;
$$;

-- charge.dispute.closed ------------------------------------------------------------
-- Won (or an inquiry closed without a chargeback): the credits taken back for
-- the dispute are given back, as far as they were taken (what could not be
-- taken back is simply no longer owed), and the account's flag is cleared.
-- Lost: the credits stay taken back and the flag stays for the operator.

create function public.apply_stripe_dispute_closed(p_event_id text, p_dispute jsonb)
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

  -- What should stay taken back now is the refunded share alone.
  v_target := case when coalesce(v_payment.amount_total, 0) > 0
                   then floor(v_payment.credits::numeric * least(v_payment.amount_total, v_payment.refunded_amount)
                              / v_payment.amount_total)::bigint
                   else 0 end;
  v_excess := greatest(0, v_payment.debited + v_payment.uncollected - v_target);
  v_forgiven := least(v_excess, v_payment.uncollected);
  v_restored := v_excess - v_forgiven;
  update public.stripe_payments
     set disputed_amount = 0, uncollected = uncollected - v_forgiven, debited = debited - v_restored, updated_at = now()
   where id = v_payment.id;
  if v_restored > 0 then
    perform private.post_ledger(v_payment.account_id, v_restored, 'dispute_won', 'dispute_won:' || coalesce(p_dispute ->> 'id', p_event_id),
                                format('dispute of Stripe payment %s won', v_payment_intent));
  end if;
  update public.accounts set flagged_reason = null, updated_at = now()
   where id = v_payment.account_id and flagged_reason like format('payment %s disputed%%', v_payment_intent);
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

-- customer.subscription.updated / deleted --------------------------------------------
-- The account's plan follows its subscription: a new price moves it to that
-- price's plan; a subscription that ends (deleted, which Stripe sends at the end
-- of the period for a cancellation, or updated to canceled, unpaid or
-- incomplete_expired) puts it back on the free plan. A cancellation scheduled
-- for the period's end changes nothing until then.

create function public.apply_stripe_subscription(p_event_id text, p_event_type text, p_subscription jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_customer text := p_subscription ->> 'customer';
  v_status text := p_subscription ->> 'status';
  v_price text := p_subscription #>> '{items,data,0,price,id}';
  v_account public.accounts;
  v_plan public.plans;
begin
  if p_event_type not in ('customer.subscription.updated', 'customer.subscription.deleted') then
    raise exception 'not a subscription event: %', p_event_type using errcode = '22023';
  end if;
  if v_customer is null then
    raise exception 'the subscription has no customer' using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtext('stripe_customer:' || v_customer));
  if not private.record_stripe_event(p_event_id, p_event_type, p_subscription ->> 'id', p_subscription) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  select * into v_account from public.accounts where stripe_customer_id = v_customer;
  if not found then
    perform private.raise_alert(null, 'unmatched_subscription', 'A subscription changed for a customer no account is linked to.',
      jsonb_build_object('subscription', p_subscription ->> 'id', 'customer', v_customer, 'status', v_status));
    return private.finish_stripe_event(p_event_id, 'unmatched', null);
  end if;

  if p_event_type = 'customer.subscription.deleted' or v_status in ('canceled', 'unpaid', 'incomplete_expired') then
    update public.accounts set plan = 'free', updated_at = now() where id = v_account.id;
    return private.finish_stripe_event(p_event_id, 'plan_ended', v_account.id);
  end if;
  if v_status not in ('active', 'trialing', 'past_due') then
    return private.finish_stripe_event(p_event_id, 'ignored', v_account.id);
  end if;
  select * into v_plan from public.plans where stripe_price_id = v_price;
  if not found then
    perform private.raise_alert(v_account.id, 'unmatched_subscription', 'A subscription moved to a price that matches no plan.',
      jsonb_build_object('subscription', p_subscription ->> 'id', 'price', v_price));
    return private.finish_stripe_event(p_event_id, 'unmatched', v_account.id);
  end if;
  update public.accounts set plan = v_plan.id, updated_at = now() where id = v_account.id and plan <> v_plan.id;
  return private.finish_stripe_event(p_event_id, 'plan_changed', v_account.id);
end;
$$;

-- invoice.paid -------------------------------------------------------------------------
-- Redefined whole: a $0 invoice (a trial, a 100% coupon) and an invoice in the
-- shape of API versions before 2025 (top-level subscription, lines[].price) are
-- credited only when the operator says so in billing_settings; otherwise they
-- are recorded as not_credited and raised as an alert, never ignored silently.

create or replace function public.apply_stripe_invoice(p_event_id text, p_invoice jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invoice_id text := p_invoice ->> 'id';
  v_customer text := p_invoice ->> 'customer';
  v_settings public.billing_settings;
  v_subscription text := p_invoice #>> '{parent,subscription_details,subscription}';
  v_price text := p_invoice #>> '{lines,data,0,pricing,price_details,price}';
  v_amount_paid bigint := (p_invoice ->> 'amount_paid')::bigint;
  v_problem text;
  v_status text;
  v_account_id uuid;
begin
  if v_invoice_id is null or v_customer is null then
    raise exception 'the invoice has no id or customer' using errcode = '22023';
  end if;
  perform pg_advisory_xact_lock(hashtext('stripe_customer:' || v_customer));
  if not private.record_stripe_event(p_event_id, 'invoice.paid', v_invoice_id, p_invoice) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  select * into v_settings from public.billing_settings where id;

  if v_subscription is null and p_invoice ->> 'subscription' is not null then
    if v_settings.accept_legacy_invoice_shape then
      v_subscription := p_invoice ->> 'subscription';
      v_price := coalesce(v_price, p_invoice #>> '{lines,data,0,price,id}');
    else
      v_problem := 'the invoice is in the shape of API versions before 2025; set billing_settings.accept_legacy_invoice_shape to credit such invoices';
    end if;
  elsif v_subscription is null then
    -- Not a subscription's invoice (a one-off invoice): nothing to credit.
    return private.finish_stripe_event(p_event_id, 'ignored', null);
  end if;
  if v_problem is null and coalesce(v_amount_paid, 0) = 0 and not v_settings.credit_zero_amount_invoices then
    v_problem := 'a $0 invoice (a trial or a full discount); set billing_settings.credit_zero_amount_invoices to credit such invoices';
  end if;

  insert into public.stripe_invoices (id, customer_id, subscription_id, price_id, amount_paid, status, problem)
  values (v_invoice_id, v_customer, coalesce(v_subscription, p_invoice ->> 'subscription'), v_price, v_amount_paid,
          case when v_problem is null then 'pending' else 'not_credited' end, v_problem)
  on conflict (id) do nothing;
  if v_problem is not null then
    select id into v_account_id from public.accounts where stripe_customer_id = v_customer;
    update public.stripe_invoices set account_id = v_account_id where id = v_invoice_id;
    perform private.raise_alert(v_account_id, 'invoice_not_credited', 'A paid invoice was not credited: ' || v_problem || '.',
      jsonb_build_object('invoice', v_invoice_id, 'customer', v_customer, 'amount_paid', v_amount_paid));
    return private.finish_stripe_event(p_event_id, 'not_credited', v_account_id);
  end if;
  v_status := private.credit_stripe_invoice(v_invoice_id);
  select account_id into v_account_id from public.stripe_invoices where id = v_invoice_id;
  return private.finish_stripe_event(p_event_id, v_status, v_account_id);
end;
$$;

revoke all on function public.apply_stripe_dispute_closed(text, jsonb), public.apply_stripe_subscription(text, text, jsonb)
  from public, anon, authenticated;
grant execute on function public.apply_stripe_dispute_closed(text, jsonb), public.apply_stripe_subscription(text, text, jsonb)
  to service_role;

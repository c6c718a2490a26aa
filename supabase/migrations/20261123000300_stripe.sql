-- Buying credits through Stripe Payment Links, credited exactly once.
--
-- Each handled webhook event is applied by one service-role function. It
-- records the event id (duplicates stop there) and the business key (checkout
-- session, payment intent, invoice) in the same transaction as the ledger row;
-- the ledger's unique (reason, reference) is the last guard against a double
-- credit. Events may arrive in any order: a refund or dispute that arrives
-- before its checkout is recorded and applied when the checkout is.

create unique index credit_packs_stripe_price_id_key on public.credit_packs (stripe_price_id) where stripe_price_id is not null;

alter table public.accounts
  add column stripe_customer_id text unique,
  add column flagged_reason text;
comment on column public.accounts.flagged_reason is 'Set when a payment is disputed; for the operator to review.';

-- Payments: one row per checkout (or per payment intent seen first) ------------

create table public.stripe_payments (
  id bigint generated always as identity primary key,
  checkout_session_id text unique,
  payment_intent_id text unique,
  account_id uuid references public.accounts (id),
  credit_pack_id uuid references public.credit_packs (id),
  amount_total bigint,
  currency text,
  credits bigint not null default 0,
  status text not null default 'pending',
  refunded_amount bigint not null default 0,
  disputed_amount bigint not null default 0,
  debited bigint not null default 0,
  uncollected bigint not null default 0,
  problem text,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint stripe_payments_status check (status in ('pending', 'credited', 'failed', 'unmatched')),
  constraint stripe_payments_has_key check (checkout_session_id is not null or payment_intent_id is not null),
  constraint stripe_payments_amounts_not_negative check (refunded_amount >= 0 and disputed_amount >= 0 and debited >= 0 and uncollected >= 0)
);
comment on column public.stripe_payments.credits is 'Credits granted for this payment: the pack''s credits plus its bonus.';
comment on column public.stripe_payments.debited is 'Credits taken back for refunds and disputes so far.';
comment on column public.stripe_payments.uncollected is 'Credits that should have been taken back but the balance could not cover.';
create index stripe_payments_account_id_idx on public.stripe_payments (account_id);
alter table public.stripe_payments enable row level security;

create policy "Users can read their own payments."
  on public.stripe_payments for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

-- Subscription invoices ---------------------------------------------------------

create table public.stripe_invoices (
  id text primary key,
  customer_id text not null,
  subscription_id text,
  price_id text,
  account_id uuid references public.accounts (id),
  plan_id text references public.plans (id),
  amount_paid bigint,
  credits bigint not null default 0,
  status text not null default 'pending',
  created_at timestamptz not null default now(),
  constraint stripe_invoices_status check (status in ('pending', 'credited', 'unmatched'))
);
create index stripe_invoices_customer_id_idx on public.stripe_invoices (customer_id) where status = 'pending';
alter table public.stripe_invoices enable row level security;

create policy "Users can read their own invoices."
  on public.stripe_invoices for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

grant select on public.stripe_payments, public.stripe_invoices to authenticated, service_role;

-- Helpers -----------------------------------------------------------------------

-- Records an event id; false when it was already recorded (a duplicate delivery).
create function private.record_stripe_event(p_event_id text, p_type text, p_business_key text, p_payload jsonb)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  if p_event_id is null or p_event_id !~ '^evt_[A-Za-z0-9_]+$' then
    raise exception 'not a Stripe event id: %', coalesce(p_event_id, 'null') using errcode = '22023';
  end if;
  insert into public.stripe_events (id, type, business_key, status, payload)
  values (p_event_id, p_type, p_business_key, 'received', p_payload)
  on conflict (id) do nothing;
  return found;
end;
$$;

create function private.finish_stripe_event(p_event_id text, p_status text, p_account_id uuid)
returns jsonb
language sql
set search_path = ''
as $$
  update public.stripe_events set status = p_status, account_id = p_account_id where id = p_event_id;
  select jsonb_build_object('status', p_status, 'event_id', p_event_id, 'account_id', p_account_id);
$$;

create function private.raise_alert(p_account_id uuid, p_kind text, p_message text, p_details jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.alerts (account_id, kind, message, details) values (p_account_id, p_kind, p_message, p_details);
$$;

-- Takes back the refunded and disputed share of a credited payment, as far as the
-- balance allows without passing the credit limit; the rest is recorded as
-- uncollected and raised to the operator. The share is rounded down.
create function private.claw_back_stripe_payment(p_payment_id bigint, p_reason text, p_reference text)
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
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if v_payment.status <> 'credited' or coalesce(v_payment.amount_total, 0) <= 0 then
    return;
  end if;
  v_target := floor(v_payment.credits::numeric
                    * least(v_payment.amount_total, v_payment.refunded_amount + v_payment.disputed_amount)
                    / v_payment.amount_total)::bigint;
  v_owed := v_target - v_payment.debited - v_payment.uncollected;
  if v_owed <= 0 then
    return;
  end if;
  select * into v_account from public.accounts where id = v_payment.account_id for update;
  v_debit := least(v_owed, greatest(0, v_account.balance - v_account.held + v_account.credit_limit));
  if v_debit > 0 then
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

-- Credits a pending subscription invoice once its customer's account is known.
create function private.credit_stripe_invoice(p_invoice_id text)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_invoice public.stripe_invoices;
  v_account public.accounts;
  v_plan public.plans;
begin
  select * into v_invoice from public.stripe_invoices where id = p_invoice_id for update;
  if v_invoice.status <> 'pending' then
    return v_invoice.status;
  end if;
  select * into v_account from public.accounts where stripe_customer_id = v_invoice.customer_id;
  if not found then
    return 'pending';
  end if;
  select * into v_plan from public.plans where stripe_price_id = v_invoice.price_id;
  if not found then
    update public.stripe_invoices set status = 'unmatched', account_id = v_account.id where id = p_invoice_id;
    perform private.raise_alert(v_account.id, 'unmatched_payment', 'A paid invoice matches no plan.',
      jsonb_build_object('invoice', p_invoice_id, 'price', v_invoice.price_id));
    return 'unmatched';
  end if;
  if v_plan.monthly_credits > 0 then
    perform private.post_ledger(v_account.id, v_plan.monthly_credits, 'subscription', p_invoice_id,
                                format('%s plan, included credits', v_plan.name));
  end if;
  update public.stripe_invoices
     set status = 'credited', account_id = v_account.id, plan_id = v_plan.id, credits = v_plan.monthly_credits
   where id = p_invoice_id;
  update public.accounts set plan = v_plan.id, updated_at = now() where id = v_account.id;
  return 'credited';
end;
$$;

-- A disputed payment: the account is flagged for the operator and an alert raised.
create function private.flag_dispute(p_account_id uuid, p_payment_intent text, p_reason text, p_message text, p_details jsonb)
returns void
language plpgsql
set search_path = ''
as $$
begin
  if p_account_id is not null then
    update public.accounts
       set flagged_reason = format('payment %s disputed', p_payment_intent) || case when p_reason is null then '' else format(' (%s)', p_reason) end,
           updated_at = now()
     where id = p_account_id;
  end if;
  perform private.raise_alert(p_account_id, 'payment_disputed', p_message,
    jsonb_build_object('payment_intent', p_payment_intent) || p_details);
end;
$$;

revoke all on function private.record_stripe_event(text, text, text, jsonb), private.finish_stripe_event(text, text, uuid),
  private.raise_alert(uuid, text, text, jsonb), private.claw_back_stripe_payment(bigint, text, text),
  private.credit_stripe_invoice(text), private.flag_dispute(uuid, text, text, text, jsonb) from public;

-- Checkout sessions: completed, async_payment_succeeded, async_payment_failed --

create function public.apply_stripe_checkout(p_event_id text, p_event_type text, p_session jsonb)
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
  v_currency text := p_session ->> 'currency';
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
  -- of the same checkout, or from a refund or dispute that arrived first.
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

  if v_payment.status in ('credited', 'unmatched', 'failed') then
    return private.finish_stripe_event(p_event_id, 'already_' || v_payment.status, v_payment.account_id);
  end if;

  select * into v_pack from public.credit_packs where stripe_payment_link_id = v_link;
  v_problem := case
    when v_account.id is null then 'no account matches client_reference_id'
    when v_pack.id is null then 'no credit pack matches the payment link'
    when not v_pack.active then 'the credit pack is no longer sold'
    when v_amount is distinct from v_pack.unit_amount or v_currency is distinct from v_pack.currency
      then format('paid %s %s, the pack costs %s %s', v_amount, v_currency, v_pack.unit_amount, v_pack.currency)
  end;
  if v_problem is not null then
    update public.stripe_payments
       set status = 'unmatched', problem = v_problem, account_id = v_account.id, credit_pack_id = v_pack.id, updated_at = now()
     where id = v_payment.id;
    perform private.raise_alert(v_account.id, 'unmatched_payment', 'A Stripe payment was not credited: ' || v_problem || '.',
      jsonb_build_object('session', v_session_id, 'client_reference_id', v_reference, 'payment_link', v_link,
                         'amount_total', v_amount, 'currency', v_currency));
    return private.finish_stripe_event(p_event_id, 'unmatched', v_account.id);
  end if;

  update public.stripe_payments set account_id = v_account.id, credit_pack_id = v_pack.id, updated_at = now()
   where id = v_payment.id;

  if p_event_type = 'checkout.session.async_payment_failed' then
    update public.stripe_payments set status = 'failed', updated_at = now() where id = v_payment.id;
    return private.finish_stripe_event(p_event_id, 'failed', v_account.id);
  end if;
  if p_session ->> 'payment_status' <> 'paid' then
    -- Delayed methods (bank debits): credited on async_payment_succeeded.
    return private.finish_stripe_event(p_event_id, 'pending', v_account.id);
  end if;

  perform private.post_ledger(v_account.id, v_pack.credits + v_pack.bonus_credits, 'purchase', v_session_id,
                              format('%s credit pack', v_pack.name));
  update public.stripe_payments
     set status = 'credited', credits = v_pack.credits + v_pack.bonus_credits, updated_at = now()
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

-- charge.refunded: take back the refunded share --------------------------------

create function public.apply_stripe_refund(p_event_id text, p_charge jsonb)
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

-- charge.dispute.created: take back the disputed share and flag the account ----

create function public.apply_stripe_dispute(p_event_id text, p_dispute jsonb)
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

-- invoice.paid: a subscription's monthly included credits ----------------------

create function public.apply_stripe_invoice(p_event_id text, p_invoice jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invoice_id text := p_invoice ->> 'id';
  v_customer text := p_invoice ->> 'customer';
  v_status text;
  v_account_id uuid;
begin
  if v_invoice_id is null or v_customer is null then
    raise exception 'the invoice has no id or customer' using errcode = '22023';
  end if;
  if not private.record_stripe_event(p_event_id, 'invoice.paid', v_invoice_id, p_invoice) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  perform pg_advisory_xact_lock(hashtext('stripe_customer:' || v_customer));
  if p_invoice #>> '{parent,subscription_details,subscription}' is null then
    return private.finish_stripe_event(p_event_id, 'ignored', null);
  end if;
  insert into public.stripe_invoices (id, customer_id, subscription_id, price_id, amount_paid)
  values (v_invoice_id, v_customer, p_invoice #>> '{parent,subscription_details,subscription}',
          p_invoice #>> '{lines,data,0,pricing,price_details,price}', (p_invoice ->> 'amount_paid')::bigint)
  on conflict (id) do nothing;
  v_status := private.credit_stripe_invoice(v_invoice_id);
  select account_id into v_account_id from public.stripe_invoices where id = v_invoice_id;
  return private.finish_stripe_event(p_event_id, v_status, v_account_id);
end;
$$;

-- Any other event: recorded, not acted on ---------------------------------------

create function public.record_ignored_stripe_event(p_event_id text, p_event_type text, p_object jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
begin
  if not private.record_stripe_event(p_event_id, p_event_type, p_object ->> 'id', p_object) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  return private.finish_stripe_event(p_event_id, 'ignored', null);
end;
$$;

revoke all on function public.apply_stripe_checkout(text, text, jsonb), public.apply_stripe_refund(text, jsonb),
  public.apply_stripe_dispute(text, jsonb), public.apply_stripe_invoice(text, jsonb),
  public.record_ignored_stripe_event(text, text, jsonb) from public, anon, authenticated;
grant execute on function public.apply_stripe_checkout(text, text, jsonb), public.apply_stripe_refund(text, jsonb),
  public.apply_stripe_dispute(text, jsonb), public.apply_stripe_invoice(text, jsonb),
  public.record_ignored_stripe_event(text, text, jsonb) to service_role;

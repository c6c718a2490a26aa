-- Refunds and disputes of a subscription's payments take its credits back.
--
-- A refund or dispute names its payment intent; a subscription invoice, since
-- Stripe's API version 2025-03-31 (basil), no longer does. So a refund or
-- chargeback of a plan's monthly payment matched no credited payment and took
-- nothing back (20261129001300 at least told the operator). The link is an
-- InvoicePayment: `invoice_payment.paid` names the invoice and the payment
-- intent that paid it. Applying it records the link on the payment intent's
-- stripe_payments row (`invoice_id`), which is then credited with its share of
-- the invoice's credits once the invoice is, and from then on refunds,
-- disputes and disputes won act on it as on a checkout's payment.
--
-- Events of one invoice arrive in any order: the invoice payment before or
-- after invoice.paid, and a refund or dispute before either. Whichever comes
-- last applies what the others recorded. `invoice.paid` and
-- `invoice_payment.paid` of one invoice serialize on a new advisory lock per
-- invoice, taken after the customer's: the lock order is checkout session,
-- payment intent, customer, invoice; then the invoice row, its payment rows,
-- and the account.
--
-- What changed, each redefined whole:
-- * credit_stripe_invoice (20261123000300): takes the invoice's lock and its
--   payment rows before the account, and credits its linked payments.
-- * claw_back_stripe_payment (20261127000900): an invoice payment's claw-back
--   draws from that invoice's grant first, as a checkout's does from its own.
-- * apply_stripe_refund (20261129001300): refund_unmatched is raised only for a
--   payment linked to no invoice.
-- * reconcile_books (20261123000400): credited payments of an invoice are
--   checked through their invoice, not against a purchase ledger row, which
--   they never have.

alter table public.stripe_payments add column invoice_id text;
comment on column public.stripe_payments.invoice_id is
  'The subscription invoice this payment intent paid (invoice_payment.paid); its credits are its share of the invoice''s.';
create index stripe_payments_invoice_id_idx on public.stripe_payments (invoice_id) where invoice_id is not null;

-- Credits the payments linked to a credited invoice that are not credited yet,
-- each with its share of the invoice's credits (all of them for the one payment
-- of an invoice paid at once), and applies what a refund or dispute that came
-- first recorded on them. The caller holds the invoice's lock.
create function private.credit_invoice_payments(p_invoice_id text)
returns void
language plpgsql
set search_path = ''
as $$
declare
  v_invoice public.stripe_invoices;
  v_payment public.stripe_payments;
begin
  select * into v_invoice from public.stripe_invoices where id = p_invoice_id;
  if v_invoice.status is distinct from 'credited' then
    return;
  end if;
  for v_payment in
    update public.stripe_payments p
       set status = 'credited', account_id = v_invoice.account_id, updated_at = now(),
           credits = case when coalesce(v_invoice.amount_paid, 0) > 0 and p.amount_total is not null
                          then least(v_invoice.credits, floor(v_invoice.credits::numeric * p.amount_total / v_invoice.amount_paid)::bigint)
                          else v_invoice.credits end
     where p.invoice_id = p_invoice_id and p.status = 'pending' and p.checkout_session_id is null
    returning p.*
  loop
    if v_payment.disputed_amount > 0 then
      perform private.claw_back_stripe_payment(v_payment.id, 'dispute', 'dispute:invoice_payment:' || v_payment.payment_intent_id);
      perform private.flag_dispute(v_payment.account_id, v_payment.payment_intent_id, null,
        'A disputed invoice payment was linked to its invoice; its credits were taken back.', jsonb_build_object('invoice', p_invoice_id));
    else
      perform private.claw_back_stripe_payment(v_payment.id, 'refund', 'refund:invoice_payment:' || v_payment.payment_intent_id);
    end if;
  end loop;
end;
$$;
revoke all on function private.credit_invoice_payments(text) from public;

-- One invoice at a time: its invoice.paid and its invoice payments.
create function private.lock_stripe_invoice(p_invoice_id text)
returns void
language sql
set search_path = ''
as $$
  select pg_advisory_xact_lock(hashtextextended('stripe_invoice:' || p_invoice_id, 0))
$$;
revoke all on function private.lock_stripe_invoice(text) from public;

create or replace function private.credit_stripe_invoice(p_invoice_id text)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_invoice public.stripe_invoices;
  v_account public.accounts;
  v_plan public.plans;
begin
  perform private.lock_stripe_invoice(p_invoice_id);
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
  -- Its payment rows before the account (a refund holds one of them, then the account).
  perform 1 from public.stripe_payments where invoice_id = p_invoice_id order by id for update;
  if v_plan.monthly_credits > 0 then
    perform private.post_ledger(v_account.id, v_plan.monthly_credits, 'subscription', p_invoice_id,
                                format('%s plan, included credits', v_plan.name));
  end if;
  update public.stripe_invoices
     set status = 'credited', account_id = v_account.id, plan_id = v_plan.id, credits = v_plan.monthly_credits
   where id = p_invoice_id;
  update public.accounts set plan = v_plan.id, updated_at = now() where id = v_account.id;
  perform private.credit_invoice_payments(p_invoice_id);
  return 'credited';
end;
$$;

-- invoice_payment.paid ------------------------------------------------------------------
-- Links the payment intent to the invoice it paid. A payment intent that is a
-- checkout's (a one-time Payment Link that also creates an invoice) is that
-- checkout's and is left alone; an invoice payment not (yet) paid, or paid
-- other than by a payment intent (out of band, a legacy charge), is recorded
-- and nothing else: Stripe refunds and disputes only what it charged.

create function public.apply_stripe_invoice_payment(p_event_id text, p_invoice_payment jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_invoice_id text := coalesce(p_invoice_payment #>> '{invoice,id}', p_invoice_payment ->> 'invoice');
  v_payment_intent text := coalesce(p_invoice_payment #>> '{payment,payment_intent,id}', p_invoice_payment #>> '{payment,payment_intent}');
  v_amount bigint := (p_invoice_payment ->> 'amount_paid')::bigint;
  v_payment public.stripe_payments;
begin
  if v_invoice_id is null then
    raise exception 'the invoice payment names no invoice' using errcode = '22023';
  end if;
  if v_payment_intent is null or p_invoice_payment ->> 'status' is distinct from 'paid' then
    if not private.record_stripe_event(p_event_id, 'invoice_payment.paid', v_invoice_id, p_invoice_payment) then
      return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
    end if;
    return private.finish_stripe_event(p_event_id, 'ignored', null);
  end if;
  perform private.lock_stripe_payment(null, v_payment_intent);
  perform private.lock_stripe_invoice(v_invoice_id);
  if not private.record_stripe_event(p_event_id, 'invoice_payment.paid', v_payment_intent, p_invoice_payment) then
    return jsonb_build_object('status', 'duplicate', 'event_id', p_event_id);
  end if;
  insert into public.stripe_payments (payment_intent_id, invoice_id, amount_total, currency)
  values (v_payment_intent, v_invoice_id, v_amount, p_invoice_payment ->> 'currency')
  on conflict (payment_intent_id) do update
    set invoice_id = excluded.invoice_id, amount_total = coalesce(excluded.amount_total, public.stripe_payments.amount_total),
        currency = coalesce(excluded.currency, public.stripe_payments.currency), updated_at = now()
    -- Recorded by a refund or dispute that came first; never a checkout's, nor one credited already.
    where public.stripe_payments.checkout_session_id is null and public.stripe_payments.status = 'pending';
  select * into v_payment from public.stripe_payments where payment_intent_id = v_payment_intent;
  if v_payment.invoice_id is distinct from v_invoice_id then
    return private.finish_stripe_event(p_event_id, 'ignored', v_payment.account_id);
  end if;
  perform private.credit_invoice_payments(v_invoice_id);
  select * into v_payment from public.stripe_payments where id = v_payment.id;
  return private.finish_stripe_event(p_event_id, case when v_payment.status = 'credited' then 'linked' else 'pending' end,
                                     v_payment.account_id);
end;
$$;
revoke all on function public.apply_stripe_invoice_payment(text, jsonb) from public, anon, authenticated;
grant execute on function public.apply_stripe_invoice_payment(text, jsonb) to service_role;

-- Claw-back -------------------------------------------------------------------------------
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

-- charge.refunded -------------------------------------------------------------------------
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
  if v_payment.status <> 'credited' and v_payment.invoice_id is null then
    perform private.raise_alert_once(v_payment.account_id, 'refund_unmatched',
      'A Stripe refund matches no credited checkout or invoice payment. If its checkout, or its invoice payment (invoice_payment.paid), arrives later, it is applied then; otherwise its credits were not taken back: take them back by hand.',
      jsonb_build_object('payment_intent', v_payment_intent, 'charge', p_charge ->> 'id', 'amount_refunded', v_refunded,
                         'currency', p_charge ->> 'currency'),
      'refund_unmatched:' || v_payment_intent);
  end if;
  return private.finish_stripe_event(p_event_id, case when v_payment.status = 'credited' then 'refunded' else 'recorded' end,
                                     v_payment.account_id);
end;
$$;

-- Reconciliation ----------------------------------------------------------------------------
create or replace function public.reconcile_books(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row record;
  v_found integer := 0;
begin
  for v_row in
    select a.id, a.balance, a.held,
           coalesce((select sum(l.amount) from public.credit_ledger l where l.account_id = a.id), 0) as ledger_sum,
           coalesce((select sum(e.hold) from public.usage_events e where e.account_id = a.id and e.status = 'held'), 0) as open_holds
      from public.accounts a
  loop
    if v_row.balance <> v_row.ledger_sum then
      v_found := v_found + 1;
      perform private.raise_alert_once(v_row.id, 'ledger_mismatch', 'The balance does not equal the sum of the ledger.',
        jsonb_build_object('balance', v_row.balance, 'ledger_sum', v_row.ledger_sum, 'checked_at', p_now),
        'ledger_mismatch:' || v_row.id);
    end if;
    if v_row.held <> v_row.open_holds then
      v_found := v_found + 1;
      perform private.raise_alert_once(v_row.id, 'holds_mismatch', 'Held credits do not equal the open holds.',
        jsonb_build_object('held', v_row.held, 'open_holds', v_row.open_holds, 'checked_at', p_now),
        'holds_mismatch:' || v_row.id);
    end if;
  end loop;

  for v_row in
    select p.id, p.account_id, p.checkout_session_id, p.credits, l.amount as ledger_amount, l.account_id as ledger_account
      from public.stripe_payments p
      left join public.credit_ledger l on l.reason = 'purchase' and l.reference = p.checkout_session_id
     where p.status = 'credited' and p.checkout_session_id is not null
       and (l.id is null or l.amount <> p.credits or l.account_id <> p.account_id)
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A credited Stripe payment does not match its ledger row.',
      jsonb_build_object('session', v_row.checkout_session_id, 'credits', v_row.credits, 'ledger_amount', v_row.ledger_amount,
                         'checked_at', p_now),
      'stripe_mismatch:' || v_row.checkout_session_id);
  end loop;

  for v_row in
    select i.id, i.account_id, i.credits, l.amount as ledger_amount
      from public.stripe_invoices i
      left join public.credit_ledger l on l.reason = 'subscription' and l.reference = i.id
     where i.status = 'credited' and i.credits > 0
       and (l.id is null or l.amount <> i.credits or l.account_id <> i.account_id)
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A credited Stripe invoice does not match its ledger row.',
      jsonb_build_object('invoice', v_row.id, 'credits', v_row.credits, 'ledger_amount', v_row.ledger_amount, 'checked_at', p_now),
      'stripe_mismatch:' || v_row.id);
  end loop;

  for v_row in
    select e.id, e.account_id, e.business_key
      from public.stripe_events e
     where e.status = 'credited' and e.type like 'checkout.session.%'
       and not exists (select 1 from public.credit_ledger l
                        where l.reference = e.business_key and l.reason in ('purchase', 'subscription'))
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A Stripe event marked credited has no ledger row.',
      jsonb_build_object('event', v_row.id, 'business_key', v_row.business_key, 'checked_at', p_now),
      'stripe_mismatch:' || v_row.id);
  end loop;

  return jsonb_build_object('mismatches', v_found, 'checked_at', p_now);
end;
$$;

-- The books check the payments of an invoice too.
--
-- 20261129001400 left credited invoice payments out of reconcile_books (they
-- have no purchase ledger row of their own), so nothing checked them. Now a
-- credited payment of an invoice must have its invoice credited to the same
-- account, and the invoice's payments together must not be credited more than
-- the invoice; otherwise a stripe_mismatch alert, as for the rest.
--
-- Redefined whole; what changed: the loop over invoice payments. Everything
-- else is as in 20261129001400.

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

  -- A credited payment of an invoice: its invoice credited to the same account, and the
  -- invoice's payments together credited no more than the invoice.
  for v_row in
    select p.invoice_id, max(p.account_id::text) as account_id, sum(p.credits) as credits, i.credits as invoice_credits,
           bool_and(i.status = 'credited' and i.account_id = p.account_id) as matched
      from public.stripe_payments p
      left join public.stripe_invoices i on i.id = p.invoice_id
     where p.status = 'credited' and p.invoice_id is not null and p.checkout_session_id is null
     group by p.invoice_id, i.credits
    having not coalesce(bool_and(i.status = 'credited' and i.account_id = p.account_id), false) or sum(p.credits) > coalesce(i.credits, 0)
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id::uuid, 'stripe_mismatch', 'The credited payments of a Stripe invoice do not match it.',
      jsonb_build_object('invoice', v_row.invoice_id, 'payments_credits', v_row.credits, 'invoice_credits', v_row.invoice_credits,
                         'checked_at', p_now),
      'stripe_mismatch:payments:' || v_row.invoice_id);
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

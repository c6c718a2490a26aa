-- A subscription allowance's terms come from the invoice that paid for it.
--
-- The ledger trigger (20261127000900) gave a subscription credit the terms it
-- read for itself: the period end of the invoice's first line, and the
-- rollover rule of the invoice's plan, which credit_stripe_invoice recorded
-- only after posting the credit, so the account's plan before the invoice was
-- used. Two ways that went wrong:
-- * After a change of plan, the renewal's first lines are prorations whose
--   period ends now: the whole new month's allowance expired at the next run
--   of expire_grants.
-- * An invoice of a new plan that arrived before customer.subscription.updated
--   (Stripe does not order events) took the old plan's rollover rule: an
--   allowance that should end with its month never did, or the other way.
-- Now credit_stripe_invoice sets the grant's terms itself (the trigger takes
-- terms a caller sets): the period end of the first line that is not a
-- proration, chosen as apply_stripe_invoice chooses the plan's price
-- (20261129001500), and the rollover rule of the invoice's own plan.
--
-- credit_stripe_invoice is redefined whole; what changed: the invoice's plan
-- is recorded before the credit, and the grant terms are set. Everything else
-- is as in 20261129001400.

-- The line of a subscription invoice that its plan is read from: the first that
-- is not a proration (a part-period on a plan left or taken mid-period).
create function private.invoice_plan_line(p_invoice jsonb)
returns jsonb
language sql immutable
set search_path = ''
as $$
  select l
    from jsonb_array_elements(case when jsonb_typeof(p_invoice #> '{lines,data}') = 'array' then p_invoice #> '{lines,data}' else '[]' end)
         with ordinality as t(l, n)
   where coalesce(l #>> '{parent,subscription_item_details,proration}', l #>> '{parent,invoice_item_details,proration}',
                  l ->> 'proration', 'false') <> 'true'
   order by n
   limit 1
$$;
revoke all on function private.invoice_plan_line(jsonb) from public;

create or replace function private.credit_stripe_invoice(p_invoice_id text)
returns text
language plpgsql
set search_path = ''
as $$
declare
  v_invoice public.stripe_invoices;
  v_account public.accounts;
  v_plan public.plans;
  v_period_end double precision;
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
  -- The plan is the invoice's before its credit is posted, and the grant's terms are
  -- set here: the allowance ends with the period its plan's line paid for (not a
  -- proration line's, which ends now), unless the invoice's plan rolls it over.
  update public.stripe_invoices set account_id = v_account.id, plan_id = v_plan.id where id = p_invoice_id;
  if v_plan.monthly_credits > 0 then
    select (private.invoice_plan_line(e.payload) -> 'period' ->> 'end')::double precision into v_period_end
      from public.stripe_events e
     where e.business_key = p_invoice_id and e.type = 'invoice.paid'
     order by e.received_at
     limit 1;
    perform private.set_next_grant_terms(jsonb_build_object(
      'source', 'subscription', 'category', 'paid',
      'expires_at', case when v_plan.allowance_rolls_over then null else to_timestamp(v_period_end) end));
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

-- A subscription's invoice is credited for the plan it renews, not for the
-- plan its prorations name.
--
-- apply_stripe_invoice (20261127000300) took the plan from the invoice's first
-- line. After a change of plan mid-period, Stripe puts proration lines on the
-- next invoice (unused time on the plan left, time on the plan taken), listed
-- before the period's line: the renewal after an upgrade from Pro to Team was
-- credited Pro's monthly credits and, through credit_stripe_invoice, put the
-- account back on Pro. An invoice of prorations only (a change invoiced at
-- once) was credited a whole month of whichever plan its first line named.
--
-- Now the plan is the first line that is not a proration (its
-- subscription_item_details or invoice_item_details say `proration`; in the
-- older shape, the line's own `proration`). An invoice of prorations only is
-- recorded as not_credited with an invoice_not_credited alert: what a
-- part-period is worth is the operator's to grant.
--
-- Redefined whole; what changed: the line the price is read from, and the
-- prorations-only case. Everything else is as in 20261127000300.

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
  v_lines jsonb := case when jsonb_typeof(p_invoice #> '{lines,data}') = 'array' then p_invoice #> '{lines,data}' else '[]' end;
  v_line jsonb;
  v_price text;
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
  -- The plan is the one of the first line that is not a proration (a line for the time
  -- left on a plan left or taken mid-period, added to this invoice or invoiced at once).
  select l into v_line
    from jsonb_array_elements(v_lines) with ordinality as t(l, n)
   where coalesce(l #>> '{parent,subscription_item_details,proration}', l #>> '{parent,invoice_item_details,proration}',
                  l ->> 'proration', 'false') <> 'true'
   order by n
   limit 1;
  v_price := v_line #>> '{pricing,price_details,price}';

  if v_subscription is null and p_invoice ->> 'subscription' is not null then
    if v_settings.accept_legacy_invoice_shape then
      v_subscription := p_invoice ->> 'subscription';
      v_price := coalesce(v_price, v_line #>> '{price,id}');
    else
      v_problem := 'the invoice is in the shape of API versions before 2025; set billing_settings.accept_legacy_invoice_shape to credit such invoices';
    end if;
  elsif v_subscription is null then
    -- Not a subscription's invoice (a one-off invoice): nothing to credit.
    return private.finish_stripe_event(p_event_id, 'ignored', null);
  end if;
  if v_problem is null and v_line is null and jsonb_array_length(v_lines) > 0 then
    v_problem := 'an invoice of prorations only (the plan changed mid-period): the plan''s monthly credits come with its next invoice; grant what is due for the part-period by hand';
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

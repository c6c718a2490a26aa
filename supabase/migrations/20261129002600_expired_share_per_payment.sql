-- What expired of a payment's credits is counted as the claw-back counts it,
-- everywhere, and each payment of an invoice counts its own share of it.
--
-- 20261129002100 made the claw-back take the refunded share less what had
-- expired of the payment's grants. Two things it left wrong:
-- * apply_stripe_dispute_closed still worked out what stays taken back after a
--   dispute won without the expired part, so a dispute won after a partial
--   refund of a partly expired allowance gave nothing back.
-- * An invoice paid by several payments shares one grant: each payment
--   subtracted all of the invoice's expired credits, so refunding every one of
--   them took back nothing of what was spent.
-- Now private.expired_of_payment answers the expired part of one payment (its
-- share of the invoice's, by credits) and both functions use it.
--
-- claw_back_stripe_payment (20261129002100) and apply_stripe_dispute_closed
-- (20261127000300) are redefined whole; what changed: the expired part.

create function private.expired_of_payment(p_payment public.stripe_payments)
returns bigint
language plpgsql stable
set search_path = ''
as $$
declare
  v_expired bigint;
  v_invoice_credits bigint;
begin
  select coalesce(sum(-l.amount), 0) into v_expired
    from public.credit_grants g
    join public.credit_ledger l on l.reason = 'expiry' and (l.reference = 'expiry:' || g.id or l.reference like 'expiry:' || g.id || ':%')
   where g.account_id = p_payment.account_id
     and g.reference = coalesce(p_payment.checkout_session_id, p_payment.invoice_id);
  if p_payment.checkout_session_id is null and p_payment.invoice_id is not null and v_expired > 0 then
    -- The invoice's grant is shared by its payments: this one's share, by credits.
    select credits into v_invoice_credits from public.stripe_invoices where id = p_payment.invoice_id;
    if coalesce(v_invoice_credits, 0) > 0 then
      v_expired := floor(v_expired::numeric * least(p_payment.credits, v_invoice_credits) / v_invoice_credits)::bigint;
    end if;
  end if;
  return v_expired;
end;
$$;
revoke all on function private.expired_of_payment(public.stripe_payments) from public;

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
  v_expired := private.expired_of_payment(v_payment);
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
    perform private.post_ledger(v_payment.account_id, v_restored, 'dispute_won', 'dispute_won:' || coalesce(p_dispute ->> 'id', p_event_id),
                                format('dispute of Stripe payment %s won', v_payment_intent));
  end if;
  update public.accounts set flagged_reason = null, updated_at = now()
   where id = v_payment.account_id and flagged_reason like format('payment %s disputed%%', v_payment_intent);
  return private.finish_stripe_event(p_event_id, 'dispute_won', v_payment.account_id);
end;
$$;

-- A continued response is checked only for a key that could use it: an unknown,
-- revoked or expired key is refused by authorization as usual (401), whatever the
-- id, so the answer never tells whether a response id exists.
-- Redefined whole (20261129002500); what changed: the key must be live.
create or replace function public.stored_response_elsewhere(p_key_hash text, p_response_id text)
returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select exists (
    select 1
      from public.api_keys k
      join public.stored_responses r on r.response_id = p_response_id and r.account_id <> k.account_id
     where k.key_hash = p_key_hash
       and k.revoked_at is null
       and (k.expires_at is null or k.expires_at > now()))
$$;

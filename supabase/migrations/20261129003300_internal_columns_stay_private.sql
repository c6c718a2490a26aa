-- What the operator keeps about a customer's account stays the operator's.
--
-- A signed-in customer read their own rows of alerts, stripe_payments and
-- stripe_invoices whole (20261129001000_client_grants_exactly granted them
-- table by table), and every alert about their account:
--
-- - alerts is the operator's outbox as well as the customer's notices. Most
--   kinds are written for the operator: reconciliation's findings
--   (ledger_mismatch, holds_mismatch, stripe_mismatch), what Stripe did that
--   the books could not follow (unmatched_payment, invoice_not_credited,
--   unmatched_subscription, subscription_replaced, refund_unmatched,
--   clawback_shortfall: "raised to the operator"), and payment_disputed (the
--   account flagged for review, whose flagged_reason 20261129003100 already
--   keeps from the customer). price_below_cost and unpriced_usage carry no
--   account. A customer read "The balance does not equal the sum of the
--   ledger" about their own account, and, through unmatched_payment's message,
--   the problem of a payment that stripe_payments.problem records.
--   Its columns dedupe_key, delivery_status, delivery_attempts, net_request_id,
--   sent_at, delivered_at (the webhook delivery to the operator's
--   alert_webhook_url) and resolved_at (set when an operator resolves it) are
--   the operator's bookkeeping.
-- - stripe_payments.problem and stripe_invoices.problem say why a payment or
--   invoice was not credited, in the operator's words; stripe_payments.uncollected
--   is what a refund or dispute should have taken back and could not (written
--   off, and raised to the operator as clawback_shortfall);
--   stripe_invoices.customer_id is the Stripe customer id that
--   accounts.stripe_customer_id keeps from the customer since 20261129003100.
--
-- Now:
--
-- - Customers see only the alerts meant for them: low_balance and
--   balance_depleted (their balance crossing down) and stale_hold (a request
--   of theirs whose hold was released, which their usage_events row shows
--   too). The policy names the kinds a customer sees, so a kind added later is
--   the operator's until a migration says otherwise.
-- - alerts, stripe_payments and stripe_invoices are granted column by column,
--   as accounts and usage_events are: authenticated reads every column but the
--   ones above, and `select=*` on them is refused (42501), so clients name the
--   columns they read. The console already did.
-- - Operators read everything through their functions (operator_alerts,
--   operator_payments), which are security definer and change not at all.
--
-- Rows and writers are as they were.

drop policy "Users can read their own alerts." on public.alerts;
create policy "Users can read their own balance and request alerts."
  on public.alerts for select to authenticated
  using (kind in ('low_balance', 'balance_depleted', 'stale_hold')
         and account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

-- Redefined whole (20261129003100_members_by_invitation): alerts, stripe_payments
-- and stripe_invoices are granted column by column (not the operator's columns
-- above). Otherwise unchanged.
create or replace function private.grant_client_privileges()
returns void
language plpgsql
set search_path = ''
as $$
begin
  revoke all on all tables in schema public from anon, authenticated;
  revoke all on all sequences in schema public from anon, authenticated;
  revoke all on all functions in schema public from anon, authenticated;

  grant select on public.account_members to authenticated;
  grant select (id, user_id, balance, held, credit_limit, low_balance_threshold, plan, balance_state, created_at, updated_at, name) on public.accounts to authenticated;
  grant select (id, account_id, kind, message, details, created_at) on public.alerts to authenticated;
  grant select on public.api_keys to authenticated;
  grant select on public.audit_log to authenticated;
  grant select on public.code_redemptions to authenticated;
  grant select on public.credit_grants to authenticated;
  grant select on public.credit_ledger to authenticated;
  grant select on public.credit_packs to authenticated;
  grant select on public.member_invitations to authenticated;
  grant select on public.model_prices to anon, authenticated;
  grant select on public.plans to authenticated;
  grant select (id, subscription_id, price_id, account_id, plan_id, amount_paid, credits, status, created_at) on public.stripe_invoices to authenticated;
  grant select (id, checkout_session_id, payment_intent_id, account_id, credit_pack_id, amount_total, currency, credits, status, refunded_amount, disputed_amount, debited, created_at, updated_at, quantity, amount_subtotal, amount_discount, amount_tax, invoice_id) on public.stripe_payments to authenticated;
  grant update (low_balance_threshold) on public.accounts to authenticated;
  grant select (alias, model_id, created_at) on public.model_aliases to anon;
  grant select (alias, model_id, created_at) on public.model_aliases to authenticated;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to anon;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to authenticated;
  grant select (account_id, model_id, day, requests, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, amount, charged) on public.usage_daily to authenticated;
  grant select (request_id, account_id, api_key_id, model_id, provider, status, hold, max_input_tokens, max_output_tokens, choices, output_capped, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, usage_source, amount, charged, error, created_at, settled_at, hold_expired_at, web_searches, price_multiplier_bps) on public.usage_events to authenticated;
  grant execute on function public.accept_invitation(p_invitation_id uuid) to authenticated;
  grant execute on function public.account_details(p_account_id uuid) to authenticated;
  grant execute on function public.create_api_key(p_name text, p_expires_at timestamp with time zone, p_policy jsonb) to authenticated;
  grant execute on function public.create_member_api_key(p_account_id uuid, p_name text) to authenticated;
  grant execute on function public.decline_invitation(p_invitation_id uuid) to authenticated;
  grant execute on function public.is_operator() to anon, authenticated;
  grant execute on function public.my_invitations() to authenticated;
  grant execute on function public.my_organisations() to authenticated;
  grant execute on function public.my_owned_accounts() to authenticated;
  grant execute on function public.operator_alerts(p_limit integer) to authenticated;
  grant execute on function public.operator_create_code(p_code text, p_credits bigint, p_max_uses integer, p_category text, p_grant_expires_at timestamp with time zone, p_grant_lifetime interval, p_redeemable_until timestamp with time zone) to authenticated;
  grant execute on function public.operator_customers(p_search text, p_limit integer) to authenticated;
  grant execute on function public.operator_grant_credits(p_account_id uuid, p_amount bigint, p_note text) to authenticated;
  grant execute on function public.operator_models() to authenticated;
  grant execute on function public.operator_payments(p_limit integer) to authenticated;
  grant execute on function public.operator_reconcile() to authenticated;
  grant execute on function public.operator_resolve_alert(p_alert_id bigint) to authenticated;
  grant execute on function public.operator_revenue(p_days integer) to authenticated;
  grant execute on function public.operator_set_alias(p_alias text, p_model_id text) to authenticated;
  grant execute on function public.operator_update_model(p_model_id text, p_changes jsonb) to authenticated;
  grant execute on function public.redeem_code(p_code text) to authenticated;
  grant execute on function public.remove_member(p_account_id uuid, p_user_id uuid) to authenticated;
  grant execute on function public.revoke_api_key(p_key_id uuid) to authenticated;
  grant execute on function public.set_member(p_account_id uuid, p_email text, p_role text, p_monthly_budget bigint) to authenticated;
  grant execute on function public.set_organisation_name(p_account_id uuid, p_name text) to authenticated;
  grant execute on function public.update_api_key_policy(p_key_id uuid, p_policy jsonb) to authenticated;
  grant execute on function public.withdraw_invitation(p_account_id uuid, p_email text) to authenticated;
end;
$$;
revoke all on function private.grant_client_privileges() from public, anon, authenticated;

select private.grant_client_privileges();

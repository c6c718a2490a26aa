-- The API roles hold exactly what the migrations grant them, whatever the project.
--
-- Every migration grants anon and authenticated only what they need, column by
-- column where a table holds anything private (upstream_cost, rates and the
-- cost prices stay unreadable to customers; accounts take an update of
-- low_balance_threshold only). That held only on a project that grants the API
-- roles nothing by itself. Supabase projects created before the platform
-- stopped doing so, or with "default privileges for new entities" turned on,
-- grant ALL on every new table in public to anon and authenticated, and
-- EXECUTE on every new function. There, row-level security alone stood
-- between a customer and their own row: `update accounts set balance = ...`
-- on their account was allowed, and every cost column was readable.
--
-- private.grant_client_privileges() revokes everything in public from anon
-- and authenticated (table, column, sequence and function privileges) and
-- grants back exactly the list below: what the migrations up to this one
-- grant, read from a project that grants nothing by itself. This migration
-- runs it, and stops postgres's default privileges in public from granting
-- the API roles anything again. An operator may run it again at any time
-- (`select private.grant_client_privileges();`). A later migration that
-- changes what the API roles are granted redefines it whole;
-- tests/supabase/row-level-security.test.ts fails until it does.

alter default privileges for role postgres in schema public
  revoke all on tables from anon, authenticated;
alter default privileges for role postgres in schema public
  revoke all on sequences from anon, authenticated;
alter default privileges for role postgres in schema public
  revoke execute on functions from anon, authenticated;

create function private.grant_client_privileges()
returns void
language plpgsql
set search_path = ''
as $$
begin
  revoke all on all tables in schema public from anon, authenticated;
  revoke all on all sequences in schema public from anon, authenticated;
  revoke all on all functions in schema public from anon, authenticated;

  grant select on public.account_members to authenticated;
  grant select on public.accounts to authenticated;
  grant select on public.alerts to authenticated;
  grant select on public.api_keys to authenticated;
  grant select on public.audit_log to authenticated;
  grant select on public.code_redemptions to authenticated;
  grant select on public.credit_grants to authenticated;
  grant select on public.credit_ledger to authenticated;
  grant select on public.credit_packs to authenticated;
  grant select on public.model_prices to anon, authenticated;
  grant select on public.plans to authenticated;
  grant select on public.stripe_invoices to authenticated;
  grant select on public.stripe_payments to authenticated;
  grant update (low_balance_threshold) on public.accounts to authenticated;
  grant select (alias, model_id, created_at) on public.model_aliases to anon;
  grant select (alias, model_id, created_at) on public.model_aliases to authenticated;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to anon;
  grant select (id, provider, display_name, enabled, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, created_at, long_context_threshold, long_context_price, price_web_search) on public.models to authenticated;
  grant select (account_id, model_id, day, requests, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, amount, charged) on public.usage_daily to authenticated;
  grant select (request_id, account_id, api_key_id, model_id, provider, status, hold, max_input_tokens, max_output_tokens, choices, output_capped, input_tokens, cached_input_tokens, cache_write_tokens, cache_write_1h_tokens, output_tokens, reasoning_tokens, image_tokens, audio_tokens, usage_source, amount, charged, error, created_at, settled_at, hold_expired_at, web_searches, price_multiplier_bps) on public.usage_events to authenticated;
  grant execute on function public.create_api_key(p_name text, p_expires_at timestamp with time zone, p_policy jsonb) to authenticated;
  grant execute on function public.create_member_api_key(p_account_id uuid, p_name text) to authenticated;
  grant execute on function public.is_operator() to anon, authenticated;
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
  grant execute on function public.update_api_key_policy(p_key_id uuid, p_policy jsonb) to authenticated;
end;
$$;
revoke all on function private.grant_client_privileges() from public, anon, authenticated;

select private.grant_client_privileges();

-- A key restricted to some addresses reads its account only from them.
--
-- key_overview (20261123000200), behind GET /v1/credits and GET /v1/models,
-- refused unknown, revoked and expired keys but did not look at allowed_ips:
-- a leaked key used from anywhere read the balance, the credit limit and the
-- plan. It now takes the client's address and refuses as authorize_request
-- does (ip_not_allowed). The new argument changes its signature, so the old
-- function is dropped and the whole function created again; a caller that
-- passes no address is treated as one from an unknown address.

drop function public.key_overview(text);

create function public.key_overview(p_key_hash text, p_client_ip inet default null)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_account public.accounts;
begin
  select * into v_key from public.api_keys where key_hash = p_key_hash;
  if not found then
    return private.refusal('invalid_api_key', 'Invalid API key.');
  end if;
  if v_key.revoked_at is not null then
    return private.refusal('api_key_revoked', 'This API key has been revoked.');
  end if;
  if v_key.expires_at is not null and v_key.expires_at <= now() then
    return private.refusal('api_key_expired', 'This API key has expired.');
  end if;
  if v_key.allowed_ips is not null and (
       p_client_ip is null
       or not exists (select 1 from unnest(v_key.allowed_ips) as allowed (network) where p_client_ip <<= allowed.network)) then
    return private.refusal('ip_not_allowed', 'This API key may not be used from this address.');
  end if;
  select * into v_account from public.accounts where id = v_key.account_id;
  return jsonb_build_object(
    'status', 'ok',
    'account', jsonb_build_object(
      'id', v_account.id,
      'balance', v_account.balance,
      'held', v_account.held,
      'credit_limit', v_account.credit_limit,
      'available', v_account.balance - v_account.held + v_account.credit_limit,
      'plan', v_account.plan),
    'key', jsonb_build_object(
      'id', v_key.id,
      'name', v_key.name,
      'prefix', v_key.prefix,
      'allowed_models', to_jsonb(v_key.allowed_models),
      'expires_at', v_key.expires_at),
    'top_up_links', private.top_up_links());
end;
$$;

revoke all on function public.key_overview(text, inet) from public, anon, authenticated;
grant execute on function public.key_overview(text, inet) to service_role;

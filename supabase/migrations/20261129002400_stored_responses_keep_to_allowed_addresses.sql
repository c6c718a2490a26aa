-- A stored response is read only from the addresses its key allows.
--
-- authorize_stored_response (20261127000500), behind GET /v1/responses/{id},
-- did not look at allowed_ips: a leaked key read its account's stored
-- responses from anywhere. It now takes the client's address and refuses as
-- authorize_request does (ip_not_allowed). As for key_overview
-- (20261129002300), the signature changes, so the old function is dropped and
-- the whole function created again.

drop function public.authorize_stored_response(text, text);

create function public.authorize_stored_response(p_key_hash text, p_response_id text, p_client_ip inet default null)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
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
  if not exists (select 1 from public.stored_responses where response_id = p_response_id and account_id = v_key.account_id) then
    return private.refusal('response_not_found', format('No response %s was stored for this account.', p_response_id));
  end if;
  return jsonb_build_object('status', 'ok', 'account_id', v_key.account_id);
end;
$$;

revoke all on function public.authorize_stored_response(text, text, inet) from public, anon, authenticated;
grant execute on function public.authorize_stored_response(text, text, inet) to service_role;

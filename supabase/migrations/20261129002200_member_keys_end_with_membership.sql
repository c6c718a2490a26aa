-- A member's key is never made, or used for a side call, once the member is
-- removed.
--
-- create_member_api_key (20261127001100) checked the membership without a
-- lock: a key created while remove_member ran was made after remove_member
-- had revoked the member's keys, and stayed live. authorize_request refused
-- it (not_a_member), but authorize_uncharged_call (20261127000500), which
-- serves the token-counting side calls, did not look at membership at all,
-- and the key would spend again were the person ever added back. Now the
-- membership is locked while the key is made, and side calls refuse a key
-- whose member is gone, as requests do.
--
-- Both redefined whole; what changed: the lock, and the membership check.

create or replace function public.create_member_api_key(p_account_id uuid, p_name text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_key text;
  v_row public.api_keys;
begin
  -- The membership is locked (FOR KEY SHARE, which remove_member's delete waits for) so a
  -- key is never made for a member being removed at the same moment, after remove_member
  -- revoked the member's keys: it waits, and then finds no membership, or it goes first
  -- and remove_member revokes it with the others.
  perform 1 from public.account_members where account_id = p_account_id and user_id = (select auth.uid()) for key share;
  if not found then
    raise exception 'only a member of the organisation may create its keys' using errcode = '42501';
  end if;
  if p_name is null or char_length(trim(p_name)) not between 1 and 100 then
    raise exception 'name must be 1 to 100 characters' using errcode = '22023';
  end if;
  -- 24 random bytes, base64url: 192 bits. Only the SHA-256 is stored.
  v_key := 'tg_' || translate(encode(extensions.gen_random_bytes(24), 'base64'), '+/', '-_');
  insert into public.api_keys (account_id, name, prefix, key_hash, member_user_id)
  values (p_account_id, trim(p_name), left(v_key, 11), encode(sha256(convert_to(v_key, 'UTF8')), 'hex'), (select auth.uid()))
  returning * into v_row;
  perform private.audit('create_member_key', p_account_id::text, jsonb_build_object('key_id', v_row.id, 'member', v_row.member_user_id));
  return private.key_summary(v_row) || jsonb_build_object('key', v_key);
end;
$$;

create or replace function public.authorize_uncharged_call(
  p_key_hash text,
  p_model text,
  p_client_ip inet default null,
  p_providers text[] default null
)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_model public.models;
  v_plan public.plans;
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
  if v_key.member_user_id is not null
     and not exists (select 1 from public.account_members m where m.account_id = v_key.account_id and m.user_id = v_key.member_user_id) then
    return private.refusal('not_a_member', 'This API key belongs to someone who is no longer a member of the organisation.');
  end if;
  if v_key.allowed_ips is not null and (
       p_client_ip is null
       or not exists (select 1 from unnest(v_key.allowed_ips) as allowed (network) where p_client_ip <<= allowed.network)) then
    return private.refusal('ip_not_allowed', 'This API key may not be used from this address.');
  end if;
  v_model := private.priced_model(p_model);
  if v_model.id is null then
    return private.refusal('model_not_found', format('The model %s does not exist or is not available.', p_model));
  end if;
  if p_providers is not null and not (v_model.provider = any (p_providers)) then
    return private.refusal('unsupported_provider', format('The model %s is not served on this route.', p_model),
                           jsonb_build_object('provider', v_model.provider));
  end if;
  if v_key.allowed_models is not null and not (p_model = any (v_key.allowed_models) or v_model.id = any (v_key.allowed_models)) then
    return private.refusal('model_not_allowed', format('This API key may not use the model %s.', p_model));
  end if;
  if v_model.price_input is null or v_model.price_output is null then
    return private.refusal('model_not_priced', format('The model %s has no price and cannot be billed.', p_model));
  end if;
  select pl.* into v_plan from public.accounts a join public.plans pl on pl.id = a.plan where a.id = v_key.account_id;
  return jsonb_build_object(
    'status', 'ok',
    'account_id', v_key.account_id,
    'api_key_id', v_key.id,
    'model', jsonb_build_object('id', v_model.id, 'provider', v_model.provider, 'upstream_model', v_model.upstream_model),
    'limits', private.rate_limits_of(v_key, v_plan.requests_per_minute, v_plan.tokens_per_minute));
end;
$$;

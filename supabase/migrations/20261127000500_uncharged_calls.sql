-- Side calls the coding agents make between requests (Anthropic's
-- count_tokens, Gemini's countTokens): the key and the model are checked as for
-- a request, nothing is held, charged or written.

create function public.authorize_uncharged_call(
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
revoke all on function public.authorize_uncharged_call(text, text, inet, text[]) from public, anon, authenticated;
grant execute on function public.authorize_uncharged_call(text, text, inet, text[]) to service_role;

-- Responses stored upstream (the Responses API's store, on by default) belong to
-- the account that created them: one operator key stores every customer's, so
-- retrieving one by id is allowed only to its own account.
create table public.stored_responses (
  response_id text primary key,
  account_id uuid not null references public.accounts (id),
  request_id text not null,
  created_at timestamptz not null default now()
);
create index stored_responses_account_id_idx on public.stored_responses (account_id);
alter table public.stored_responses enable row level security;
-- No policies: written and read by the functions below.
grant select on public.stored_responses to service_role;

-- Records who created a stored response (after the response, off the request's path).
create function public.record_stored_response(p_request_id text, p_response_id text)
returns void
language plpgsql
security definer
set search_path = ''
as $$
begin
  if p_response_id is null or char_length(p_response_id) not between 1 and 200 then
    raise exception 'response id must be 1 to 200 characters' using errcode = '22023';
  end if;
  insert into public.stored_responses (response_id, account_id, request_id)
  select p_response_id, e.account_id, e.request_id from public.usage_events e where e.request_id = p_request_id
  on conflict (response_id) do nothing;
end;
$$;

-- May this key read that stored response? As key_overview refuses keys, and
-- a response of another account is not found.
create function public.authorize_stored_response(p_key_hash text, p_response_id text)
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
  if not exists (select 1 from public.stored_responses where response_id = p_response_id and account_id = v_key.account_id) then
    return private.refusal('response_not_found', format('No response %s was stored for this account.', p_response_id));
  end if;
  return jsonb_build_object('status', 'ok', 'account_id', v_key.account_id);
end;
$$;

revoke all on function public.record_stored_response(text, text), public.authorize_stored_response(text, text) from public, anon, authenticated;
grant execute on function public.record_stored_response(text, text), public.authorize_stored_response(text, text) to service_role;

-- A key's allow-list is a list of what is allowed, or no limit; never an
-- unrestricted key that looks restricted.
--
-- apply_key_policy (20261123000200) stored allowed_models: [] and
-- allowed_ips: [] as null (array_agg over nothing is null), which means "no
-- limit": a customer who meant "nothing" got a key usable with every model
-- from every address. A null among the model names made the check
-- `model = any (allowed_models)` null, which refuses nothing. Both are now
-- refused (22023: 400 to the caller) when the policy is set; null still
-- removes the limit.
--
-- Redefined whole; what changed: the check on the lists' elements. Everything
-- else is as in 20261123000200.

create or replace function private.apply_key_policy(p_key_id uuid, p_policy jsonb)
returns public.api_keys
language plpgsql
set search_path = ''
as $$
declare
  v_field text;
  v_row public.api_keys;
  v_limits text[] := array['spend_limit', 'monthly_spend_limit', 'max_concurrent', 'requests_per_minute', 'tokens_per_minute'];
begin
  if p_policy is null or jsonb_typeof(p_policy) <> 'object' then
    raise exception 'policy must be an object' using errcode = '22023';
  end if;
  for v_field in select jsonb_object_keys(p_policy) loop
    if not v_field = any (v_limits || array['allowed_models', 'allowed_ips']) then
      raise exception 'unknown policy field "%"', v_field using errcode = '22023';
    end if;
    if v_field = any (v_limits) and jsonb_typeof(p_policy -> v_field) <> 'null'
       and (jsonb_typeof(p_policy -> v_field) <> 'number' or (p_policy ->> v_field) !~ '^[0-9]{1,15}$') then
      raise exception 'policy field "%" must be a non-negative integer or null', v_field using errcode = '22023';
    end if;
    if v_field in ('allowed_models', 'allowed_ips') and jsonb_typeof(p_policy -> v_field) not in ('array', 'null') then
      raise exception 'policy field "%" must be an array or null', v_field using errcode = '22023';
    end if;
    -- An empty list was stored as no list at all (array_agg of nothing is null), and a
    -- null among the names made the model check null, which refuses nothing: either
    -- way the key was left unrestricted. Neither is a list of what is allowed.
    if v_field in ('allowed_models', 'allowed_ips') and jsonb_typeof(p_policy -> v_field) = 'array' then
      if jsonb_array_length(p_policy -> v_field) = 0 then
        raise exception 'policy field "%" must name at least one %; null removes the limit', v_field,
          case v_field when 'allowed_models' then 'model' else 'network' end using errcode = '22023';
      end if;
      if exists (select 1 from jsonb_array_elements(p_policy -> v_field) as item where jsonb_typeof(item) <> 'string' or item #>> '{}' = '') then
        raise exception 'policy field "%" must be a list of non-empty strings', v_field using errcode = '22023';
      end if;
    end if;
  end loop;
  begin
    update public.api_keys set
      allowed_models = case when p_policy ? 'allowed_models'
        then (select array_agg(value) from jsonb_array_elements_text(nullif(p_policy -> 'allowed_models', 'null'))) else allowed_models end,
      allowed_ips = case when p_policy ? 'allowed_ips'
        then (select array_agg(value::cidr) from jsonb_array_elements_text(nullif(p_policy -> 'allowed_ips', 'null'))) else allowed_ips end,
      spend_limit = case when p_policy ? 'spend_limit' then (p_policy ->> 'spend_limit')::bigint else spend_limit end,
      monthly_spend_limit = case when p_policy ? 'monthly_spend_limit' then (p_policy ->> 'monthly_spend_limit')::bigint else monthly_spend_limit end,
      max_concurrent = case when p_policy ? 'max_concurrent' then (p_policy ->> 'max_concurrent')::integer else max_concurrent end,
      requests_per_minute = case when p_policy ? 'requests_per_minute' then (p_policy ->> 'requests_per_minute')::integer else requests_per_minute end,
      tokens_per_minute = case when p_policy ? 'tokens_per_minute' then (p_policy ->> 'tokens_per_minute')::integer else tokens_per_minute end
    where id = p_key_id
    returning * into v_row;
  exception
    when invalid_text_representation then
      raise exception 'allowed_ips must be CIDR networks, such as 10.0.0.0/8 or 2001:db8::/32' using errcode = '22023';
    when check_violation then
      raise exception 'limits must be positive' using errcode = '22023';
  end;
  return v_row;
end;
$$;

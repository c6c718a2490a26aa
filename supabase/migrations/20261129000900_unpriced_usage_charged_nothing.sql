-- Usage the hold has no price for is charged nothing, never the balance.
--
-- private.cost_of answers null when usage falls in a bucket with no rate (the
-- one that can have none is web_search, on a model without price_web_search;
-- authorize refuses to hold searches there, but an upstream can report some
-- unasked). settle_one passed that null amount to least(), which ignores
-- nulls: the charge became everything the account had available, and the
-- books still balanced, so no invariant caught it.
--
-- Redefined whole; what changed: when the amount is null, the buckets with no
-- price are left out of it (charged nothing), the rest is charged at its
-- price, and an operator alert (`unpriced_usage`, account_id null so only the
-- operator reads it) names the request, the model and what went unpriced.
-- Everything else is as in 20261127000100.

create or replace function private.settle_one(
  p_request_id text,
  p_outcome text,
  p_usage jsonb,
  p_usage_source text,
  p_error text
)
returns jsonb
language plpgsql
set search_path = ''
as $$
declare
  v_usage jsonb;
  v_event public.usage_events;
  v_account public.accounts;
  v_previous_state text;
  v_release bigint;
  v_available bigint;
  v_amount bigint;
  v_upstream_cost bigint;
  v_charge bigint;
  v_unpriced text[];
begin
  if p_outcome is null or p_outcome not in ('completed', 'aborted', 'failed') then
    raise exception 'outcome must be completed, aborted or failed, got %', coalesce(p_outcome, 'null')
      using errcode = '22023';
  end if;
  if p_usage_source is not null and p_usage_source not in ('provider', 'tokenizer', 'estimate') then
    raise exception 'usage source must be provider, tokenizer or estimate, got %', p_usage_source
      using errcode = '22023';
  end if;
  v_usage := private.normalize_usage(p_usage);

  -- Lock 1: the request.
  select * into v_event from public.usage_events where request_id = p_request_id for update;
  if not found then
    if v_usage = private.normalize_usage('{}') then
      -- Giving back a hold that was never taken (its authorization timed out at
      -- the gateway): remembered, so a late authorization is refused.
      insert into public.cancelled_requests (request_id) values (p_request_id) on conflict do nothing;
      return jsonb_build_object('status', 'cancelled', 'replayed', not found, 'request_id', p_request_id);
    end if;
    raise exception 'no authorized request with id %', p_request_id using errcode = 'PT404';
  end if;
  if v_event.status not in ('held', 'expired') then
    return private.settlement_result(v_event, true);
  end if;
  v_release := case when v_event.status = 'held' then v_event.hold else 0 end;
  v_amount := private.cost_of(v_usage, v_event.rates -> 'price');
  if v_amount is null then
    -- Usage in a bucket the hold has no price for (web searches on a model without
    -- price_web_search, reported by the upstream unasked): those units are charged
    -- nothing, the rest at its price, and the operator is told. Before, the null
    -- amount reached least() below, which ignores nulls: the charge was everything
    -- the account had available.
    select coalesce(array_agg(bucket), '{}') into v_unpriced
      from unnest(private.token_buckets()) as bucket
     where coalesce((v_usage ->> bucket)::numeric, 0) > 0
       and jsonb_typeof(v_event.rates -> 'price' -> bucket) is distinct from 'number';
    v_amount := coalesce(private.cost_of(v_usage - v_unpriced, v_event.rates -> 'price'), 0);
    perform private.raise_alert_once(null, 'unpriced_usage',
      'A request used something its model has no price for; that part was charged nothing. Set its price on the model.',
      jsonb_build_object('request_id', v_event.request_id, 'model', v_event.model_id, 'account_id', v_event.account_id,
                         'unpriced', (select jsonb_object_agg(bucket, v_usage -> bucket) from unnest(v_unpriced) as bucket)),
      'unpriced_usage:' || v_event.request_id);
  end if;
  v_upstream_cost := private.cost_of(v_usage, v_event.rates -> 'cost');

  -- Lock 2: the key. Within its hold (the usual case) the charge is the amount
  -- whatever the balance, so the request and the key are written before the
  -- account is locked; otherwise the key is only locked now.
  if v_amount <= v_release then
    v_charge := v_amount;
    v_event := private.record_settlement(v_event, p_outcome, v_usage, p_usage_source, p_error, v_amount, v_charge, v_upstream_cost);
  else
    perform 1 from public.api_keys where id = v_event.api_key_id for no key update;
  end if;

  -- Lock 3: the account, by one update in the usual case. Beyond the hold, what
  -- may still be charged depends on the balance, read from the locked row first.
  if v_charge is null then
    select balance - held + credit_limit into v_available from public.accounts where id = v_event.account_id for no key update;
    v_charge := least(v_amount, greatest(0, v_available + v_release));
  end if;
  update public.accounts
     set balance = balance - v_charge, held = held - v_release, updated_at = now()
   where id = v_event.account_id
  returning * into v_account;
  if v_charge > 0 then
    insert into public.credit_ledger (account_id, amount, balance_after, reason, reference)
    values (v_account.id, -v_charge, v_account.balance, 'usage', p_request_id);
  end if;
  -- The returned row still carries the state before this charge.
  v_previous_state := v_account.balance_state;
  v_account.balance_state := private.balance_state_of(v_account);
  if v_account.balance_state <> v_previous_state then
    update public.accounts set balance_state = v_account.balance_state where id = v_account.id;
    perform private.raise_balance_alert(v_account, v_previous_state);
  end if;
  if v_event.status in ('held', 'expired') then
    v_event := private.record_settlement(v_event, p_outcome, v_usage, p_usage_source, p_error, v_amount, v_charge, v_upstream_cost);
  end if;

  return jsonb_build_object(
    'status', v_event.status,
    'replayed', false,
    'request_id', v_event.request_id,
    'account_id', v_event.account_id,
    'hold', v_event.hold,
    'amount', v_event.amount,
    'charged', v_event.charged,
    'upstream_cost', v_event.upstream_cost,
    'usage_source', v_event.usage_source,
    'balance', v_account.balance,
    'held', v_account.held,
    'available', v_account.balance - v_account.held + v_account.credit_limit);
end;
$$;

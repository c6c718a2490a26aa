-- A key's spend caps and a member's budget hold at settlement too.
--
-- authorize_request refuses a request whose worst case would pass the key's
-- spend_limit or monthly_spend_limit, or the member's monthly_budget. But
-- usage can overrun the hold (hosted searches past the bound, or what an
-- upstream adds), and settle_one charged an overrun as far as the balance
-- allowed, the caps not looked at: a key capped at 20 ended having spent 410.
-- Now a charge beyond the hold stops where the caps do, as it stops where the
-- balance does; the rest is the shortfall, visible as amount - charged. A
-- settlement within its hold (the usual case) is unchanged and reads nothing
-- more.
--
-- What the caps leave is counted as authorize counts it: what the key (or the
-- member's keys) spent, this month for the monthly ones, and what their other
-- requests hold in flight. The membership row is locked before the key row,
-- as authorize locks them, so a member's requests are counted one after the
-- other; lock_for_settlement now takes the batch's memberships between its
-- requests and its keys for the same reason.
--
-- settle_one (20261129000900) and lock_for_settlement (20261129000600) are
-- redefined whole; what changed: room_under_caps and where it is used, and
-- the membership lock.

-- What the key's caps and its member's budget leave for one request beyond
-- what the key's (or member's) other requests have spent and hold; null when
-- nothing caps it. Locks the membership, then the key.
create function private.room_under_caps(p_key_id uuid, p_release bigint)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_key public.api_keys;
  v_member public.account_members;
  v_month date := date_trunc('month', now() at time zone 'UTC')::date;
  v_others bigint;
  v_member_used bigint;
  v_room bigint;
begin
  select * into v_key from public.api_keys where id = p_key_id;
  if v_key.member_user_id is not null then
    select * into v_member from public.account_members
     where account_id = v_key.account_id and user_id = v_key.member_user_id for no key update;
  end if;
  select * into v_key from public.api_keys where id = p_key_id for no key update;
  if v_key.spend_limit is not null or v_key.monthly_spend_limit is not null then
    select coalesce(sum(hold), 0) - p_release into v_others from public.usage_events where api_key_id = v_key.id and status = 'held';
    v_room := least(v_key.spend_limit - v_key.spent - v_others,
                    v_key.monthly_spend_limit - (case when v_key.spent_month = v_month then v_key.month_spent else 0 end) - v_others);
  end if;
  if v_member.monthly_budget is not null then
    select coalesce(sum(case when k.spent_month = v_month then k.month_spent else 0 end), 0)
           + coalesce((select sum(e.hold) from public.usage_events e
                        where e.status = 'held' and e.api_key_id in (select k2.id from public.api_keys k2
                                                                       where k2.account_id = v_key.account_id and k2.member_user_id = v_key.member_user_id)), 0)
           - p_release
      into v_member_used
      from public.api_keys k where k.account_id = v_key.account_id and k.member_user_id = v_key.member_user_id;
    v_room := least(v_room, v_member.monthly_budget - v_member_used);
  end if;
  return v_room;
end;
$$;
revoke all on function private.room_under_caps(uuid, bigint) from public;

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
  v_room bigint;
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
  -- account is locked; otherwise the member's budget and the key's caps are
  -- read now, under their locks (the membership's, then the key's).
  if v_amount <= v_release then
    v_charge := v_amount;
    v_event := private.record_settlement(v_event, p_outcome, v_usage, p_usage_source, p_error, v_amount, v_charge, v_upstream_cost);
  else
    v_room := private.room_under_caps(v_event.api_key_id, v_release);
  end if;

  -- Lock 3: the account, by one update in the usual case. Beyond the hold, what
  -- may still be charged depends on the balance, read from the locked row first.
  if v_charge is null then
    select balance - held + credit_limit into v_available from public.accounts where id = v_event.account_id for no key update;
    -- Beyond the hold, as far as the balance goes and, like it, no further than the
    -- key's spend caps and the member's budget allow (never less than the hold).
    v_charge := least(v_amount, greatest(0, v_available + v_release),
                      case when v_room is null then v_amount else greatest(v_release, v_room) end);
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

create or replace function private.lock_for_settlement(p_request_ids text[])
returns void
language plpgsql
set search_path = ''
as $$
begin
  perform 1 from public.usage_events where request_id = any (p_request_ids) order by request_id for update;
  -- A member's key: the membership before the key, as authorize takes them (a settlement
  -- beyond its hold reads the member's budget under it).
  perform 1 from public.account_members m
   where (m.account_id, m.user_id) in (select k.account_id, k.member_user_id from public.api_keys k
                                        where k.member_user_id is not null
                                          and k.id in (select api_key_id from public.usage_events where request_id = any (p_request_ids)))
   order by m.account_id, m.user_id for no key update;
  perform 1 from public.api_keys
   where id in (select api_key_id from public.usage_events where request_id = any (p_request_ids))
   order by id for no key update;
  perform 1 from public.accounts
   where id in (select account_id from public.usage_events where request_id = any (p_request_ids))
   order by id for no key update;
end;
$$;

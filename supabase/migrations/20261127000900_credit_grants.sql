-- Money model v2, part one: every credit is a grant, grants expire, and
-- customers redeem codes.
--
-- Grants. Every credit that enters an account (signup, purchase, a pack's bonus,
-- a subscription's allowance, a manual grant, a code, a dispute won) becomes a
-- row of public.credit_grants: amount, category (paid or promotional), priority,
-- optional expiry, and what is left of it. Spending draws from the grants in one
-- documented order:
--   1. promotional before paid;
--   2. higher priority first;
--   3. earliest expiry first (no expiry last);
--   4. oldest first.
-- A refund or dispute takes back first from the grants of the payment it is
-- about, then in the same order. The bookkeeping is one trigger on the ledger:
-- every row of public.credit_ledger moves the grants with it, under the lock on
-- the account that private.post_ledger already holds (it updates the account
-- before it inserts the row), so concurrent charges of one account are applied
-- one after another. An account may go below zero (its credit limit): then no
-- grant has anything left, and credits that arrive pay that debt first.
--
-- Invariant (checked by the tests after every scenario):
--   balance = Σ ledger, and Σ remaining of the grants not yet expired = greatest(balance, 0).
--
-- Expiry is a ledger row (reason 'expiry', one per grant), written by
-- public.expire_grants(now), which pg_cron runs every minute.
--
-- Lock order (see the one-lock-order migration): redemption_codes, then
-- accounts (post_ledger), then credit_grants (only ever under the account's lock).

create table public.credit_grants (
  id bigint generated always as identity primary key,
  account_id uuid not null references public.accounts (id),
  ledger_entry_id bigint not null,
  source text not null,
  category text not null,
  priority integer not null default 0,
  amount bigint not null,
  remaining bigint not null,
  expires_at timestamptz,
  expired_at timestamptz,
  -- The business key it came with (a Stripe checkout session, an invoice, a code).
  reference text,
  created_at timestamptz not null default now(),
  constraint credit_grants_category check (category in ('paid', 'promotional')),
  constraint credit_grants_amounts check (amount > 0 and remaining >= 0 and remaining <= amount),
  constraint credit_grants_source_format check (source ~ '^[a-z_]{1,32}$')
);
comment on table public.credit_grants is 'Every credit an account received, and what is left of it; spent in the order of the credit_grants migration.';
create index credit_grants_draw_idx on public.credit_grants (account_id, category desc, priority desc, expires_at nulls last, id)
  where remaining > 0 and expired_at is null;
create index credit_grants_due_idx on public.credit_grants (expires_at) where expired_at is null and expires_at is not null;
create index credit_grants_reference_idx on public.credit_grants (reference) where reference is not null;
alter table public.credit_grants enable row level security;
create policy "Users can read their own grants."
  on public.credit_grants for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));
grant select on public.credit_grants to authenticated, service_role;

-- Plans say whether a subscription's monthly allowance outlives its period.
alter table public.plans add column allowance_rolls_over boolean not null default false;
comment on column public.plans.allowance_rolls_over is 'false: the monthly credits expire at the end of the period they were paid for.';

-- The terms a caller wants for the grant of the next credit it posts, in this
-- transaction: {"category", "priority", "expires_at", "source"}. Read and cleared
-- by the ledger trigger.
create function private.set_next_grant_terms(p_terms jsonb)
returns void
language sql
set search_path = ''
as $$
  select set_config('tollgate.next_grant_terms', p_terms::text, true)
$$;
revoke all on function private.set_next_grant_terms(jsonb) from public;

-- Draws `p_amount` from the account's grants, in order, those of `p_first`
-- (a reference) first (a grant without a reference is not the payment's: the
-- coalesce keeps null out of the sort, where desc would put it first); what the
-- grants do not cover is debt. Returns what was drawn.
create function private.draw_from_grants(p_account_id uuid, p_amount bigint, p_first text default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_drawn bigint;
begin
  -- One statement (plan cached by PL/pgSQL): each grant, in order, gives what the
  -- grants before it did not cover, up to what it has left. The account's lock
  -- (held by every caller) serializes the draws of one account.
  with ordered as (
    select g.id, g.remaining,
           sum(g.remaining) over (
             order by coalesce(p_first is not null and g.reference = p_first, false) desc,
                      g.category = 'promotional' desc, g.priority desc, g.expires_at nulls last, g.id
           ) - g.remaining as before
      from public.credit_grants g
     where g.account_id = p_account_id and g.remaining > 0 and g.expired_at is null
  ), drawn as (
    update public.credit_grants g
       set remaining = g.remaining - least(o.remaining, p_amount - o.before)
      from ordered o
     where g.id = o.id and o.before < p_amount
    returning least(o.remaining, p_amount - o.before) as taken
  )
  select coalesce(sum(taken), 0)::bigint into v_drawn from drawn;
  return v_drawn;
end;
$$;
revoke all on function private.draw_from_grants(uuid, bigint, text) from public;

create function private.add_grant(p_entry public.credit_ledger, p_source text, p_category text, p_amount bigint,
                                  p_priority integer, p_expires_at timestamptz, p_reference text, p_balance_before bigint)
returns void
language plpgsql
set search_path = ''
as $$
declare
  -- Credits pay the account's debt (a balance below zero) first.
  v_debt bigint := greatest(0, -p_balance_before);
  v_remaining bigint := greatest(0, p_amount - v_debt);
begin
  if p_amount <= 0 then
    return;
  end if;
  insert into public.credit_grants (account_id, ledger_entry_id, source, category, priority, amount, remaining, expires_at, reference)
  values (p_entry.account_id, p_entry.id, p_source, p_category, p_priority, p_amount, v_remaining, p_expires_at, p_reference);
end;
$$;
revoke all on function private.add_grant(public.credit_ledger, text, text, bigint, integer, timestamptz, text, bigint) from public;

create function private.ledger_moves_grants()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_terms jsonb := nullif(current_setting('tollgate.next_grant_terms', true), '')::jsonb;
  v_before bigint := new.balance_after - new.amount;
  v_payment public.stripe_payments;
  v_pack public.credit_packs;
  v_paid bigint;
  v_period_end double precision;
  v_rolls boolean;
begin
  perform set_config('tollgate.next_grant_terms', '', true);
  if new.reason = 'expiry' then
    return null; -- expire_grants has already emptied the grant it writes off
  end if;
  if new.amount < 0 then
    perform private.draw_from_grants(new.account_id, -new.amount,
      case when new.reason in ('refund', 'dispute') then current_setting('tollgate.draw_first', true) end);
    perform set_config('tollgate.draw_first', '', true);
    return null;
  end if;

  if v_terms is not null then
    perform private.add_grant(new, coalesce(v_terms ->> 'source', new.reason), coalesce(v_terms ->> 'category', 'promotional'),
      new.amount, coalesce((v_terms ->> 'priority')::integer, 0), (v_terms ->> 'expires_at')::timestamptz,
      coalesce(v_terms ->> 'reference', new.reference), v_before);
  elsif new.reason = 'purchase' then
    -- A pack's credits are paid for; its bonus is promotional (drawn first, taken back first on a refund).
    select * into v_payment from public.stripe_payments where checkout_session_id = new.reference;
    select * into v_pack from public.credit_packs where id = v_payment.credit_pack_id;
    v_paid := case when v_pack.id is not null and v_pack.credits + v_pack.bonus_credits > 0
                   then new.amount * v_pack.credits / (v_pack.credits + v_pack.bonus_credits) else new.amount end;
    -- The debt is paid from the paid part first.
    perform private.add_grant(new, 'purchase', 'paid', v_paid, 0, null, new.reference, v_before);
    perform private.add_grant(new, 'bonus', 'promotional', new.amount - v_paid, 0, null, new.reference, least(0, v_before + v_paid));
  elsif new.reason = 'subscription' then
    -- A monthly allowance ends with the period it was paid for, unless the plan rolls it over.
    select (e.payload -> 'lines' -> 'data' -> 0 -> 'period' ->> 'end')::double precision
      into v_period_end
      from public.stripe_events e where e.business_key = new.reference and e.type = 'invoice.paid' order by e.received_at limit 1;
    -- The invoice's plan when it is recorded already, else the account's (set by the subscription's checkout).
    select p.allowance_rolls_over into v_rolls
      from public.plans p
     where p.id = coalesce((select i.plan_id from public.stripe_invoices i where i.id = new.reference),
                           (select a.plan from public.accounts a where a.id = new.account_id));
    perform private.add_grant(new, 'subscription', 'paid', new.amount, 0,
      case when coalesce(v_rolls, false) then null else to_timestamp(v_period_end) end, new.reference, v_before);
  else
    perform private.add_grant(new, new.reason,
      case when new.reason in ('signup', 'grant') then 'promotional' else 'paid' end,
      new.amount, 0, null, new.reference, v_before);
  end if;
  return null;
end;
$$;
revoke all on function private.ledger_moves_grants() from public;

create trigger credit_ledger_moves_grants after insert on public.credit_ledger
  for each row execute function private.ledger_moves_grants();

-- Every money movement but a request's charge (usage_events has those) is in the
-- audit log too, with who caused it when someone signed in did.
create function private.audit_ledger()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
begin
  if new.reason <> 'usage' then
    perform private.audit('ledger_' || new.reason, new.account_id::text, jsonb_build_object(
      'entry_id', new.id, 'amount', new.amount, 'balance_after', new.balance_after, 'reference', new.reference, 'note', new.note));
  end if;
  return null;
end;
$$;
revoke all on function private.audit_ledger() from public;
create trigger credit_ledger_audited after insert on public.credit_ledger
  for each row execute function private.audit_ledger();

-- What every account has now becomes its opening grant (paid, no expiry).
insert into public.credit_grants (account_id, ledger_entry_id, source, category, amount, remaining)
select a.id, coalesce((select max(l.id) from public.credit_ledger l where l.account_id = a.id), 0), 'opening_balance', 'paid', a.balance, a.balance
  from public.accounts a where a.balance > 0;

-- Redefined whole: a claw-back names its payment to the ledger trigger, which
-- then takes back from that payment's grants first. Otherwise unchanged.
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
begin
  select * into v_payment from public.stripe_payments where id = p_payment_id for update;
  if v_payment.status <> 'credited' or coalesce(v_payment.amount_total, 0) <= 0 then
    return;
  end if;
  v_target := floor(v_payment.credits::numeric
                    * least(v_payment.amount_total, v_payment.refunded_amount + v_payment.disputed_amount)
                    / v_payment.amount_total)::bigint;
  v_owed := v_target - v_payment.debited - v_payment.uncollected;
  if v_owed <= 0 then
    return;
  end if;
  select * into v_account from public.accounts where id = v_payment.account_id for no key update;
  v_debit := least(v_owed, greatest(0, v_account.balance - v_account.held + v_account.credit_limit));
  if v_debit > 0 then
    perform set_config('tollgate.draw_first', coalesce(v_payment.checkout_session_id, ''), true);
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

-- Expiry ------------------------------------------------------------------------------
-- Writes off what is left of every grant whose time has come, one ledger row per
-- grant (reason 'expiry', reference 'expiry:<grant id>', so a second run writes
-- nothing twice). Accounts are locked in id order. An account whose requests in
-- flight hold part of what is due is left for a later run, once they settle.
-- `p_now` is a parameter so the tests control time.
create function public.expire_grants(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account uuid;
  v_grant record;
  v_grants integer := 0;
  v_amount bigint := 0;
  v_available bigint;
  v_due bigint;
  v_deferred integer := 0;
begin
  for v_account in
    select distinct g.account_id from public.credit_grants g
     where g.expired_at is null and g.expires_at <= p_now order by g.account_id
  loop
    select balance - held + credit_limit into v_available from public.accounts where id = v_account for no key update;
    select coalesce(sum(g.remaining), 0) into v_due from public.credit_grants g
     where g.account_id = v_account and g.expired_at is null and g.expires_at <= p_now;
    -- Requests in flight hold part of what is due: writing it off now would take the
    -- account past its credit limit. It waits for them to settle (the next run).
    if v_due > v_available then
      v_deferred := v_deferred + 1;
      continue;
    end if;
    for v_grant in
      select g.id, g.remaining from public.credit_grants g
       where g.account_id = v_account and g.expired_at is null and g.expires_at <= p_now
       order by g.id for update
    loop
      update public.credit_grants set remaining = 0, expired_at = p_now where id = v_grant.id;
      if v_grant.remaining > 0 then
        perform private.post_ledger(v_account, -v_grant.remaining, 'expiry', 'expiry:' || v_grant.id,
                                    format('grant %s expired', v_grant.id));
        v_amount := v_amount + v_grant.remaining;
      end if;
      v_grants := v_grants + 1;
    end loop;
  end loop;
  return jsonb_build_object('expired', v_grants, 'amount', v_amount, 'deferred_accounts', v_deferred);
end;
$$;
revoke all on function public.expire_grants(timestamptz) from public, anon, authenticated;
grant execute on function public.expire_grants(timestamptz) to service_role;

do $$
begin
  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('tollgate-expire-grants', '* * * * *', 'select public.expire_grants(now())');
  end if;
end;
$$;

-- Redemption codes -------------------------------------------------------------------------
-- The operator creates codes; a customer redeems one, once per account, while it
-- has uses left and has not run out of time. The code row is locked while it is
-- redeemed, so concurrent redemptions are counted one after another.

create table public.redemption_codes (
  code text primary key,
  credits bigint not null,
  category text not null default 'promotional',
  -- The grant's own expiry: a fixed time, or a lifetime from redemption.
  grant_expires_at timestamptz,
  grant_lifetime interval,
  redeemable_until timestamptz,
  max_uses integer not null,
  uses integer not null default 0,
  created_by uuid,
  created_at timestamptz not null default now(),
  constraint redemption_codes_format check (code ~ '^[A-Z0-9][A-Z0-9-]{3,63}$'),
  constraint redemption_codes_credits check (credits > 0),
  constraint redemption_codes_category check (category in ('paid', 'promotional')),
  constraint redemption_codes_uses check (max_uses > 0 and uses >= 0 and uses <= max_uses)
);
alter table public.redemption_codes enable row level security;
-- No policies: customers redeem through redeem_code, operators manage through their functions.
grant select on public.redemption_codes to service_role;

create table public.code_redemptions (
  code text not null references public.redemption_codes (code),
  account_id uuid not null references public.accounts (id),
  ledger_entry_id bigint not null,
  redeemed_at timestamptz not null default now(),
  primary key (code, account_id)
);
alter table public.code_redemptions enable row level security;
create policy "Users can read their own redemptions."
  on public.code_redemptions for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));
grant select on public.code_redemptions to authenticated, service_role;

-- Creates a code (operators only; audited). Codes are stored upper-case.
create function public.operator_create_code(p_code text, p_credits bigint, p_max_uses integer, p_category text default 'promotional',
                                            p_grant_expires_at timestamptz default null, p_grant_lifetime interval default null,
                                            p_redeemable_until timestamptz default null)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code public.redemption_codes;
begin
  perform private.require_operator();
  begin
    insert into public.redemption_codes (code, credits, category, grant_expires_at, grant_lifetime, redeemable_until, max_uses, created_by)
    values (upper(trim(p_code)), p_credits, p_category, p_grant_expires_at, p_grant_lifetime, p_redeemable_until, p_max_uses, auth.uid())
    returning * into v_code;
  exception
    when unique_violation then raise exception 'the code % exists already', upper(trim(p_code)) using errcode = '23505';
    when check_violation or not_null_violation then
      raise exception 'a code is 4 to 64 letters, digits and dashes, with credits > 0, max uses > 0 and category paid or promotional'
        using errcode = '22023';
  end;
  perform private.audit('create_code', v_code.code, to_jsonb(v_code) - 'code');
  return to_jsonb(v_code);
end;
$$;

-- Redeems a code for the caller's account: the credits become a grant of the
-- code's category and expiry.
create function public.redeem_code(p_code text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_code public.redemption_codes;
  v_account uuid;
  v_entry public.credit_ledger;
begin
  select a.id into v_account from public.accounts a where a.user_id = auth.uid();
  if v_account is null then
    raise exception 'sign in to redeem a code' using errcode = '42501';
  end if;
  select * into v_code from public.redemption_codes where code = upper(trim(coalesce(p_code, ''))) for update;
  if not found then
    raise exception 'no such code' using errcode = 'PT404';
  end if;
  if v_code.redeemable_until is not null and v_code.redeemable_until < now() then
    raise exception 'this code has expired' using errcode = 'P0001', hint = 'code_expired';
  end if;
  if v_code.uses >= v_code.max_uses then
    raise exception 'this code has been used up' using errcode = 'P0001', hint = 'code_used_up';
  end if;
  if exists (select 1 from public.code_redemptions r where r.code = v_code.code and r.account_id = v_account) then
    raise exception 'this account has redeemed this code already' using errcode = 'P0001', hint = 'code_already_redeemed';
  end if;
  update public.redemption_codes set uses = uses + 1 where code = v_code.code;
  perform private.set_next_grant_terms(jsonb_build_object(
    'source', 'code', 'category', v_code.category, 'reference', v_code.code,
    'expires_at', coalesce(v_code.grant_expires_at, now() + v_code.grant_lifetime)));
  v_entry := private.post_ledger(v_account, v_code.credits, 'code', 'code:' || v_code.code || ':' || v_account, format('code %s', v_code.code));
  insert into public.code_redemptions (code, account_id, ledger_entry_id) values (v_code.code, v_account, v_entry.id);
  return jsonb_build_object('code', v_code.code, 'credits', v_code.credits, 'balance', v_entry.balance_after);
end;
$$;

revoke all on function public.operator_create_code(text, bigint, integer, text, timestamptz, interval, timestamptz), public.redeem_code(text)
  from public, anon, service_role;
grant execute on function public.operator_create_code(text, bigint, integer, text, timestamptz, interval, timestamptz), public.redeem_code(text)
  to authenticated;

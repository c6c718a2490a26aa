-- Tollgate's books: accounts, keys, models, the credit ledger, usage events,
-- credit packs, Stripe events and alerts.
--
-- Money is bigint micro-units of the account currency (1 USD = 1,000,000).
-- Prices are micro-units per 1,000,000 tokens, per token bucket.
-- Every change of balance goes through functions (next migration); no API role
-- has a write grant on a money table.

create schema if not exists private;
revoke all on schema private from public;
comment on schema private is 'Helpers of the money functions. Not exposed through the API.';

-- Settings -------------------------------------------------------------------

create table public.billing_settings (
  id boolean primary key default true check (id),
  signup_credits bigint not null default 0 check (signup_credits >= 0),
  default_credit_limit bigint not null default 0 check (default_credit_limit >= 0),
  default_low_balance_threshold bigint not null default 1000000 check (default_low_balance_threshold >= 0),
  updated_at timestamptz not null default now()
);
comment on table public.billing_settings is 'One row: what a new account starts with.';
insert into public.billing_settings default values;
alter table public.billing_settings enable row level security;
-- No policies: only the service role (which bypasses RLS) reads or changes settings.

-- Accounts -------------------------------------------------------------------

create table public.accounts (
  id uuid primary key default gen_random_uuid(),
  user_id uuid not null unique references auth.users (id),
  balance bigint not null default 0,
  held bigint not null default 0,
  credit_limit bigint not null default 0,
  low_balance_threshold bigint not null default 1000000,
  plan text not null default 'free',
  -- ok → low (below the threshold) → depleted (nothing left, credit included); one alert per crossing.
  balance_state text not null default 'ok',
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint accounts_balance_state check (balance_state in ('ok', 'low', 'depleted')),
  constraint accounts_held_not_negative check (held >= 0),
  constraint accounts_credit_limit_not_negative check (credit_limit >= 0),
  constraint accounts_threshold_not_negative check (low_balance_threshold >= 0),
  constraint accounts_plan_format check (plan ~ '^[a-z0-9_-]{1,32}$'),
  -- The hard floor: holds and charges can never take the account past its credit limit.
  constraint accounts_within_credit_limit check (balance - held >= -credit_limit)
);
comment on column public.accounts.balance is 'Micro-units. Always equal to the sum of the account''s credit_ledger amounts.';
comment on column public.accounts.held is 'Micro-units reserved by requests in flight. Always equal to the sum of open holds.';
alter table public.accounts enable row level security;

create policy "Users can read their own account."
  on public.accounts for select to authenticated
  using (user_id = (select auth.uid()));

create policy "Users can set their own low-balance threshold."
  on public.accounts for update to authenticated
  using (user_id = (select auth.uid()))
  with check (user_id = (select auth.uid()));

-- API keys -------------------------------------------------------------------

create table public.api_keys (
  id uuid primary key default gen_random_uuid(),
  account_id uuid not null references public.accounts (id),
  name text not null,
  prefix text not null,
  key_hash text not null unique,
  expires_at timestamptz,
  revoked_at timestamptz,
  -- Policy: null means "no limit".
  allowed_models text[],
  allowed_ips cidr[],
  spend_limit bigint,
  monthly_spend_limit bigint,
  max_concurrent integer,
  requests_per_minute integer,
  tokens_per_minute integer,
  spent bigint not null default 0,
  -- Spend of the calendar month (UTC) that starts on spent_month.
  month_spent bigint not null default 0,
  spent_month date,
  last_used_at timestamptz,
  created_at timestamptz not null default now(),
  constraint api_keys_name_length check (char_length(name) between 1 and 100),
  constraint api_keys_hash_format check (key_hash ~ '^[0-9a-f]{64}$'),
  constraint api_keys_spend_limit_not_negative check (spend_limit >= 0),
  constraint api_keys_monthly_spend_limit_not_negative check (monthly_spend_limit >= 0),
  constraint api_keys_max_concurrent_positive check (max_concurrent > 0),
  constraint api_keys_requests_per_minute_positive check (requests_per_minute > 0),
  constraint api_keys_tokens_per_minute_positive check (tokens_per_minute > 0),
  constraint api_keys_spent_not_negative check (spent >= 0)
);
comment on column public.api_keys.key_hash is 'Hex SHA-256 of the key. The plaintext is shown once, at creation, and never stored.';
create index api_keys_account_id_idx on public.api_keys (account_id);
alter table public.api_keys enable row level security;

create policy "Users can read their own keys."
  on public.api_keys for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

-- Models and prices ----------------------------------------------------------

create table public.models (
  id text primary key,
  provider text not null,
  upstream_model text not null,
  display_name text,
  enabled boolean not null default true,
  max_output_tokens bigint not null,
  -- What the upstream charges us, micro-units per 1M tokens. Null: unknown.
  cost_input bigint,
  cost_cached_input bigint,
  cost_cache_write bigint,
  cost_cache_write_1h bigint,
  cost_output bigint,
  cost_reasoning bigint,
  cost_image bigint,
  cost_audio bigint,
  -- What we charge, micro-units per 1M tokens. A model without input and output
  -- prices is unpriced and refused. Other null buckets fall back (see
  -- private.effective_rates): cached input, cache write, image and audio to input,
  -- 1-hour cache write to cache write, reasoning to output.
  price_input bigint,
  price_cached_input bigint,
  price_cache_write bigint,
  price_cache_write_1h bigint,
  price_output bigint,
  price_reasoning bigint,
  price_image bigint,
  price_audio bigint,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint models_id_format check (id ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$'),
  constraint models_provider_format check (provider ~ '^[a-z0-9-]{1,32}$'),
  constraint models_max_output_tokens_positive check (max_output_tokens > 0),
  constraint models_rates_not_negative check (
    0 <= all (array[
      cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h,
      cost_output, cost_reasoning, cost_image, cost_audio,
      price_input, price_cached_input, price_cache_write, price_cache_write_1h,
      price_output, price_reasoning, price_image, price_audio
    ]) is not false
  )
);
alter table public.models enable row level security;

create policy "Anyone can read enabled models."
  on public.models for select to anon, authenticated
  using (enabled);

-- The public price list. Runs with the caller's rights, and the API roles may
-- read only these columns of models: what the upstream charges us stays private.
create view public.model_prices
with (security_invoker = true)
as
select
  id, provider, display_name, max_output_tokens,
  price_input, price_cached_input, price_cache_write, price_cache_write_1h,
  price_output, price_reasoning, price_image, price_audio, created_at
from public.models
where enabled and price_input is not null and price_output is not null;

-- The credit ledger ----------------------------------------------------------

create table public.credit_ledger (
  id bigint generated always as identity primary key,
  account_id uuid not null references public.accounts (id),
  amount bigint not null,
  balance_after bigint not null,
  reason text not null,
  reference text,
  note text,
  created_at timestamptz not null default now(),
  constraint credit_ledger_amount_not_zero check (amount <> 0),
  constraint credit_ledger_reason_format check (reason ~ '^[a-z_]{1,32}$')
);
comment on table public.credit_ledger is 'Append-only. Every change of an account''s balance, signed.';
comment on column public.credit_ledger.reference is 'The business key of the change (request id, Stripe session, grant reference). One row per reason and reference.';
create unique index credit_ledger_reason_reference_key on public.credit_ledger (reason, reference) where reference is not null;
create index credit_ledger_account_id_created_at_idx on public.credit_ledger (account_id, created_at);
alter table public.credit_ledger enable row level security;

create policy "Users can read their own ledger."
  on public.credit_ledger for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

create function private.refuse_ledger_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'credit_ledger is append-only: % is not allowed', tg_op
    using errcode = '42501', hint = 'Post a correcting entry instead.';
end;
$$;

create trigger credit_ledger_append_only
  before update or delete on public.credit_ledger
  for each row execute function private.refuse_ledger_change();
create trigger credit_ledger_no_truncate
  before truncate on public.credit_ledger
  for each statement execute function private.refuse_ledger_change();

-- Usage events: one row per request ------------------------------------------

create table public.usage_events (
  request_id text primary key,
  account_id uuid not null references public.accounts (id),
  api_key_id uuid not null references public.api_keys (id),
  model_id text not null references public.models (id),
  provider text not null,
  upstream_model text not null,
  status text not null default 'held',
  hold bigint not null,
  max_input_tokens bigint not null,
  max_output_tokens bigint not null,
  choices integer not null default 1,
  output_capped boolean not null default false,
  -- Effective price and cost per bucket, frozen when the hold was taken.
  rates jsonb not null,
  -- Token buckets are disjoint: output excludes reasoning, input excludes cached
  -- input and cache writes.
  input_tokens bigint not null default 0,
  cached_input_tokens bigint not null default 0,
  cache_write_tokens bigint not null default 0,
  cache_write_1h_tokens bigint not null default 0,
  output_tokens bigint not null default 0,
  reasoning_tokens bigint not null default 0,
  image_tokens bigint not null default 0,
  audio_tokens bigint not null default 0,
  usage_source text,
  amount bigint,
  charged bigint,
  upstream_cost bigint,
  error text,
  created_at timestamptz not null default now(),
  settled_at timestamptz,
  constraint usage_events_request_id_length check (char_length(request_id) between 1 and 128),
  constraint usage_events_status check (status in ('held', 'completed', 'aborted', 'failed', 'expired')),
  constraint usage_events_usage_source check (usage_source in ('provider', 'tokenizer', 'estimate')),
  constraint usage_events_hold_not_negative check (hold >= 0),
  constraint usage_events_charged_within_amount check (charged between 0 and amount),
  constraint usage_events_settled_when_closed check ((status = 'held') = (settled_at is null))
);
comment on column public.usage_events.amount is 'Price of the usage, rounded up once per request.';
comment on column public.usage_events.charged is 'What was debited. Below amount only when usage overran the hold and the balance could not cover it.';
comment on column public.usage_events.upstream_cost is 'What the upstream charges us for the same usage (null when the model has no cost rates).';
create index usage_events_account_id_created_at_idx on public.usage_events (account_id, created_at desc);
create index usage_events_api_key_id_created_at_idx on public.usage_events (api_key_id, created_at);
create index usage_events_open_holds_idx on public.usage_events (created_at) where status = 'held';
create index usage_events_open_holds_by_key_idx on public.usage_events (api_key_id) where status = 'held';
alter table public.usage_events enable row level security;

create policy "Users can read their own usage."
  on public.usage_events for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

-- Credit packs (sold through Stripe Payment Links) ---------------------------

create table public.credit_packs (
  id uuid primary key default gen_random_uuid(),
  name text not null,
  stripe_payment_link_id text unique,
  stripe_price_id text,
  payment_link_url text,
  currency text not null default 'usd',
  unit_amount bigint not null,
  credits bigint not null,
  bonus_credits bigint not null default 0,
  active boolean not null default true,
  created_at timestamptz not null default now(),
  updated_at timestamptz not null default now(),
  constraint credit_packs_unit_amount_positive check (unit_amount > 0),
  constraint credit_packs_credits_positive check (credits > 0),
  constraint credit_packs_bonus_not_negative check (bonus_credits >= 0),
  constraint credit_packs_currency_format check (currency ~ '^[a-z]{3}$')
);
comment on column public.credit_packs.unit_amount is 'What the customer pays, in the currency''s minor unit (cents).';
alter table public.credit_packs enable row level security;

create policy "Signed-in users can read active credit packs."
  on public.credit_packs for select to authenticated
  using (active);

-- Stripe events --------------------------------------------------------------

create table public.stripe_events (
  id text primary key,
  type text not null,
  business_key text,
  account_id uuid references public.accounts (id),
  status text not null,
  payload jsonb not null,
  received_at timestamptz not null default now()
);
create index stripe_events_account_id_idx on public.stripe_events (account_id);
alter table public.stripe_events enable row level security;
-- No policies: Stripe events are read and written by the service role only.

-- Alerts ---------------------------------------------------------------------

create table public.alerts (
  id bigint generated always as identity primary key,
  account_id uuid references public.accounts (id),
  kind text not null,
  message text not null,
  details jsonb not null default '{}',
  created_at timestamptz not null default now(),
  delivered_at timestamptz,
  delivery_status text,
  constraint alerts_kind_format check (kind ~ '^[a-z_]{1,64}$')
);
create index alerts_account_id_created_at_idx on public.alerts (account_id, created_at desc);
alter table public.alerts enable row level security;

create policy "Users can read their own alerts."
  on public.alerts for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

-- Plans: rate limits, and subscriptions with monthly included credits -----------

create table public.plans (
  id text primary key,
  name text not null,
  monthly_credits bigint not null default 0,
  stripe_price_id text unique,
  stripe_payment_link_id text unique,
  payment_link_url text,
  currency text not null default 'usd',
  unit_amount bigint,
  -- Rate limits for the plan's accounts (a key may override them); null: none.
  requests_per_minute integer,
  tokens_per_minute integer,
  active boolean not null default true,
  created_at timestamptz not null default now(),
  constraint plans_rate_limits_positive check (requests_per_minute > 0 and tokens_per_minute > 0),
  constraint plans_id_format check (id ~ '^[a-z0-9_-]{1,32}$'),
  constraint plans_monthly_credits_not_negative check (monthly_credits >= 0)
);
alter table public.plans enable row level security;

create policy "Signed-in users can read active plans."
  on public.plans for select to authenticated
  using (active);

insert into public.plans (id, name, monthly_credits, requests_per_minute, tokens_per_minute)
values ('free', 'Free', 0, 60, 1000000);
alter table public.accounts add constraint accounts_plan_fkey foreign key (plan) references public.plans (id);

-- Grants ---------------------------------------------------------------------
-- Explicit, because new Supabase projects no longer grant new objects to the API
-- roles. Nobody gets a write grant on accounts' money, keys, the ledger, usage or
-- Stripe events: those change only through the functions of the next migration.

grant select (
  id, provider, display_name, enabled, max_output_tokens,
  price_input, price_cached_input, price_cache_write, price_cache_write_1h,
  price_output, price_reasoning, price_image, price_audio, created_at
) on public.models to anon, authenticated;
grant select on public.model_prices to anon, authenticated, service_role;

grant select on public.accounts, public.api_keys, public.credit_ledger, public.usage_events,
  public.credit_packs, public.alerts, public.plans to authenticated;
grant update (low_balance_threshold) on public.accounts to authenticated;

grant select on all tables in schema public to service_role;
grant insert, update, delete on public.models, public.credit_packs, public.plans to service_role;
grant update on public.billing_settings to service_role;
grant update (credit_limit, low_balance_threshold, plan) on public.accounts to service_role;
grant update (delivered_at, delivery_status) on public.alerts to service_role;

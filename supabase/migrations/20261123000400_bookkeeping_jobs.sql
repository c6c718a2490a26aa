-- The books close themselves: reconciliation, stale holds, balance alerts and
-- their delivery, daily rollups. Every job is a function taking the current
-- time, so tests control it; pg_cron runs them where it is installed.

alter table public.billing_settings
  add column alert_webhook_url text,
  add column stale_hold_after interval not null default interval '15 minutes',
  add constraint billing_settings_alert_webhook_url check (alert_webhook_url ~ '^https?://'),
  add constraint billing_settings_stale_hold_after check (stale_hold_after >= interval '5 minutes');
comment on column public.billing_settings.stale_hold_after is
  'A hold older than this belongs to a request whose function died before settling (the longest request is 300 s).';

-- The alerts table is the outbox.
alter table public.alerts
  add column dedupe_key text,
  add column delivery_attempts integer not null default 0,
  add column net_request_id bigint,
  add column sent_at timestamptz,
  add column resolved_at timestamptz;
-- An open alert about the same thing is not raised twice (reconciliation runs often).
create unique index alerts_open_dedupe_key on public.alerts (dedupe_key) where dedupe_key is not null and resolved_at is null;
create index alerts_undelivered_idx on public.alerts (created_at) where delivered_at is null;
grant update (delivery_status, delivered_at, resolved_at) on public.alerts to service_role;

-- Daily rollups ------------------------------------------------------------------

create table public.usage_daily (
  account_id uuid not null references public.accounts (id),
  model_id text not null,
  day date not null,
  requests bigint not null,
  input_tokens bigint not null,
  cached_input_tokens bigint not null,
  cache_write_tokens bigint not null,
  cache_write_1h_tokens bigint not null,
  output_tokens bigint not null,
  reasoning_tokens bigint not null,
  image_tokens bigint not null,
  audio_tokens bigint not null,
  amount bigint not null,
  charged bigint not null,
  upstream_cost bigint not null,
  margin bigint not null,
  primary key (account_id, day, model_id)
);
comment on table public.usage_daily is 'Settled requests per account, model and UTC day. margin = charged - upstream_cost.';
alter table public.usage_daily enable row level security;

create policy "Users can read their own rollups."
  on public.usage_daily for select to authenticated
  using (account_id in (select a.id from public.accounts a where a.user_id = (select auth.uid())));

grant select on public.usage_daily to authenticated, service_role;

create function private.raise_alert_once(p_account_id uuid, p_kind text, p_message text, p_details jsonb, p_dedupe_key text)
returns boolean
language plpgsql
set search_path = ''
as $$
begin
  insert into public.alerts (account_id, kind, message, details, dedupe_key)
  values (p_account_id, p_kind, p_message, p_details, p_dedupe_key)
  on conflict (dedupe_key) where dedupe_key is not null and resolved_at is null do nothing;
  return found;
end;
$$;
revoke all on function private.raise_alert_once(uuid, text, text, jsonb, text) from public;

-- Reconciliation -------------------------------------------------------------------
-- Verifies every account's invariants and every credited Stripe payment and
-- invoice against its ledger row. A mismatch becomes an alert, never a fix.

create function public.reconcile_books(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row record;
  v_found integer := 0;
begin
  for v_row in
    select a.id, a.balance, a.held,
           coalesce((select sum(l.amount) from public.credit_ledger l where l.account_id = a.id), 0) as ledger_sum,
           coalesce((select sum(e.hold) from public.usage_events e where e.account_id = a.id and e.status = 'held'), 0) as open_holds
      from public.accounts a
  loop
    if v_row.balance <> v_row.ledger_sum then
      v_found := v_found + 1;
      perform private.raise_alert_once(v_row.id, 'ledger_mismatch', 'The balance does not equal the sum of the ledger.',
        jsonb_build_object('balance', v_row.balance, 'ledger_sum', v_row.ledger_sum, 'checked_at', p_now),
        'ledger_mismatch:' || v_row.id);
    end if;
    if v_row.held <> v_row.open_holds then
      v_found := v_found + 1;
      perform private.raise_alert_once(v_row.id, 'holds_mismatch', 'Held credits do not equal the open holds.',
        jsonb_build_object('held', v_row.held, 'open_holds', v_row.open_holds, 'checked_at', p_now),
        'holds_mismatch:' || v_row.id);
    end if;
  end loop;

  for v_row in
    select p.id, p.account_id, p.checkout_session_id, p.credits, l.amount as ledger_amount, l.account_id as ledger_account
      from public.stripe_payments p
      left join public.credit_ledger l on l.reason = 'purchase' and l.reference = p.checkout_session_id
     where p.status = 'credited'
       and (l.id is null or l.amount <> p.credits or l.account_id <> p.account_id)
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A credited Stripe payment does not match its ledger row.',
      jsonb_build_object('session', v_row.checkout_session_id, 'credits', v_row.credits, 'ledger_amount', v_row.ledger_amount,
                         'checked_at', p_now),
      'stripe_mismatch:' || v_row.checkout_session_id);
  end loop;

  for v_row in
    select i.id, i.account_id, i.credits, l.amount as ledger_amount
      from public.stripe_invoices i
      left join public.credit_ledger l on l.reason = 'subscription' and l.reference = i.id
     where i.status = 'credited' and i.credits > 0
       and (l.id is null or l.amount <> i.credits or l.account_id <> i.account_id)
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A credited Stripe invoice does not match its ledger row.',
      jsonb_build_object('invoice', v_row.id, 'credits', v_row.credits, 'ledger_amount', v_row.ledger_amount, 'checked_at', p_now),
      'stripe_mismatch:' || v_row.id);
  end loop;

  for v_row in
    select e.id, e.account_id, e.business_key
      from public.stripe_events e
     where e.status = 'credited' and e.type like 'checkout.session.%'
       and not exists (select 1 from public.credit_ledger l
                        where l.reference = e.business_key and l.reason in ('purchase', 'subscription'))
  loop
    v_found := v_found + 1;
    perform private.raise_alert_once(v_row.account_id, 'stripe_mismatch', 'A Stripe event marked credited has no ledger row.',
      jsonb_build_object('event', v_row.id, 'business_key', v_row.business_key, 'checked_at', p_now),
      'stripe_mismatch:' || v_row.id);
  end loop;

  return jsonb_build_object('mismatches', v_found, 'checked_at', p_now);
end;
$$;

-- Stale holds ------------------------------------------------------------------------
-- A hold older than billing_settings.stale_hold_after belongs to a request whose
-- function died before settling (the gateway settles through waitUntil with
-- retries, so this is rare). Policy: the hold is released and nothing is charged
-- — the gateway never bills what it cannot show was delivered — and the request
-- is marked `expired` and raised as an alert, so the operator can set it against
-- the provider's own usage report.

create function public.expire_stale_holds(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_cutoff timestamptz := p_now - (select stale_hold_after from public.billing_settings where id);
  v_event public.usage_events;
  v_count integer := 0;
begin
  for v_event in
    select * from public.usage_events
     where status = 'held' and created_at < v_cutoff
     order by created_at
     for update skip locked
  loop
    update public.accounts set held = held - v_event.hold, updated_at = now() where id = v_event.account_id;
    update public.usage_events
       set status = 'expired', amount = 0, charged = 0, settled_at = p_now,
           error = 'never settled: the hold expired and was released'
     where request_id = v_event.request_id;
    perform private.raise_alert_once(v_event.account_id, 'stale_hold',
      'A request was never settled; its hold was released and nothing was charged.',
      jsonb_build_object('request_id', v_event.request_id, 'model', v_event.model_id, 'hold', v_event.hold,
                         'authorized_at', v_event.created_at),
      'stale_hold:' || v_event.request_id);
    v_count := v_count + 1;
  end loop;
  return jsonb_build_object('expired', v_count, 'cutoff', v_cutoff);
end;
$$;

-- Balance states ---------------------------------------------------------------------
-- Every change of balance already moves the state (private.post_ledger); this
-- sweep catches what changes without a ledger row: a user's new threshold, an
-- operator's new credit limit.

create function public.check_balance_states(p_now timestamptz)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_account_id uuid;
  v_count integer := 0;
begin
  for v_account_id in
    select a.id from public.accounts a where a.balance_state <> private.balance_state_of(a)
  loop
    perform private.refresh_balance_state(v_account_id);
    v_count := v_count + 1;
  end loop;
  return jsonb_build_object('changed', v_count, 'checked_at', p_now);
end;
$$;

-- Alert delivery ---------------------------------------------------------------------
-- Sends undelivered alerts to billing_settings.alert_webhook_url with pg_net's
-- net.http_post when pg_net is installed, and records the outcome from
-- net._http_response on a later run. Without pg_net or a URL, alerts stay in the
-- outbox (readable by their account under RLS) and nothing is sent.

create function public.deliver_alerts(p_now timestamptz, p_max_attempts integer default 5)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_url text := (select alert_webhook_url from public.billing_settings where id);
  v_alert public.alerts;
  v_response record;
  v_sent integer := 0;
  v_delivered integer := 0;
  v_failed integer := 0;
begin
  if v_url is null or to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null then
    return jsonb_build_object('sent', 0, 'transport', case when v_url is null then 'no webhook url' else 'pg_net not installed' end);
  end if;

  -- Outcomes of earlier sends.
  for v_alert in select * from public.alerts where delivery_status = 'sent' and net_request_id is not null for update skip locked loop
    execute 'select status_code, timed_out, error_msg from net._http_response where id = $1' into v_response using v_alert.net_request_id;
    if v_response is null then
      -- pg_net keeps responses for a few hours: one that never came, or is gone, is sent again.
      if v_alert.sent_at < p_now - interval '1 hour' then
        update public.alerts set delivery_status = 'retry', net_request_id = null where id = v_alert.id;
      end if;
      continue;
    end if;
    if v_response.status_code between 200 and 299 then
      update public.alerts set delivery_status = 'delivered', delivered_at = p_now where id = v_alert.id;
      v_delivered := v_delivered + 1;
    else
      update public.alerts
         set delivery_status = case when delivery_attempts >= p_max_attempts then 'failed' else 'retry' end,
             net_request_id = null
       where id = v_alert.id;
      v_failed := v_failed + 1;
    end if;
  end loop;

  -- New and retried alerts.
  for v_alert in
    select * from public.alerts
     where delivered_at is null and coalesce(delivery_status, 'retry') = 'retry'
     order by created_at
     limit 100
     for update skip locked
  loop
    update public.alerts
       set net_request_id = net.http_post(
             url := v_url,
             body := jsonb_build_object('id', v_alert.id, 'kind', v_alert.kind, 'account_id', v_alert.account_id,
                                        'message', v_alert.message, 'details', v_alert.details, 'created_at', v_alert.created_at),
             headers := '{"Content-Type": "application/json"}'::jsonb,
             timeout_milliseconds := 5000),
           delivery_status = 'sent',
           sent_at = p_now,
           delivery_attempts = delivery_attempts + 1
     where id = v_alert.id;
    v_sent := v_sent + 1;
  end loop;
  return jsonb_build_object('sent', v_sent, 'delivered', v_delivered, 'failed', v_failed);
end;
$$;

-- Daily rollups -------------------------------------------------------------------------
-- Recomputes one UTC day from the settled requests; re-running gives the same rows.

create function public.rollup_usage(p_day date)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_rows integer;
begin
  delete from public.usage_daily where day = p_day;
  insert into public.usage_daily
  select e.account_id, e.model_id, p_day,
         count(*), sum(e.input_tokens), sum(e.cached_input_tokens), sum(e.cache_write_tokens), sum(e.cache_write_1h_tokens),
         sum(e.output_tokens), sum(e.reasoning_tokens), sum(e.image_tokens), sum(e.audio_tokens),
         sum(coalesce(e.amount, 0)), sum(coalesce(e.charged, 0)), sum(coalesce(e.upstream_cost, 0)),
         sum(coalesce(e.charged, 0)) - sum(coalesce(e.upstream_cost, 0))
    from public.usage_events e
   where e.status <> 'held'
     and e.settled_at >= p_day::timestamp at time zone 'UTC'
     and e.settled_at < (p_day + 1)::timestamp at time zone 'UTC'
   group by e.account_id, e.model_id;
  get diagnostics v_rows = row_count;
  return jsonb_build_object('day', p_day, 'rows', v_rows);
end;
$$;

revoke all on function public.reconcile_books(timestamptz), public.expire_stale_holds(timestamptz),
  public.check_balance_states(timestamptz), public.deliver_alerts(timestamptz, integer), public.rollup_usage(date)
  from public, anon, authenticated;
grant execute on function public.reconcile_books(timestamptz), public.expire_stale_holds(timestamptz),
  public.check_balance_states(timestamptz), public.deliver_alerts(timestamptz, integer), public.rollup_usage(date)
  to service_role;

-- Schedules, where pg_cron is installed (Supabase: enable "pg_cron" first). Jobs are
-- scheduled by name, so running this again updates them instead of adding more.
do $$
begin
  if exists (select 1 from pg_catalog.pg_extension where extname = 'pg_cron') then
    perform cron.schedule('tollgate-expire-stale-holds', '* * * * *', 'select public.expire_stale_holds(now())');
    perform cron.schedule('tollgate-check-balance-states', '* * * * *', 'select public.check_balance_states(now())');
    perform cron.schedule('tollgate-deliver-alerts', '* * * * *', 'select public.deliver_alerts(now())');
    perform cron.schedule('tollgate-reconcile-books', '*/10 * * * *', 'select public.reconcile_books(now())');
    perform cron.schedule('tollgate-rollup-usage', '5 * * * *',
      $job$select public.rollup_usage((now() at time zone 'UTC')::date - 1), public.rollup_usage((now() at time zone 'UTC')::date)$job$);
  end if;
end;
$$;

-- The operator's console: who is an operator, an append-only audit log, and the
-- functions the operator page calls.
--
-- An operator is a signed-in user whose app_metadata.role is 'admin'. Supabase
-- Auth puts app_metadata in the session token, and only the service role can
-- set it, so the check is made here, in SQL, on every call: never in the page.
-- Each function below is security definer with an empty search_path, refuses
-- anyone but an operator (42501), and is granted to authenticated only. Every
-- one that changes something writes the audit log in the same transaction.

create function public.is_operator()
returns boolean
language sql stable
set search_path = ''
as $$
  select coalesce((auth.jwt() -> 'app_metadata' ->> 'role') = 'admin', false)
$$;
comment on function public.is_operator() is 'Whether the caller is an operator: app_metadata.role = admin in the session token.';
revoke all on function public.is_operator() from public;
grant execute on function public.is_operator() to anon, authenticated, service_role;

create function private.require_operator()
returns void
language plpgsql stable
set search_path = ''
as $$
begin
  if not public.is_operator() then
    raise exception 'only an operator may do this' using errcode = '42501';
  end if;
end;
$$;
revoke all on function private.require_operator() from public;

-- The audit log ------------------------------------------------------------------
-- Written only by the operator functions (private.audit, definer); read by
-- operators under RLS; changed by nobody: no role has a write grant, and a
-- trigger refuses update, delete and truncate even to the table's owner.

create table public.audit_log (
  id bigint generated always as identity primary key,
  at timestamptz not null default now(),
  actor_id uuid,
  actor_email text,
  action text not null,
  subject text,
  details jsonb not null default '{}'
);
comment on table public.audit_log is 'Every operator action, append-only.';
create index audit_log_at_idx on public.audit_log (at desc);
alter table public.audit_log enable row level security;
create policy "Operators read the audit log."
  on public.audit_log for select to authenticated
  using ((select public.is_operator()));
revoke all on public.audit_log from anon, authenticated, service_role;
grant select on public.audit_log to authenticated, service_role;

create function private.refuse_audit_change()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  raise exception 'the audit log is append-only' using errcode = '42501';
end;
$$;
revoke all on function private.refuse_audit_change() from public;
create trigger audit_log_append_only before update or delete on public.audit_log
  for each row execute function private.refuse_audit_change();
create trigger audit_log_no_truncate before truncate on public.audit_log
  for each statement execute function private.refuse_audit_change();

create function private.audit(p_action text, p_subject text, p_details jsonb)
returns void
language sql
set search_path = ''
as $$
  insert into public.audit_log (actor_id, actor_email, action, subject, details)
  values (auth.uid(), auth.jwt() ->> 'email', p_action, p_subject, coalesce(p_details, '{}'))
$$;
revoke all on function private.audit(text, text, jsonb) from public;

-- Reading -------------------------------------------------------------------------

-- Every model with what it costs, what it sells for, the margin per bucket (in
-- basis points of cost), and its aliases.
create function public.operator_models()
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_operator();
  return coalesce((
    select jsonb_agg(jsonb_build_object(
      'id', m.id, 'provider', m.provider, 'display_name', m.display_name, 'enabled', m.enabled,
      'upstream_model', m.upstream_model, 'price_source', m.price_source,
      'cost', private.model_costs(m) || jsonb_strip_nulls(jsonb_build_object('web_search', m.cost_web_search)),
      'price', private.model_prices(m) || jsonb_strip_nulls(jsonb_build_object('web_search', m.price_web_search)),
      'margin_bps', jsonb_build_object(
        'input', case when m.cost_input > 0 then (m.price_input - m.cost_input) * 10000 / m.cost_input end,
        'output', case when m.cost_output > 0 then (m.price_output - m.cost_output) * 10000 / m.cost_output end),
      'aliases', coalesce((select jsonb_agg(a.alias order by a.alias) from public.model_aliases a where a.model_id = m.id), '[]'))
      order by m.provider, m.id)
    from public.models m), '[]');
end;
$$;

-- Customers: balance, state and flags, newest first; `p_search` matches the
-- email or the account id.
create function public.operator_customers(p_search text default null, p_limit integer default 100)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_operator();
  return coalesce((
    select jsonb_agg(row_to_json(c) order by c.created_at desc)
      from (
        select a.id, u.email, a.balance, a.held, a.credit_limit, a.balance - a.held + a.credit_limit as available,
               a.plan, a.balance_state, a.flagged_reason, a.created_at,
               (select max(e.created_at) from public.usage_events e where e.account_id = a.id) as last_request_at
          from public.accounts a
          left join auth.users u on u.id = a.user_id
         where p_search is null or p_search = '' or u.email ilike '%' || p_search || '%' or a.id::text = p_search
         order by a.created_at desc
         limit least(greatest(coalesce(p_limit, 100), 1), 1000)
      ) c), '[]');
end;
$$;

-- Alerts, open ones first (reconciliation's findings among them).
create function public.operator_alerts(p_limit integer default 100)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_operator();
  return coalesce((
    select jsonb_agg(row_to_json(x) order by x.resolved_at is not null, x.created_at desc)
      from (
        select l.id, l.account_id, l.kind, l.message, l.details, l.created_at, l.resolved_at, l.delivery_status
          from public.alerts l
         order by l.resolved_at is not null, l.created_at desc
         limit least(greatest(coalesce(p_limit, 100), 1), 1000)
      ) x), '[]');
end;
$$;

-- Revenue (what customers were charged), upstream cost and margin, by day and
-- model, over the last `p_days` days of settled requests.
create function public.operator_revenue(p_days integer default 30)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_operator();
  return coalesce((
    select jsonb_agg(row_to_json(r) order by r.day desc, r.model_id)
      from (
        select (e.settled_at at time zone 'UTC')::date as day, e.model_id, count(*) as requests,
               coalesce(sum(e.charged), 0) as revenue, coalesce(sum(e.upstream_cost), 0) as upstream_cost,
               coalesce(sum(e.charged), 0) - coalesce(sum(e.upstream_cost), 0) as margin
          from public.usage_events e
         where e.settled_at >= now() - make_interval(days => least(greatest(coalesce(p_days, 30), 1), 366))
           and e.charged is not null
         group by 1, 2
      ) r), '[]');
end;
$$;

-- Stripe payments, newest first, with the account's email.
create function public.operator_payments(p_limit integer default 100)
returns jsonb
language plpgsql stable
security definer
set search_path = ''
as $$
begin
  perform private.require_operator();
  return coalesce((
    select jsonb_agg(row_to_json(p) order by p.created_at desc)
      from (
        select s.id, s.created_at, s.account_id, u.email, s.amount_total, s.currency, s.credits, s.status,
               s.refunded_amount, s.disputed_amount, s.debited, s.uncollected, s.problem
          from public.stripe_payments s
          left join public.accounts a on a.id = s.account_id
          left join auth.users u on u.id = a.user_id
         order by s.created_at desc
         limit least(greatest(coalesce(p_limit, 100), 1), 1000)
      ) p), '[]');
end;
$$;

-- Acting ----------------------------------------------------------------------------

-- Changes a model's prices or costs (micro-units per 1M tokens, or per search) or
-- whether it is enabled. A price or cost set here is the operator's (price_source
-- 'manual': a sync never overwrites it) and becomes a price version in force now, so
-- requests record which prices they were sold at. A price below cost raises the
-- price_below_cost alert (the models trigger).
create function public.operator_update_model(p_model_id text, p_changes jsonb)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_before public.models;
  v_after public.models;
  v_key text;
  v_value jsonb;
  v_priced boolean := false;
  v_version bigint;
  c_prices constant text[] := array['price_input', 'price_cached_input', 'price_cache_write', 'price_cache_write_1h',
    'price_output', 'price_reasoning', 'price_image', 'price_audio', 'price_web_search',
    'cost_input', 'cost_cached_input', 'cost_cache_write', 'cost_cache_write_1h',
    'cost_output', 'cost_reasoning', 'cost_image', 'cost_audio', 'cost_web_search'];
begin
  perform private.require_operator();
  if jsonb_typeof(p_changes) is distinct from 'object' or p_changes = '{}' then
    raise exception 'changes must be a non-empty object' using errcode = '22023';
  end if;
  select * into v_before from public.models where id = p_model_id for update;
  if not found then
    raise exception 'no model %', p_model_id using errcode = 'PT404';
  end if;
  v_after := v_before;
  for v_key, v_value in select key, value from jsonb_each(p_changes) loop
    if v_key = 'enabled' then
      if jsonb_typeof(v_value) <> 'boolean' then
        raise exception 'enabled must be true or false' using errcode = '22023';
      end if;
      v_after.enabled := v_value::boolean;
    elsif v_key = any (c_prices) then
      if not (jsonb_typeof(v_value) = 'null' or (jsonb_typeof(v_value) = 'number' and v_value::numeric >= 0
              and v_value::numeric = trunc(v_value::numeric) and v_value::numeric < 1e15)) then
        raise exception '% must be a whole number of micro-units, zero or more (or null)', v_key using errcode = '22023';
      end if;
      if v_key in ('price_input', 'price_output', 'cost_input', 'cost_output') and jsonb_typeof(v_value) = 'null' then
        raise exception '% cannot be removed', v_key using errcode = '22023';
      end if;
      v_after := jsonb_populate_record(v_after, jsonb_build_object(v_key, v_value));
      v_priced := true;
    else
      raise exception 'unknown change %: only enabled, prices and costs (%) can be changed here', v_key, array_to_string(c_prices, ', ')
        using errcode = '22023';
    end if;
  end loop;

  update public.models
     set enabled = v_after.enabled,
         price_input = v_after.price_input, price_cached_input = v_after.price_cached_input,
         price_cache_write = v_after.price_cache_write, price_cache_write_1h = v_after.price_cache_write_1h,
         price_output = v_after.price_output, price_reasoning = v_after.price_reasoning,
         price_image = v_after.price_image, price_audio = v_after.price_audio, price_web_search = v_after.price_web_search,
         cost_input = v_after.cost_input, cost_cached_input = v_after.cost_cached_input,
         cost_cache_write = v_after.cost_cache_write, cost_cache_write_1h = v_after.cost_cache_write_1h,
         cost_output = v_after.cost_output, cost_reasoning = v_after.cost_reasoning,
         cost_image = v_after.cost_image, cost_audio = v_after.cost_audio, cost_web_search = v_after.cost_web_search,
         price_source = case when v_priced then 'manual' else price_source end,
         updated_at = now()
   where id = p_model_id
  returning * into v_after;

  if v_priced then
    insert into public.price_versions (model_id, effective_from, source, costs, prices,
                                       long_context_threshold, long_context_cost, long_context_price, applied_at)
    values (p_model_id, now(), 'operator', private.model_costs(v_after), private.model_prices(v_after),
            v_after.long_context_threshold, v_after.long_context_cost, v_after.long_context_price, now())
    returning id into v_version;
    update public.models set price_version_id = v_version where id = p_model_id;
  end if;

  perform private.audit('update_model', p_model_id, jsonb_build_object(
    'changes', p_changes,
    'before', jsonb_build_object('enabled', v_before.enabled, 'price', private.model_prices(v_before), 'price_web_search', v_before.price_web_search,
                                 'cost', private.model_costs(v_before), 'cost_web_search', v_before.cost_web_search),
    'price_version', v_version));
  return jsonb_build_object('id', p_model_id, 'enabled', v_after.enabled, 'price', private.model_prices(v_after),
                            'price_web_search', v_after.price_web_search, 'price_version', v_version);
end;
$$;

-- Credits granted (a positive amount) or debited (negative: an adjustment) by
-- the operator, through grant_credits, with the reason in the note.
create function public.operator_grant_credits(p_account_id uuid, p_amount bigint, p_note text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform private.require_operator();
  if p_note is null or length(trim(p_note)) = 0 then
    raise exception 'say why: a note is required' using errcode = '22023';
  end if;
  v_result := public.grant_credits(p_account_id, p_amount, case when p_amount < 0 then 'adjustment' else 'grant' end, null,
                                   format('%s (by operator %s)', trim(p_note), coalesce(auth.jwt() ->> 'email', auth.uid()::text)));
  perform private.audit(case when p_amount < 0 then 'debit_credits' else 'grant_credits' end, p_account_id::text,
                        jsonb_build_object('amount', p_amount, 'note', trim(p_note), 'entry_id', v_result -> 'entry_id', 'balance', v_result -> 'balance'));
  return v_result;
end;
$$;

-- Marks an alert resolved.
create function public.operator_resolve_alert(p_alert_id bigint)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_alert public.alerts;
begin
  perform private.require_operator();
  update public.alerts set resolved_at = coalesce(resolved_at, now()) where id = p_alert_id returning * into v_alert;
  if not found then
    raise exception 'no alert %', p_alert_id using errcode = 'PT404';
  end if;
  perform private.audit('resolve_alert', p_alert_id::text, jsonb_build_object('kind', v_alert.kind, 'account_id', v_alert.account_id));
  return jsonb_build_object('id', v_alert.id, 'resolved_at', v_alert.resolved_at);
end;
$$;

-- Runs the reconciliation now (pg_cron runs it every ten minutes); what it finds
-- becomes alerts.
create function public.operator_reconcile()
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_result jsonb;
begin
  perform private.require_operator();
  v_result := public.reconcile_books(now());
  perform private.audit('reconcile_books', null, v_result);
  return v_result;
end;
$$;

-- Points an alias at a model (a new alias, or one moved), or removes it (model null).
create function public.operator_set_alias(p_alias text, p_model_id text)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_before text;
begin
  perform private.require_operator();
  select model_id into v_before from public.model_aliases where alias = p_alias for update;
  if p_model_id is null then
    delete from public.model_aliases where alias = p_alias;
    if not found then
      raise exception 'no alias %', p_alias using errcode = 'PT404';
    end if;
  else
    if not exists (select 1 from public.models where id = p_model_id) then
      raise exception 'no model %', p_model_id using errcode = 'PT404';
    end if;
    begin
      insert into public.model_aliases (alias, model_id) values (p_alias, p_model_id)
      on conflict (alias) do update set model_id = excluded.model_id;
    exception when check_violation then
      raise exception 'an alias is 1 to 128 letters, digits and ._:/@-, starting with a letter or digit' using errcode = '22023';
    end;
  end if;
  perform private.audit('set_alias', p_alias, jsonb_build_object('model', p_model_id, 'before', v_before));
  return jsonb_build_object('alias', p_alias, 'model_id', p_model_id);
end;
$$;
revoke all on function public.operator_set_alias(text, text) from public, anon, service_role;
grant execute on function public.operator_set_alias(text, text) to authenticated;

revoke all on function public.operator_models(), public.operator_customers(text, integer), public.operator_alerts(integer),
  public.operator_revenue(integer), public.operator_payments(integer), public.operator_update_model(text, jsonb),
  public.operator_grant_credits(uuid, bigint, text), public.operator_resolve_alert(bigint), public.operator_reconcile()
  from public, anon, service_role;
grant execute on function public.operator_models(), public.operator_customers(text, integer), public.operator_alerts(integer),
  public.operator_revenue(integer), public.operator_payments(integer), public.operator_update_model(text, jsonb),
  public.operator_grant_credits(uuid, bigint, text), public.operator_resolve_alert(bigint), public.operator_reconcile()
  to authenticated;

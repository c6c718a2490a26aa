import type { SupabaseClient } from '@supabase/supabase-js';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { cents, dollars, el, section, table, when } from './format.ts';

// The operator's page, for users whose app_metadata.role is admin. The page
// only shows it; the database decides: every operator_* function checks the
// caller in SQL and writes each action to the append-only audit log.

type Row = Record<string, unknown>;

async function call<T>(supabase: SupabaseClient, name: string, args: Record<string, unknown> = {}): Promise<T> {
  const { data, error } = await supabase.rpc(name, args);
  if (error) throw new Error(error.message);
  return data as T;
}

/** Whole micro-units from dollars typed by a person ("1.25" → 1,250,000); undefined when it is not an amount. */
function microFromDollars(text: string): number | undefined {
  if (!/^-?\d+(\.\d{1,6})?$/.test(text.trim())) return undefined;
  const [whole = '0', fraction = ''] = text.trim().replace('-', '').split('.');
  const micro = Number(whole) * 1_000_000 + Number(fraction.padEnd(6, '0'));
  return text.trim().startsWith('-') ? -micro : micro;
}

const percent = (bps: unknown) => (typeof bps === 'number' ? `${(bps / 100).toFixed(1)} %` : '—');

export function operatorView(supabase: SupabaseClient): HTMLElement[] {
  const sections: Array<{ element: HTMLElement; reload: () => Promise<void> }> = [];
  const act = async (work: () => Promise<unknown>, after: Array<{ reload: () => Promise<void> }>) => {
    try {
      await work();
    } catch (error) {
      alert(`Not done: ${(error as Error).message}`);
    }
    await Promise.all([...after, audit].map((part) => part.reload()));
  };

  const revenue = section('Revenue, upstream cost and margin (30 days)', async () => {
    const rows = await call<Row[]>(supabase, 'operator_revenue', { p_days: 30 });
    if (!rows.length) return el('p', { class: 'note' }, 'No settled requests in the last 30 days.');
    const byDay = new Map<string, { revenue: number; cost: number }>();
    for (const row of rows) {
      const day = byDay.get(String(row.day)) ?? { revenue: 0, cost: 0 };
      day.revenue += Number(row.revenue);
      day.cost += Number(row.upstream_cost);
      byDay.set(String(row.day), day);
    }
    const days = [...byDay.keys()].sort();
    const holder = el('div', { 'data-chart': 'revenue' });
    const width = Math.max(280, Math.min(1040, (document.querySelector('main')?.clientWidth ?? 600) - 40));
    new uPlot(
      {
        width,
        height: 200,
        // A single day gets a day either side, not an axis of years.
        scales: { x: { time: true, range: (_: uPlot, min: number, max: number): uPlot.Range.MinMax => (min === max ? [min - 86_400, max + 86_400] : [min, max]) } },
        series: [
          {},
          { label: 'revenue', stroke: '#1a7f37', width: 2 },
          { label: 'upstream cost', stroke: '#d1242f', width: 2 },
          { label: 'margin', stroke: '#1f6feb', width: 2 },
        ],
        axes: [{}, { size: 70, values: (_: unknown, ticks: number[]) => ticks.map((tick) => `$${tick.toLocaleString('en-US', { maximumFractionDigits: 6 })}`) }],
      },
      [
        days.map((day) => Date.parse(`${day}T00:00:00Z`) / 1000),
        days.map((day) => byDay.get(day)!.revenue / 1_000_000),
        days.map((day) => byDay.get(day)!.cost / 1_000_000),
        days.map((day) => (byDay.get(day)!.revenue - byDay.get(day)!.cost) / 1_000_000),
      ],
      holder,
    );
    return el(
      'div',
      {},
      holder,
      table(
        [['Day'], ['Model'], ['Requests', true], ['Revenue', true], ['Upstream cost', true], ['Margin', true]],
        rows.map((row) => [String(row.day), String(row.model_id), String(row.requests), dollars(row.revenue as number), dollars(row.upstream_cost as number), dollars(row.margin as number)]),
        '',
      ),
    );
  }, 'revenue');
  sections.push(revenue);

  const models = section('Models', async () => {
    const rows = await call<Row[]>(supabase, 'operator_models');
    return table(
      [['Model'], ['Provider'], ['Cost in/out per 1M', true], ['Price in/out per 1M', true], ['Margin in/out', true], ['Source'], ['Aliases'], ['Enabled'], ['']],
      rows.map((row) => {
        const cost = row.cost as Record<string, number>;
        const price = row.price as Record<string, number>;
        const margin = row.margin_bps as Record<string, number | null>;
        const edit = el('button', { type: 'button', 'data-edit-model': String(row.id) }, 'Prices');
        edit.addEventListener('click', () => {
          const input = prompt(`Input price per 1M tokens for ${row.id}, in dollars`, String((price.input ?? 0) / 1_000_000));
          if (input === null) return;
          const output = prompt(`Output price per 1M tokens for ${row.id}, in dollars`, String((price.output ?? 0) / 1_000_000));
          if (output === null) return;
          const changes = { price_input: microFromDollars(input), price_output: microFromDollars(output) };
          if (changes.price_input === undefined || changes.price_output === undefined || changes.price_input < 0 || changes.price_output < 0) {
            alert('Prices are dollars with at most six decimals, zero or more.');
            return;
          }
          void act(() => call(supabase, 'operator_update_model', { p_model_id: row.id, p_changes: changes }), [models]);
        });
        const editCosts = el('button', { type: 'button', 'data-edit-costs': String(row.id) }, 'Costs');
        editCosts.addEventListener('click', () => {
          const input = prompt(`What the upstream charges per 1M input tokens of ${row.id}, in dollars`, String((cost.input ?? 0) / 1_000_000));
          if (input === null) return;
          const output = prompt(`What the upstream charges per 1M output tokens of ${row.id}, in dollars`, String((cost.output ?? 0) / 1_000_000));
          if (output === null) return;
          const changes = { cost_input: microFromDollars(input), cost_output: microFromDollars(output) };
          if (changes.cost_input === undefined || changes.cost_output === undefined || changes.cost_input < 0 || changes.cost_output < 0) {
            alert('Costs are dollars with at most six decimals, zero or more.');
            return;
          }
          void act(() => call(supabase, 'operator_update_model', { p_model_id: row.id, p_changes: changes }), [models]);
        });
        const alias = el('button', { type: 'button', 'data-alias-model': String(row.id) }, 'Aliases');
        alias.addEventListener('click', () => {
          const answer = prompt(`An alias to add for ${row.id}, or -alias to remove one`, '');
          if (!answer?.trim()) return;
          const removing = answer.trim().startsWith('-');
          const name = answer.trim().replace(/^-/, '');
          void act(() => call(supabase, 'operator_set_alias', { p_alias: name, p_model_id: removing ? null : row.id }), [models]);
        });
        const toggle = el('button', { type: 'button', 'data-toggle-model': String(row.id) }, row.enabled ? 'Disable' : 'Enable');
        toggle.addEventListener('click', () => void act(() => call(supabase, 'operator_update_model', { p_model_id: row.id, p_changes: { enabled: !row.enabled } }), [models]));
        return [
          String(row.id),
          String(row.provider),
          el('span', {}, dollars(cost.input ?? null), ' / ', dollars(cost.output ?? null)),
          el('span', {}, dollars(price.input ?? null), ' / ', dollars(price.output ?? null)),
          `${percent(margin.input)} / ${percent(margin.output)}`,
          String(row.price_source),
          ((row.aliases as string[]) ?? []).join(', '),
          row.enabled ? 'yes' : 'no',
          el('span', {}, edit, ' ', editCosts, ' ', alias, ' ', toggle),
        ];
      }),
      'No models.',
    );
  }, 'models');
  sections.push(models);

  let search = '';
  const customers = section('Customers', async () => {
    const rows = await call<Row[]>(supabase, 'operator_customers', { p_search: search || null, p_limit: 100 });
    const box = el('input', { type: 'search', id: 'customer-search', placeholder: 'email or account id', value: search, 'aria-label': 'Search customers' }) as HTMLInputElement;
    const form = el('form', {}, box, el('button', { type: 'submit' }, 'Search'));
    form.addEventListener('submit', (event) => {
      event.preventDefault();
      search = box.value.trim();
      void customers.reload();
    });
    return el(
      'div',
      {},
      form,
      table(
        [['Email'], ['Account'], ['Balance', true], ['Held', true], ['Available', true], ['Plan'], ['State'], ['Flag'], ['Last request'], ['']],
        rows.map((row) => {
          const grant = el('button', { type: 'button', 'data-grant': String(row.id) }, 'Grant / debit');
          grant.addEventListener('click', () => {
            const amount = prompt(`Credits for ${row.email ?? row.id}, in dollars (negative to debit)`, '10.00');
            if (amount === null) return;
            const micro = microFromDollars(amount);
            if (micro === undefined || micro === 0) {
              alert('Enter a non-zero amount of dollars, with at most six decimals.');
              return;
            }
            const note = prompt('Why? (kept in the audit log, for operators only; the customer sees that credits were granted or debited, not why)', '');
            if (note === null) return;
            void act(() => call(supabase, 'operator_grant_credits', { p_account_id: row.id, p_amount: micro, p_note: note }), [customers]);
          });
          return [
            String(row.email ?? '—'),
            String(row.id),
            dollars(row.balance as number),
            dollars(row.held as number),
            dollars(row.available as number),
            String(row.plan),
            String(row.balance_state),
            String(row.flagged_reason ?? ''),
            when(row.last_request_at as string | null),
            grant,
          ];
        }),
        'No customers match.',
      ),
    );
  }, 'customers');
  sections.push(customers);

  const alerts = section('Alerts and reconciliation', async () => {
    const rows = await call<Row[]>(supabase, 'operator_alerts', { p_limit: 100 });
    const reconcile = el('button', { type: 'button', id: 'reconcile' }, 'Reconcile the books now');
    const result = el('span', { class: 'note', id: 'reconcile-result' });
    reconcile.addEventListener('click', async () => {
      try {
        const found = await call<Row>(supabase, 'operator_reconcile');
        result.textContent = `Reconciled: ${JSON.stringify(found)}`;
      } catch (error) {
        result.textContent = `Not done: ${(error as Error).message}`;
      }
      await Promise.all([alerts.reload(), audit.reload()]);
    });
    return el(
      'div',
      {},
      el('p', {}, reconcile, ' ', result),
      table(
        [['When'], ['Kind'], ['Message'], ['Account'], ['State'], ['']],
        rows.map((row) => {
          const resolve = el('button', { type: 'button', 'data-resolve': String(row.id) }, 'Resolve');
          resolve.addEventListener('click', () => void act(() => call(supabase, 'operator_resolve_alert', { p_alert_id: row.id }), [alerts]));
          return [when(row.created_at as string), String(row.kind), String(row.message), String(row.account_id ?? '—'), row.resolved_at ? `resolved ${when(row.resolved_at as string)}` : 'open', row.resolved_at ? '' : resolve];
        }),
        'No alerts.',
      ),
    );
  }, 'alerts');
  sections.push(alerts);

  const codes = section('Redemption codes', async () => {
    const field = (id: string, placeholder: string, type = 'text') => el('input', { id, placeholder, type, 'aria-label': placeholder, required: '' }) as HTMLInputElement;
    const [code, amount, uses, days] = [field('code-name', 'CODE'), field('code-dollars', 'credits in $'), field('code-uses', 'max uses', 'number'), field('code-days', 'grant lasts days', 'number')];
    days.required = false;
    const message = el('span', { class: 'note', id: 'code-message' });
    const form = el('form', { id: 'create-code' }, code, amount, uses, days, el('button', { type: 'submit', class: 'primary' }, 'Create code'), message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const micro = microFromDollars(amount.value);
      if (micro === undefined || micro <= 0) {
        message.textContent = 'Credits are a positive amount of dollars.';
        return;
      }
      try {
        await call(supabase, 'operator_create_code', {
          p_code: code.value,
          p_credits: micro,
          p_max_uses: Number(uses.value),
          p_grant_lifetime: days.value ? `${Number(days.value)} days` : null,
        });
        message.textContent = `Created ${code.value.toUpperCase()}.`;
      } catch (error) {
        message.textContent = `Not created: ${(error as Error).message}`;
      }
      await audit.reload();
    });
    return form;
  }, 'codes');
  sections.push(codes);

  const payments = section('Stripe payments', async () => {
    const rows = await call<Row[]>(supabase, 'operator_payments', { p_limit: 100 });
    return table(
      [['When'], ['Customer'], ['Paid', true], ['Credits', true], ['Status'], ['Refunded', true], ['Disputed', true], ['Problem']],
      rows.map((row) => [
        when(row.created_at as string),
        String(row.email ?? row.account_id ?? '—'),
        cents(Number(row.amount_total ?? 0), String(row.currency ?? 'usd')),
        dollars(row.credits as number),
        String(row.status),
        cents(Number(row.refunded_amount ?? 0), String(row.currency ?? 'usd')),
        cents(Number(row.disputed_amount ?? 0), String(row.currency ?? 'usd')),
        String(row.problem ?? ''),
      ]),
      'No payments yet.',
    );
  }, 'stripe-payments');
  sections.push(payments);

  // The audit log, newest first, a page at a time (operator_audit_log): the
  // operators' own actions apart from customers', so however many entries
  // customers write, an operator's stay in reach; "Show more" pages back.
  let auditScope: 'operator' | 'all' = 'operator';
  const auditPage = 50;
  const audit = section('Audit log', async () => {
    const scope = el('select', { id: 'audit-scope', 'aria-label': 'Which entries' },
      el('option', { value: 'operator' }, 'Operator actions'),
      el('option', { value: 'all' }, 'All entries')) as HTMLSelectElement;
    scope.value = auditScope;
    scope.addEventListener('change', () => {
      auditScope = scope.value === 'all' ? 'all' : 'operator';
      void audit.reload();
    });
    const body = el('tbody');
    const list = el('table', {}, el('thead', {}, el('tr', {}, ...['When', 'Who', 'Action', 'Subject', 'Details'].map((label) => el('th', {}, label)))), body);
    const empty = el('p', { class: 'note' }, auditScope === 'operator' ? 'No operator actions yet.' : 'Nothing yet.');
    const more = el('button', { type: 'button', id: 'audit-more', hidden: '' }, 'Show more');
    let oldest: number | null = null;
    const load = async () => {
      const rows = await call<Row[]>(supabase, 'operator_audit_log', { p_scope: auditScope, p_before_id: oldest, p_limit: auditPage });
      for (const row of rows) {
        body.append(el('tr', { 'data-audit-id': String(row.id) }, ...[
          when(row.at as string), String(row.actor_email ?? '—'), String(row.action), String(row.subject ?? ''), JSON.stringify(row.details),
        ].map((cell) => el('td', {}, cell))));
      }
      if (rows.length) oldest = Number(rows.at(-1)!.id);
      more.hidden = rows.length < auditPage;
      list.hidden = body.childElementCount === 0;
      empty.hidden = body.childElementCount > 0;
    };
    more.addEventListener('click', async () => {
      more.setAttribute('disabled', '');
      try {
        await load();
      } catch (error) {
        alert(`Could not load more: ${(error as Error).message}`);
      }
      more.removeAttribute('disabled');
    });
    await load();
    return el('div', {}, el('p', {}, scope), list, empty, more);
  }, 'audit');
  sections.push(audit);

  const refresh = el('button', { type: 'button', id: 'refresh' }, 'Refresh');
  refresh.addEventListener('click', () => void Promise.all(sections.map((part) => part.reload())));
  return [el('div', {}, refresh, ' ', el('span', { class: 'note' }, 'Operator')), ...sections.map((part) => part.element)];
}

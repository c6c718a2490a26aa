import type { SupabaseClient } from '@supabase/supabase-js';
import uPlot from 'uplot';
import 'uplot/dist/uPlot.min.css';
import { cents, dollars, el, section, table, when } from './format.ts';
import { organisationsSection } from './organisations.ts';

// The customer's page. Everything is read through row-level security with the
// user's session and changed through the database's own grants and functions
// (create_api_key, update_api_key_policy, the threshold column); a key is
// revoked through the gateway (POST /console/keys/{id}/revoke), which calls
// revoke_api_key as the user and then tells every instance.

async function must<T>(query: PromiseLike<{ data: T | null; error: { message: string } | null }>): Promise<T> {
  const { data, error } = await query;
  if (error) throw new Error(error.message);
  return data as T;
}

interface Account {
  id: string;
  balance: number;
  held: number;
  credit_limit: number;
  low_balance_threshold: number;
  plan: string;
  balance_state: string;
}

const tokenColumns = 'input_tokens,cached_input_tokens,cache_write_tokens,cache_write_1h_tokens,output_tokens,reasoning_tokens';

export function customerView(supabase: SupabaseClient, userId: string): HTMLElement[] {
  let account: Account | undefined;
  const sections: Array<{ element: HTMLElement; reload: () => Promise<void> }> = [];
  const reloadAll = () => Promise.all(sections.map((part) => part.reload()));

  // The user's own account (a member of an organisation also reads the organisation's).
  const ownAccount = async () => (account ??= await must<Account>(supabase.from('accounts').select('id,balance,held,credit_limit,low_balance_threshold,plan,balance_state').eq('user_id', userId).single()));

  const balance = section('Balance', async () => {
    account = await must<Account>(supabase.from('accounts').select('id,balance,held,credit_limit,low_balance_threshold,plan,balance_state').eq('user_id', userId).single());
    const available = account.balance - account.held + account.credit_limit;
    const figure = (label: string, value: number, name: string) => el('div', { class: 'figure', 'data-figure': name }, el('span', {}, label), el('strong', {}, dollars(value)));
    const threshold = el('input', { type: 'number', min: '0', step: '0.01', id: 'threshold', value: (account.low_balance_threshold / 1_000_000).toFixed(2), 'aria-label': 'Low-balance alert threshold in dollars' }) as HTMLInputElement;
    const message = el('span', { class: 'note' });
    const form = el('form', {}, el('label', { for: 'threshold' }, 'Alert me below $'), threshold, el('button', { type: 'submit' }, 'Save'), message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const micro = Math.round(Number(threshold.value) * 1_000_000);
      if (!Number.isFinite(micro) || micro < 0) {
        message.textContent = 'Enter an amount of zero or more.';
        return;
      }
      const { error } = await supabase.from('accounts').update({ low_balance_threshold: micro }).eq('id', account!.id);
      message.textContent = error ? `Not saved: ${error.message}` : 'Saved.';
    });
    return el(
      'div',
      {},
      el('div', { class: 'figures' }, figure('Balance', account.balance, 'balance'), figure('Held (in flight)', account.held, 'held'), figure('Available', available, 'available')),
      el('p', { class: 'note' }, `Plan: ${account.plan} · state: ${account.balance_state}`),
      form,
    );
  }, 'balance');
  sections.push(balance);

  const chart = section('Spending by day and model (30 days)', async () => {
    const since = new Date(Date.now() - 30 * 86_400_000);
    const rows = await must<Array<{ model_id: string; charged: number | null; created_at: string }>>(
      supabase.from('usage_events').select('model_id,charged,created_at').eq('account_id', (await ownAccount()).id).gte('created_at', since.toISOString()).not('charged', 'is', null).limit(10_000),
    );
    if (!rows.length) return el('p', { class: 'note' }, 'No usage in the last 30 days.');
    const days: number[] = [];
    for (let day = Math.floor(since.getTime() / 86_400_000) + 1; day <= Math.floor(Date.now() / 86_400_000); day++) days.push(day * 86_400);
    const models = [...new Set(rows.map((row) => row.model_id))].sort();
    const series = models.map((model) => days.map(() => 0));
    for (const row of rows) {
      const index = days.indexOf(Math.floor(Date.parse(row.created_at) / 86_400_000) * 86_400);
      if (index >= 0) series[models.indexOf(row.model_id)]![index]! += Number(row.charged) / 1_000_000;
    }
    const holder = el('div', { 'data-chart': 'usage' });
    const palette = ['#1f6feb', '#d1242f', '#1a7f37', '#8250df', '#bf8700', '#0969da', '#cf222e'];
    const width = Math.max(280, Math.min(1040, (document.querySelector('main')?.clientWidth ?? 600) - 40));
    new uPlot(
      {
        width,
        height: 220,
        series: [{}, ...models.map((model, index) => ({ label: model, stroke: palette[index % palette.length], width: 2, value: (_: unknown, v: number | null) => (v === null ? '—' : `$${v.toFixed(4)}`) }))],
        axes: [{}, { size: 70, values: (_: unknown, ticks: number[]) => ticks.map((tick) => `$${tick.toLocaleString('en-US', { maximumFractionDigits: 6 })}`) }],
      },
      [days, ...series],
      holder,
    );
    return holder;
  }, 'usage-chart');
  sections.push(chart);

  const recent = section('Recent requests', async () => {
    const rows = await must<Array<Record<string, string | number | null>>>(
      supabase.from('usage_events').select(`request_id,model_id,status,${tokenColumns},charged,usage_source,created_at`).eq('account_id', (await ownAccount()).id).order('created_at', { ascending: false }).limit(25),
    );
    return table(
      [['When'], ['Model'], ['Input', true], ['Cached', true], ['Cache write', true], ['Output', true], ['Reasoning', true], ['Cost', true], ['Counted by'], ['Outcome']],
      rows.map((row) => [
        when(row.created_at as string),
        String(row.model_id),
        String(row.input_tokens ?? '—'),
        String(row.cached_input_tokens ?? '—'),
        String(Number(row.cache_write_tokens ?? 0) + Number(row.cache_write_1h_tokens ?? 0)),
        String(row.output_tokens ?? '—'),
        String(row.reasoning_tokens ?? '—'),
        dollars(row.charged as number | null),
        String(row.usage_source ?? '—'),
        String(row.status),
      ]),
      'No requests yet.',
    );
  }, 'recent');
  sections.push(recent);

  const keys = section('API keys', async () => {
    const rows = await must<Array<Record<string, string | number | null>>>(
      supabase.from('api_keys').select('id,name,prefix,created_at,expires_at,revoked_at,last_used_at,requests_per_minute,tokens_per_minute,spend_limit,spent').eq('account_id', (await ownAccount()).id).order('created_at', { ascending: false }),
    );
    const shown = el('div');
    const name = el('input', { placeholder: 'Key name', required: '', id: 'new-key-name', 'aria-label': 'New key name' }) as HTMLInputElement;
    const create = el('form', {}, name, el('button', { type: 'submit', class: 'primary' }, 'Create key'));
    create.addEventListener('submit', async (event) => {
      event.preventDefault();
      const { data, error } = await supabase.rpc('create_api_key', { p_name: name.value.trim(), p_expires_at: null, p_policy: {} });
      if (error) {
        shown.replaceChildren(el('p', { class: 'error' }, `Not created: ${error.message}`));
        return;
      }
      await keys.reload();
      // Shown once: the database keeps only its hash.
      document.querySelector('#keys .created')?.replaceChildren(
        el('p', {}, 'Your new key (copy it now; it is not shown again):'),
        el('div', { class: 'secret', 'data-new-key': '' }, String((data as { key: string }).key)),
      );
    });
    const revoke = (id: string) => async () => {
      if (!confirm('Revoke this key? Requests with it will be refused.')) return;
      // Through the gateway, which revokes it as this user and then tells every instance
      // (a hold taken ahead for the key is refused at once, not at the end of its window).
      const { data: { session } } = await supabase.auth.getSession();
      const response = await fetch(`/console/keys/${encodeURIComponent(id)}/revoke`, {
        method: 'POST',
        headers: { authorization: `Bearer ${session?.access_token ?? ''}` },
      });
      const answer = (await response.json().catch(() => ({}))) as { error?: { message?: string }; note?: string };
      if (!response.ok) alert(`Not revoked: ${answer.error?.message ?? `HTTP ${response.status}`}`);
      else if (answer.note) alert(`Revoked. ${answer.note}`);
      await keys.reload();
    };
    const limits = (row: Record<string, string | number | null>) => async () => {
      const answer = prompt('Requests per minute for this key (empty: the plan\'s)', row.requests_per_minute === null ? '' : String(row.requests_per_minute));
      if (answer === null) return;
      const value = answer.trim() === '' ? null : Number(answer);
      const { error } = await supabase.rpc('update_api_key_policy', { p_key_id: row.id, p_policy: { requests_per_minute: value } });
      if (error) alert(`Not changed: ${error.message}`);
      await keys.reload();
    };
    const list = table(
      [['Name'], ['Key'], ['Created'], ['Last used'], ['Spent', true], ['Req/min', true], ['State'], ['']],
      rows.map((row) => {
        const actions = el('span');
        if (!row.revoked_at) {
          const change = el('button', { type: 'button' }, 'Limits');
          change.addEventListener('click', limits(row));
          const button = el('button', { type: 'button', 'data-revoke': String(row.id) }, 'Revoke');
          button.addEventListener('click', revoke(String(row.id)));
          actions.append(change, ' ', button);
        }
        return [
          String(row.name),
          `${row.prefix}…`,
          when(row.created_at as string),
          when(row.last_used_at as string | null),
          dollars(row.spent as number),
          row.requests_per_minute === null ? 'plan' : String(row.requests_per_minute),
          row.revoked_at ? `revoked ${when(row.revoked_at as string)}` : row.expires_at && Date.parse(String(row.expires_at)) < Date.now() ? 'expired' : 'active',
          actions,
        ];
      }),
      'No keys yet.',
    );
    return el('div', {}, create, el('div', { class: 'created' }), shown, list);
  }, 'keys');
  sections.push(keys);

  // Invitations to the user, the organisations they belong to, and the members of those they own.
  sections.push(organisationsSection(supabase, userId));

  // What the last redemption said, kept across the section's reload.
  let redeemed: Array<Node | string> = [];
  let redeemedClass = 'note';
  const credits = section('Your credits', async () => {
    const rows = await must<Array<Record<string, string | number | null>>>(
      supabase.from('credit_grants').select('source,category,amount,remaining,expires_at,expired_at,created_at').eq('account_id', (await ownAccount()).id).order('created_at', { ascending: false }).limit(50),
    );
    const code = el('input', { id: 'redeem-code', placeholder: 'CODE', autocomplete: 'off', 'aria-label': 'Redemption code' }) as HTMLInputElement;
    const message = el('span', { class: redeemedClass, id: 'redeem-message' }, ...redeemed);
    const form = el('form', {}, code, el('button', { type: 'submit' }, 'Redeem'), message);
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const { data, error } = await supabase.rpc('redeem_code', { p_code: code.value });
      if (error) {
        redeemedClass = 'error';
        redeemed = [error.code === 'PT404' ? 'There is no such code.' : `Not redeemed: ${error.message}.`];
      } else {
        redeemedClass = 'note';
        redeemed = ['Redeemed: ', dollars((data as { credits: number }).credits), ' added.'];
      }
      message.className = redeemedClass;
      message.replaceChildren(...redeemed);
      if (!error) await Promise.all([credits.reload(), balance.reload()]);
    });
    return el(
      'div',
      {},
      form,
      el('p', { class: 'note' }, 'Promotional credits are spent before paid ones, those that expire soonest first.'),
      table(
        [['Received'], ['From'], ['Kind'], ['Amount', true], ['Left', true], ['Expires']],
        rows.map((row) => [
          when(row.created_at as string),
          String(row.source),
          String(row.category),
          dollars(row.amount as number),
          dollars(row.remaining as number),
          row.expired_at ? `expired ${when(row.expired_at as string)}` : row.expires_at ? when(row.expires_at as string) : 'never',
        ]),
        'No credits yet.',
      ),
    );
  }, 'credits');
  sections.push(credits);

  const buy = section('Buy credits', async () => {
    const [packs, plans] = await Promise.all([
      must<Array<Record<string, string | number | null>>>(supabase.from('credit_packs').select('name,unit_amount,currency,credits,bonus_credits,payment_link_url').eq('active', true).order('unit_amount')),
      must<Array<Record<string, string | number | null>>>(supabase.from('plans').select('id,name,unit_amount,currency,monthly_credits,payment_link_url').eq('active', true).order('unit_amount')),
    ]);
    await ownAccount();
    // The account travels as client_reference_id: that is how the payment finds it.
    const link = (url: string | number | null | undefined, label: string) => {
      if (!url) return el('span', { class: 'note' }, 'no Payment Link yet');
      const target = new URL(String(url));
      target.searchParams.set('client_reference_id', account!.id);
      return el('a', { href: target.toString(), target: '_blank', rel: 'noopener' }, label);
    };
    return el(
      'div',
      {},
      table(
        [['Pack'], ['Price', true], ['Credits', true], ['']],
        packs.map((pack) => {
          const total = Number(pack.credits) + Number(pack.bonus_credits ?? 0);
          return [String(pack.name), cents(Number(pack.unit_amount), String(pack.currency)), dollars(total), link(pack.payment_link_url, 'Buy')];
        }),
        'No credit packs on sale.',
      ),
      table(
        [['Plan'], ['Per month', true], ['Monthly credits', true], ['']],
        plans.filter((plan) => Number(plan.unit_amount) > 0).map((plan) => [String(plan.name), cents(Number(plan.unit_amount), String(plan.currency)), dollars(plan.monthly_credits as number), link(plan.payment_link_url, 'Subscribe')]),
        'No subscription plans.',
      ),
    );
  }, 'buy');
  sections.push(buy);

  const payments = section('Payments, refunds and disputes', async () => {
    const rows = await must<Array<Record<string, string | number | null>>>(
      supabase.from('stripe_payments').select('created_at,amount_total,currency,credits,status,refunded_amount,disputed_amount,debited').order('created_at', { ascending: false }).limit(50),
    );
    return table(
      [['When'], ['Paid', true], ['Credits', true], ['Status'], ['Refunded', true], ['Disputed', true], ['Taken back', true]],
      rows.map((row) => [
        when(row.created_at as string),
        cents(Number(row.amount_total ?? 0), String(row.currency ?? 'usd')),
        dollars(row.credits as number | null),
        String(row.status),
        cents(Number(row.refunded_amount ?? 0), String(row.currency ?? 'usd')),
        cents(Number(row.disputed_amount ?? 0), String(row.currency ?? 'usd')),
        dollars(row.debited as number | null),
      ]),
      'No payments yet.',
    );
  }, 'payments');
  sections.push(payments);

  const refresh = el('button', { type: 'button', id: 'refresh' }, 'Refresh');
  refresh.addEventListener('click', () => void reloadAll());
  return [el('div', {}, refresh), ...sections.map((part) => part.element)];
}

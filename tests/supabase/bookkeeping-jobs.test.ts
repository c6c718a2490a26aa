import { describe, expect, it } from 'vitest';
import { inRolledBackTransaction, pgNetStandIn } from '../support/pg-net.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';


async function alertsOf(accountId: string, kind?: string) {
  const { rows } = await admin().query(
    'select kind, message, details from public.alerts where account_id = $1 and ($2::text is null or kind = $2) order by id',
    [accountId, kind ?? null],
  );
  return rows;
}

describe('reconcile_books', () => {
  it('finds nothing wrong in balanced books', async () => {
    await createCustomer({ balance: 1_000 });
    const { rows: [result] } = await admin().query('select public.reconcile_books(now()) as result');
    expect(result.result.mismatches).toBe(0);
  });

  it('turns a balance that disagrees with its ledger, and held that disagrees with open holds, into alerts — once, and fixes nothing', async () => {
    const customer = await createCustomer({ balance: 1_000 });
    await inRolledBackTransaction(async (client) => {
      await client.query('update public.accounts set balance = balance + 7, held = held + 3 where id = $1', [customer.accountId]);
      const first = await client.query('select public.reconcile_books($1) as result', ['2026-11-23T12:00:00Z']);
      expect(first.rows[0].result.mismatches).toBeGreaterThanOrEqual(2);
      const second = await client.query('select public.reconcile_books($1) as result', ['2026-11-23T12:10:00Z']);
      expect(second.rows[0].result.mismatches).toBeGreaterThanOrEqual(2);
      const { rows } = await client.query('select kind, details from public.alerts where account_id = $1 order by id', [customer.accountId]);
      expect(rows.filter((row) => row.kind === 'ledger_mismatch')).toEqual([
        { kind: 'ledger_mismatch', details: { balance: 1_007, ledger_sum: 1_000, checked_at: '2026-11-23T12:00:00+00:00' } },
      ]);
      expect(rows.filter((row) => row.kind === 'holds_mismatch')).toHaveLength(1);
      const { rows: [account] } = await client.query('select balance from public.accounts where id = $1', [customer.accountId]);
      expect(account.balance).toBe('1007');
    });
  });

  it('checks every credited Stripe payment against its ledger row', async () => {
    const customer = await createCustomer({ balance: 0 });
    await inRolledBackTransaction(async (client) => {
      await client.query(
        `insert into public.stripe_payments (checkout_session_id, account_id, status, credits) values ('cs_test_missing_ledger', $1, 'credited', 10000000)`,
        [customer.accountId],
      );
      await client.query('select public.reconcile_books(now())');
      const { rows } = await client.query(`select details from public.alerts where kind = 'stripe_mismatch' and account_id = $1`, [customer.accountId]);
      expect(rows).toEqual([{ details: expect.objectContaining({ session: 'cs_test_missing_ledger', credits: 10_000_000, ledger_amount: null }) }]);
    });
  });

  it('checks the credited payments of an invoice against the invoice: credited to the same account, never more than it', async () => {
    const customer = await createCustomer({ balance: 0 });
    await inRolledBackTransaction(async (client) => {
      await client.query(
        `insert into public.stripe_invoices (id, customer_id, account_id, status, credits) values ('in_test_books', 'cus_test_books', $1, 'credited', 20000000)`,
        [customer.accountId],
      );
      await client.query(
        `insert into public.stripe_payments (payment_intent_id, invoice_id, account_id, status, credits, amount_total)
         values ('pi_test_books_1', 'in_test_books', $1, 'credited', 20000000, 2000)`,
        [customer.accountId],
      );
      // (The invoice has no ledger row here: only the alerts about its payments are looked at.)
      const aboutPayments = `select details from public.alerts where kind = 'stripe_mismatch' and account_id = $1 and details ? 'payments_credits'`;
      await client.query('select public.reconcile_books(now())');
      expect((await client.query(aboutPayments, [customer.accountId])).rows).toEqual([]);
      // A second payment credited with the invoice's credits again: more than the invoice.
      await client.query(
        `insert into public.stripe_payments (payment_intent_id, invoice_id, account_id, status, credits, amount_total)
         values ('pi_test_books_2', 'in_test_books', $1, 'credited', 20000000, 2000)`,
        [customer.accountId],
      );
      await client.query('select public.reconcile_books(now())');
      expect((await client.query(aboutPayments, [customer.accountId])).rows).toEqual([
        { details: expect.objectContaining({ invoice: 'in_test_books', payments_credits: 40_000_000, invoice_credits: 20_000_000 }) },
      ]);
    });
  });
});

describe('expire_stale_holds', () => {
  it('releases a hold older than the longest request, charges nothing, marks it expired and raises it', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 100_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 500, maxOutputTokens: 500 });

    // Ten minutes later the request may still be streaming: nothing happens.
    await admin().query(`select public.expire_stale_holds(now() + interval '10 minutes')`);
    const { rows: [kept] } = await admin().query('select status from public.usage_events where request_id = $1', [requestId]);
    expect(kept.status).toBe('held');

    const { rows: [result] } = await admin().query(`select public.expire_stale_holds(now() + interval '16 minutes') as result`);
    expect(result.result.expired).toBeGreaterThanOrEqual(1);
    const { rows: [event] } = await admin().query('select status, charged from public.usage_events where request_id = $1', [requestId]);
    expect(event).toEqual({ status: 'expired', charged: '0' });
    const { rows: [account] } = await admin().query('select balance, held from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: '100000', held: '0' });
    expect(await alertsOf(customer.accountId, 'stale_hold')).toHaveLength(1);

    // A settlement that arrives after the hold expired (an outage outlasted the
    // gateway's retries) still charges what was used, once.
    const late = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 10 }, usageSource: 'provider' });
    expect(late).toMatchObject({ replayed: false, status: 'completed', amount: 10, charged: 10, balance: 99_990, held: 0 });
    const again = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 10 }, usageSource: 'provider' });
    expect(again).toMatchObject({ replayed: true, status: 'completed', charged: 10, balance: 99_990 });
    const { rows: [closed] } = await admin().query('select status, charged, hold_expired_at is not null as expired from public.usage_events where request_id = $1', [requestId]);
    expect(closed).toEqual({ status: 'completed', charged: '10', expired: true });
  });

  it('a late settlement charges only what the balance still allows; the shortfall stays visible', async () => {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const customer = await createCustomer({ balance: 1_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 500, maxOutputTokens: 500 });
    await admin().query(`select public.expire_stale_holds(now() + interval '16 minutes')`);
    // Meanwhile the customer spent most of the balance on other requests.
    const other = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId: other, keyHash: customer.keyHash, model, maxInputTokens: 800, maxOutputTokens: 100 });
    await ledger.settleRequest({ requestId: other, outcome: 'completed', usage: { input: 800, output: 100 }, usageSource: 'provider' });
    const late = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 300, output: 200 }, usageSource: 'provider' });
    expect(late).toMatchObject({ amount: 500, charged: 100, balance: 0, held: 0 });
  });
});

describe('balance states and low-balance alerts', () => {
  it('ok → low → depleted, one alert per crossing; a top-up re-arms; depleted requests are refused with 402', async () => {
    // Output is free, so a hold is exactly the input and the balance can be spent to zero.
    const model = await createModel({ input: 1_000_000, output: 0 });
    const customer = await createCustomer({ balance: 2_000_000 });
    const state = async () => (await admin().query('select balance_state from public.accounts where id = $1', [customer.accountId])).rows[0].balance_state;
    const spend = async (tokens: number) => {
      const requestId = crypto.randomUUID();
      const authorization = await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: tokens, maxOutputTokens: 1 });
      if (authorization.status === 'authorized') {
        await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: tokens }, usageSource: 'provider' });
      }
      return authorization;
    };
    expect(await state()).toBe('ok');
    await spend(600_000); // 1,400,000 left: above the 1,000,000 default threshold
    await spend(600_000); // 800,000: low
    expect(await state()).toBe('low');
    await spend(100_000); // still low: no second alert
    await spend(700_000); // 0: depleted
    expect(await state()).toBe('depleted');
    expect((await alertsOf(customer.accountId)).map((alert) => alert.kind)).toEqual(['low_balance', 'balance_depleted']);
    expect(await spend(1)).toMatchObject({ status: 'refused', code: 'insufficient_credits' });

    await ledger.grantCredits({ accountId: customer.accountId, amount: 5_000_000 });
    expect(await state()).toBe('ok');
    expect(await spend(1)).toMatchObject({ status: 'authorized' });
    await spend(4_500_000);
    expect((await alertsOf(customer.accountId)).map((alert) => alert.kind)).toEqual(['low_balance', 'balance_depleted', 'low_balance']);
  });

  it('a threshold the user sets on their own account is picked up by the sweep', async () => {
    const customer = await createCustomer({ balance: 3_000_000 });
    await customer.client.from('accounts').update({ low_balance_threshold: 4_000_000 }).eq('id', customer.accountId).throwOnError();
    const { rows: [result] } = await admin().query('select public.check_balance_states(now()) as result');
    expect(result.result.changed).toBeGreaterThanOrEqual(1);
    expect(await alertsOf(customer.accountId, 'low_balance')).toEqual([
      { kind: 'low_balance', message: expect.any(String), details: { balance: 3_000_000, threshold: 4_000_000 } },
    ]);
  });
});

describe('deliver_alerts through pg_net', () => {

  it('does nothing without pg_net, and sends, records and retries with it', async () => {
    const customer = await createCustomer({ balance: 500_000 }); // low: one alert waiting
    await inRolledBackTransaction(async (client) => {
      await client.query(`update public.billing_settings set alert_webhook_url = 'https://hooks.example.test/tollgate'`);
      // The rest of the suite's alerts count as sent already (in this transaction only), so ours is in the batch.
      await client.query(`update public.alerts set delivery_status = 'delivered', delivered_at = now() where account_id is distinct from $1`, [customer.accountId]);
      const without = await client.query('select public.deliver_alerts(now()) as result');
      expect(without.rows[0].result).toMatchObject({ sent: 0, transport: 'pg_net not installed' });

      await client.query(pgNetStandIn);
      await client.query('select public.deliver_alerts(now())');
      const { rows: [alert] } = await client.query(`select * from public.alerts where account_id = $1 and kind = 'low_balance'`, [customer.accountId]);
      expect(alert).toMatchObject({ delivery_status: 'sent', delivery_attempts: 1 });
      const { rows: [queued] } = await client.query('select url, headers, convert_from(body, $2) as body from net.http_request_queue where id = $1', [alert.net_request_id, 'UTF8']);
      expect(queued.url).toBe('https://hooks.example.test/tollgate');
      expect(JSON.parse(queued.body)).toMatchObject({ id: Number(alert.id), kind: 'low_balance', account_id: customer.accountId });

      // The endpoint failed: retried on the next run.
      await client.query(`insert into net._http_response (id, status_code, timed_out) values ($1, 500, false)`, [alert.net_request_id]);
      await client.query('select public.deliver_alerts(now())');
      const { rows: [retried] } = await client.query('select * from public.alerts where id = $1', [alert.id]);
      expect(retried).toMatchObject({ delivery_status: 'sent', delivery_attempts: 2 });

      // Then it answered 200: delivered, and not sent again.
      await client.query(`insert into net._http_response (id, status_code, timed_out) values ($1, 200, false)`, [retried.net_request_id]);
      await client.query(`select public.deliver_alerts('2026-11-23T12:00:00Z')`);
      const { rows: [delivered] } = await client.query('select * from public.alerts where id = $1', [alert.id]);
      expect(delivered).toMatchObject({ delivery_status: 'delivered', delivery_attempts: 2 });
      expect(delivered.delivered_at.toISOString()).toBe('2026-11-23T12:00:00.000Z');
    });
  });
});

describe('rollup_usage', () => {
  it('sums a day per account and model, with margin, and gives the same rows when run again', async () => {
    const model = await createModel({ input: 2_000_000, output: 8_000_000 }, { cost: { input: 1_000_000, output: 4_000_000 } });
    const customer = await createCustomer({ balance: 10_000_000 });
    for (const usage of [{ input: 1000, output: 500 }, { input: 3000, cached_input: 1000, output: 100, reasoning: 50 }]) {
      const requestId = crypto.randomUUID();
      await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 10_000, maxOutputTokens: 1000 });
      await ledger.settleRequest({ requestId, outcome: 'completed', usage, usageSource: 'provider' });
    }
    const { rows: [{ day }] } = await admin().query(`select (now() at time zone 'UTC')::date::text as day`);
    await admin().query('select public.rollup_usage($1)', [day]);
    await admin().query('select public.rollup_usage($1)', [day]);
    const { rows } = await admin().query('select * from public.usage_daily where account_id = $1', [customer.accountId]);
    // amounts: (1000×2 + 500×8) = 6000; (3000×2 + 1000×2 + 150×8) = 9200. costs: 3000 and 4600.
    expect(rows).toEqual([
      expect.objectContaining({
        model_id: model, requests: '2', input_tokens: '4000', cached_input_tokens: '1000', output_tokens: '600', reasoning_tokens: '50',
        amount: '15200', charged: '15200', upstream_cost: '7600', margin: '7600',
      }),
    ]);
    const { data } = await customer.client.from('usage_daily').select('model_id, requests');
    expect(data).toEqual([{ model_id: model, requests: 2 }]);
  });
});

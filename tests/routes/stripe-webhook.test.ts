import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { charge, checkoutSession, dispute, invoice, signature, stripeEvent } from '../support/stripe-events.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

const secret = 'whsec_test_tollgate';
let gateway: Gateway;

beforeAll(async () => {
  gateway = await startGateway({ STRIPE_WEBHOOK_SECRET: secret, STRIPE_SECRET_KEY: 'sk_test_tollgate' });
});

afterAll(async () => {
  await gateway.close();
});

/** A credit pack sold through its own Payment Link: $50 for 50 + 5 bonus credits (dollars). */
async function createPack(options: { unitAmount?: number; credits?: number; bonus?: number } = {}) {
  const link = `plink_test_${crypto.randomUUID().replaceAll('-', '')}`;
  await admin().query(
    `insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits, bonus_credits) values ('Fifty', $1, $2, $3, $4)`,
    [link, options.unitAmount ?? 5000, options.credits ?? 50_000_000, options.bonus ?? 5_000_000],
  );
  return link;
}

function deliver(event: object, options: { secret?: string; timestamp?: number; body?: string; header?: string } = {}) {
  const body = options.body ?? JSON.stringify(event);
  return fetch(`${gateway.url}/webhooks/stripe`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'stripe-signature': options.header ?? signature(body, options.secret ?? secret, options.timestamp) },
    body,
  });
}

async function balance(accountId: string) {
  const { rows } = await admin().query('select balance from public.accounts where id = $1', [accountId]);
  return Number(rows[0].balance);
}

async function ledgerRows(accountId: string) {
  const { rows } = await admin().query('select amount, reason from public.credit_ledger where account_id = $1 order by id', [accountId]);
  return rows.map((row) => ({ amount: Number(row.amount), reason: row.reason }));
}

async function alerts(accountId: string | null, kind: string) {
  const { rows } = await admin().query('select * from public.alerts where account_id is not distinct from $1 and kind = $2', [accountId, kind]);
  return rows;
}

describe('checkout.session.completed', () => {
  it('a paid checkout credits the pack and its bonus once, however often it is delivered', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const event = stripeEvent('checkout.session.completed', checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 }));

    const first = await deliver(event);
    expect(first.status).toBe(200);
    expect(await first.json()).toMatchObject({ received: true, status: 'credited', account_id: customer.accountId });
    for (let attempt = 0; attempt < 4; attempt++) {
      expect(await (await deliver(event)).json()).toMatchObject({ status: 'duplicate' });
    }
    const concurrent = await Promise.all(Array.from({ length: 5 }, () => deliver(event).then((response) => response.json())));
    expect(concurrent.every((result) => result.status === 'duplicate')).toBe(true);
    expect((await ledgerRows(customer.accountId)).filter((row) => row.reason === 'purchase')).toEqual([{ amount: 55_000_000, reason: 'purchase' }]);
    expect(await balance(customer.accountId)).toBe(55_000_000);
  });

  it('five different deliveries of one checkout, at once, still credit once', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 });
    const results = await Promise.all(
      Array.from({ length: 5 }, () => deliver(stripeEvent('checkout.session.completed', session)).then((response) => response.json())),
    );
    expect(results.filter((result) => result.status === 'credited')).toHaveLength(1);
    expect(await balance(customer.accountId)).toBe(55_000_000);
  });
});

describe('delayed payment methods', () => {
  it('completed but unpaid credits nothing; async_payment_succeeded credits once', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const unpaid = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000, paymentStatus: 'unpaid' });
    expect(await (await deliver(stripeEvent('checkout.session.completed', unpaid))).json()).toMatchObject({ status: 'pending' });
    expect(await balance(customer.accountId)).toBe(0);

    const paid = { ...unpaid, payment_status: 'paid' };
    const succeeded = stripeEvent('checkout.session.async_payment_succeeded', paid);
    expect(await (await deliver(succeeded)).json()).toMatchObject({ status: 'credited' });
    expect(await (await deliver(succeeded)).json()).toMatchObject({ status: 'duplicate' });
    expect(await (await deliver(stripeEvent('checkout.session.async_payment_succeeded', paid))).json()).toMatchObject({ status: 'already_credited' });
    expect(await balance(customer.accountId)).toBe(55_000_000);
  });

  it('async_payment_failed credits nothing', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const unpaid = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000, paymentStatus: 'unpaid' });
    await deliver(stripeEvent('checkout.session.completed', unpaid));
    expect(await (await deliver(stripeEvent('checkout.session.async_payment_failed', unpaid))).json()).toMatchObject({ status: 'failed' });
    expect(await (await deliver(stripeEvent('checkout.session.async_payment_succeeded', { ...unpaid, payment_status: 'paid' }))).json()).toMatchObject({
      status: 'already_failed',
    });
    expect(await balance(customer.accountId)).toBe(0);
  });
});

describe('refunds and disputes', () => {
  async function bought() {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack({ unitAmount: 1000, credits: 10_000_000, bonus: 0 });
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 1000 });
    await deliver(stripeEvent('checkout.session.completed', session));
    return { customer, paymentIntent: session.payment_intent! };
  }

  async function spend(customer: Awaited<ReturnType<typeof createCustomer>>, amount: number) {
    const model = await createModel({ input: 1_000_000, output: 1_000_000 }, { maxOutputTokens: 100_000_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: amount, maxOutputTokens: 1 });
    await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: amount }, usageSource: 'provider' });
  }

  it('a partial refund takes back the refunded share', async () => {
    const { customer, paymentIntent } = await bought();
    await spend(customer, 2_000_000);
    const refund = stripeEvent('charge.refunded', charge({ paymentIntent, amount: 1000, amountRefunded: 300 }));
    expect(await (await deliver(refund)).json()).toMatchObject({ status: 'refunded' });
    expect(await (await deliver(refund)).json()).toMatchObject({ status: 'duplicate' });
    // 10,000,000 − 2,000,000 spent − 30% of 10,000,000
    expect(await balance(customer.accountId)).toBe(5_000_000);
    // Stripe's amount_refunded is cumulative: a second refund to 50% takes back 20% more.
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 1000, amountRefunded: 500 })));
    expect(await balance(customer.accountId)).toBe(3_000_000);
  });

  it('a refund after most of the credit was spent takes back what is left and raises the shortfall', async () => {
    const { customer, paymentIntent } = await bought();
    await spend(customer, 6_000_000);
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 1000, amountRefunded: 1000 })));
    expect(await balance(customer.accountId)).toBe(0);
    const { rows: [payment] } = await admin().query('select debited, uncollected from public.stripe_payments where payment_intent_id = $1', [paymentIntent]);
    expect(payment).toEqual({ debited: '4000000', uncollected: '6000000' });
    expect(await alerts(customer.accountId, 'clawback_shortfall')).toHaveLength(1);
  });

  it('a dispute takes back the disputed share and flags the account', async () => {
    const { customer, paymentIntent } = await bought();
    const event = stripeEvent('charge.dispute.created', dispute({ paymentIntent, amount: 1000 }));
    expect(await (await deliver(event)).json()).toMatchObject({ status: 'disputed' });
    expect(await balance(customer.accountId)).toBe(0);
    const { rows: [account] } = await admin().query('select flagged_reason from public.accounts where id = $1', [customer.accountId]);
    expect(account.flagged_reason).toContain('disputed');
    expect(await alerts(customer.accountId, 'payment_disputed')).toHaveLength(1);
    expect((await ledgerRows(customer.accountId)).at(-1)).toEqual({ amount: -10_000_000, reason: 'dispute' });
  });

  it('out of order: a refund that arrives before its checkout is applied when the checkout is', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack({ unitAmount: 1000, credits: 10_000_000, bonus: 0 });
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 1000 });
    const refund = stripeEvent('charge.refunded', charge({ paymentIntent: session.payment_intent!, amount: 1000, amountRefunded: 400 }));
    expect(await (await deliver(refund)).json()).toMatchObject({ status: 'recorded' });
    expect(await balance(customer.accountId)).toBe(0);
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'credited' });
    expect(await ledgerRows(customer.accountId)).toEqual(expect.arrayContaining([{ amount: 10_000_000, reason: 'purchase' }, { amount: -4_000_000, reason: 'refund' }]));
    expect(await balance(customer.accountId)).toBe(6_000_000);
  });
});

describe('refunds and disputes that arrive first', () => {
  it('a dispute before its checkout: the checkout is credited, the disputed share taken back, the account flagged', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack({ unitAmount: 1000, credits: 10_000_000, bonus: 0 });
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 1000 });
    await deliver(stripeEvent('charge.dispute.created', dispute({ paymentIntent: session.payment_intent!, amount: 1000 })));
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'credited' });
    expect(await balance(customer.accountId)).toBe(0);
    expect((await ledgerRows(customer.accountId)).at(-1)).toEqual({ amount: -10_000_000, reason: 'dispute' });
    const { rows: [account] } = await admin().query('select flagged_reason from public.accounts where id = $1', [customer.accountId]);
    expect(account.flagged_reason).toContain('disputed');
  });
});

describe('payments that match nothing are recorded and alerted, never credited', () => {
  it.each([
    ['no client_reference_id', { clientReferenceId: null }],
    ['an unknown account', { clientReferenceId: crypto.randomUUID() }],
    ['a client_reference_id that is not a UUID', { clientReferenceId: 'a'.repeat(36) }],
    ['an unknown payment link', { paymentLink: 'plink_test_unknown' }],
    ['an amount that is not the pack\'s', { amount: 4999 }],
  ])('%s', async (_name, override) => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000, ...override });
    const response = await deliver(stripeEvent('checkout.session.completed', session));
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'unmatched' });
    expect(await balance(customer.accountId)).toBe(0);
    const { rows: [payment] } = await admin().query('select status, problem from public.stripe_payments where checkout_session_id = $1', [session.id]);
    expect(payment.status).toBe('unmatched');
    expect(payment.problem.length).toBeGreaterThan(10);
    const { rows } = await admin().query(`select * from public.alerts where kind = 'unmatched_payment' and details ->> 'session' = $1`, [session.id]);
    expect(rows).toHaveLength(1);
  });
});

describe('subscriptions', () => {
  it('invoice.paid credits the plan\'s monthly credits, also when it arrives before the checkout', async () => {
    const customer = await createCustomer({ balance: 0 });
    const planId = `pro${crypto.randomUUID().slice(0, 8)}`;
    const price = `price_test_${planId}`;
    const link = `plink_test_${planId}`;
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Pro', 20000000, $2, $3)`,
      [planId, price, link],
    );
    const customerId = `cus_test_${planId}`;
    const early = stripeEvent('invoice.paid', invoice({ customer: customerId, price, amount: 2000 }));
    expect(await (await deliver(early)).json()).toMatchObject({ status: 'pending' });

    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: customerId });
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'subscribed' });
    expect(await balance(customer.accountId)).toBe(20_000_000);

    const renewal = stripeEvent('invoice.paid', invoice({ customer: customerId, price, amount: 2000 }));
    expect(await (await deliver(renewal)).json()).toMatchObject({ status: 'credited' });
    expect(await (await deliver(renewal)).json()).toMatchObject({ status: 'duplicate' });
    expect(await balance(customer.accountId)).toBe(40_000_000);
    const { rows: [account] } = await admin().query('select plan from public.accounts where id = $1', [customer.accountId]);
    expect(account.plan).toBe(planId);
  });

  it('a checkout and its first invoice delivered at the same moment still credit once', async () => {
    const planId = `race${crypto.randomUUID().slice(0, 8)}`;
    const price = `price_test_${planId}`;
    const link = `plink_test_${planId}`;
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Race', 7000000, $2, $3)`,
      [planId, price, link],
    );
    for (let round = 0; round < 5; round++) {
      const customer = await createCustomer({ balance: 0 });
      const customerId = `cus_test_${planId}_${round}`;
      const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: customerId });
      await Promise.all([
        deliver(stripeEvent('checkout.session.completed', session)),
        deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price, amount: 2000 }))),
      ]);
      expect(await balance(customer.accountId)).toBe(7_000_000);
    }
  });
});

describe('what is not verified writes nothing', () => {
  async function counts() {
    const { rows: [row] } = await admin().query(
      'select (select count(*) from public.stripe_events)::int as events, (select count(*) from public.credit_ledger)::int as ledger, (select count(*) from public.alerts)::int as alerts',
    );
    return row;
  }

  it.each([
    ['a forged signature', { header: 't=1700000000,v1=' + 'ab'.repeat(32) }],
    ['the wrong secret', { secret: 'whsec_someone_else' }],
    ['a timestamp past the 300 s tolerance', { timestamp: Math.floor(Date.now() / 1000) - 301 }],
    ['a malformed body', { body: '{"id": "evt_x", "type": ' }],
    ['no signature at all', { header: '' }],
  ])('%s → 400', async (_name, options) => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const event = stripeEvent('checkout.session.completed', checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 }));
    const before = await counts();
    const response = await deliver(event, options);
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: expect.stringMatching(/^(invalid_signature|missing_signature)$/) } });
    expect(await balance(customer.accountId)).toBe(0);
    const after = await counts();
    expect(after.events).toBe(before.events);
  });

  it('other event types are answered 2xx and recorded, not acted on', async () => {
    const event = stripeEvent('customer.created', { id: 'cus_test_ignored', object: 'customer' });
    const response = await deliver(event);
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ status: 'ignored' });
  });
});

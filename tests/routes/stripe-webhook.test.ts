import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { charge, checkoutSession, dispute, invoice, invoicePayment, legacyInvoice, signature, stripeEvent, subscription } from '../support/stripe-events.ts';
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
  it('a pack given a new link, or taken off sale, while the debit clears: credited as it was bought', async () => {
    for (const change of [`set stripe_payment_link_id = 'plink_test_' || md5(random()::text), unit_amount = 6000`, 'set active = false']) {
      const customer = await createCustomer({ balance: 0 });
      const link = await createPack();
      const unpaid = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000, paymentStatus: 'unpaid' });
      expect(await (await deliver(stripeEvent('checkout.session.completed', unpaid))).json()).toMatchObject({ status: 'pending' });
      // What `npm run stripe:links` does for a new price, or the operator taking the pack off sale.
      await admin().query(`update public.credit_packs ${change} where stripe_payment_link_id = $1`, [link]);
      expect(await (await deliver(stripeEvent('checkout.session.async_payment_succeeded', { ...unpaid, payment_status: 'paid' }))).json()).toMatchObject({ status: 'credited' });
      expect(await balance(customer.accountId)).toBe(55_000_000);
    }
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

  it('a refund of a payment no checkout credited (a subscription invoice\'s) is told to the operator, once', async () => {
    const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 20)}`;
    for (const refunded of [1000, 2000]) {
      expect(await (await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 2000, amountRefunded: refunded })))).json()).toMatchObject({ status: 'recorded' });
    }
    const { rows } = await admin().query(`select account_id, details from public.alerts where kind = 'refund_unmatched' and details ->> 'payment_intent' = $1`, [paymentIntent]);
    expect(rows).toEqual([{ account_id: null, details: expect.objectContaining({ payment_intent: paymentIntent, amount_refunded: 1000 }) }]);
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

  it('a subscription checkout puts the account on the plan once paid: not while a debit clears, never when it fails', async () => {
    const planId = `pro${crypto.randomUUID().slice(0, 8)}`;
    const link = `plink_test_${planId}`;
    await admin().query(`insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Pro', 20000000, $2, $3)`, [planId, `price_test_${planId}`, link]);
    const planOf = async (accountId: string) => (await admin().query('select plan, stripe_customer_id from public.accounts where id = $1', [accountId])).rows[0];
    const clearing = await createCustomer({ balance: 0 });
    const unpaid = checkoutSession({ clientReferenceId: clearing.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: `cus_test_a${planId}`, paymentStatus: 'unpaid' });
    expect(await (await deliver(stripeEvent('checkout.session.completed', unpaid))).json()).toMatchObject({ status: 'pending' });
    expect(await planOf(clearing.accountId)).toEqual({ plan: 'free', stripe_customer_id: null });
    expect(await (await deliver(stripeEvent('checkout.session.async_payment_succeeded', { ...unpaid, payment_status: 'paid' }))).json()).toMatchObject({ status: 'subscribed' });
    expect(await planOf(clearing.accountId)).toEqual({ plan: planId, stripe_customer_id: `cus_test_a${planId}` });

    const failing = await createCustomer({ balance: 0 });
    const failed = checkoutSession({ clientReferenceId: failing.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: `cus_test_b${planId}`, paymentStatus: 'unpaid' });
    expect(await (await deliver(stripeEvent('checkout.session.async_payment_failed', failed))).json()).toMatchObject({ status: 'failed' });
    expect(await planOf(failing.accountId)).toEqual({ plan: 'free', stripe_customer_id: null });
  });

  it('a second subscription checkout for an account says that the first one\'s invoices no longer reach it', async () => {
    const customer = await createCustomer({ balance: 0 });
    const planId = `pro${crypto.randomUUID().slice(0, 8)}`;
    const link = `plink_test_${planId}`;
    await admin().query(`insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Pro', 20000000, $2, $3)`, [planId, `price_test_${planId}`, link]);
    for (const customerId of [`cus_test_1${planId}`, `cus_test_1${planId}`, `cus_test_2${planId}`]) {
      const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: customerId });
      expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'subscribed' });
    }
    const raised = await alerts(customer.accountId, 'subscription_replaced');
    expect(raised.map((alert) => alert.details)).toEqual([expect.objectContaining({ previous_customer: `cus_test_1${planId}`, customer: `cus_test_2${planId}`, plan: planId })]);
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

describe('refunds and disputes of a subscription\'s payments', () => {
  /** A plan of 20 credits a month at $20, its Payment Link paid by a new account; the plan's allowance rolls over. */
  async function subscribed() {
    const customer = await createCustomer({ balance: 0 });
    const planId = `sub${crypto.randomUUID().slice(0, 8)}`;
    const price = `price_test_${planId}`;
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id, allowance_rolls_over) values ($1, 'Pro', 20000000, $2, $3, true)`,
      [planId, price, `plink_test_${planId}`],
    );
    const customerId = `cus_test_${planId}`;
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: `plink_test_${planId}`, amount: 2000, mode: 'subscription', customer: customerId });
    const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 20)}`;
    const paid = invoice({ customer: customerId, price, amount: 2000 });
    return { customer, customerId, price, session, paid, paymentIntent, link: invoicePayment({ invoice: paid.id, paymentIntent, amount: 2000 }) };
  }

  async function unmatchedRefundAlerts(paymentIntent: string) {
    const { rows } = await admin().query(`select 1 from public.alerts where kind = 'refund_unmatched' and details ->> 'payment_intent' = $1`, [paymentIntent]);
    return rows.length;
  }

  it('a refund of a monthly payment takes back its share, from that invoice\'s credits first', async () => {
    const { customer, session, paid, paymentIntent, link } = await subscribed();
    const pack = await createPack({ unitAmount: 1000, credits: 10_000_000, bonus: 0 });
    await deliver(stripeEvent('checkout.session.completed', checkoutSession({ clientReferenceId: customer.accountId, paymentLink: pack, amount: 1000 })));
    await deliver(stripeEvent('checkout.session.completed', session));
    expect(await (await deliver(stripeEvent('invoice.paid', paid))).json()).toMatchObject({ status: 'credited' });
    const linked = stripeEvent('invoice_payment.paid', link);
    expect(await (await deliver(linked)).json()).toMatchObject({ status: 'linked', account_id: customer.accountId });
    expect(await (await deliver(linked)).json()).toMatchObject({ status: 'duplicate' });
    expect(await balance(customer.accountId)).toBe(30_000_000);

    const refund = await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 2000, amountRefunded: 1000 })));
    expect(await refund.json()).toMatchObject({ status: 'refunded' });
    expect(await balance(customer.accountId)).toBe(20_000_000);
    expect((await ledgerRows(customer.accountId)).at(-1)).toEqual({ amount: -10_000_000, reason: 'refund' });
    // Taken from the invoice's grant; the pack bought before it is untouched.
    const { rows: grants } = await admin().query('select source, remaining::bigint from public.credit_grants where account_id = $1 and source <> $2 order by id', [customer.accountId, 'signup']);
    expect(grants.map((grant) => [grant.source, Number(grant.remaining)])).toEqual([['purchase', 10_000_000], ['subscription', 10_000_000]]);
    expect(await unmatchedRefundAlerts(paymentIntent)).toBe(0);
    const { rows: [payment] } = await admin().query('select status, invoice_id, credits::bigint, debited::bigint from public.stripe_payments where payment_intent_id = $1', [paymentIntent]);
    expect({ ...payment, credits: Number(payment.credits), debited: Number(payment.debited) }).toEqual({ status: 'credited', invoice_id: paid.id, credits: 20_000_000, debited: 10_000_000 });
  });

  it('out of order: a refund, then its invoice payment, then the invoice before the checkout: taken back once the invoice is credited', async () => {
    const { customer, session, paid, paymentIntent, link } = await subscribed();
    expect(await (await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 2000, amountRefunded: 500 })))).json()).toMatchObject({ status: 'recorded' });
    expect(await (await deliver(stripeEvent('invoice_payment.paid', link))).json()).toMatchObject({ status: 'pending' });
    expect(await (await deliver(stripeEvent('invoice.paid', paid))).json()).toMatchObject({ status: 'pending' });
    expect(await balance(customer.accountId)).toBe(0);
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'subscribed' });
    expect((await ledgerRows(customer.accountId)).slice(-2)).toEqual([{ amount: 20_000_000, reason: 'subscription' }, { amount: -5_000_000, reason: 'refund' }]);
    // A later, larger refund of the same payment takes back the difference only.
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 2000, amountRefunded: 2000 })));
    expect(await balance(customer.accountId)).toBe(0);
  });

  it('a chargeback of a monthly payment takes its credits back and flags the account; won, they come back', async () => {
    const { customer, session, paid, paymentIntent, link } = await subscribed();
    await deliver(stripeEvent('checkout.session.completed', session));
    await deliver(stripeEvent('invoice_payment.paid', link));
    await deliver(stripeEvent('invoice.paid', paid));
    expect(await balance(customer.accountId)).toBe(20_000_000);
    const disputeId = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    expect(await (await deliver(stripeEvent('charge.dispute.created', dispute({ paymentIntent, amount: 2000, id: disputeId })))).json()).toMatchObject({ status: 'disputed', account_id: customer.accountId });
    expect(await balance(customer.accountId)).toBe(0);
    const flagged = async () => (await admin().query('select flagged_reason from public.accounts where id = $1', [customer.accountId])).rows[0].flagged_reason;
    expect(await flagged()).toContain(paymentIntent);
    await deliver(stripeEvent('charge.dispute.closed', dispute({ paymentIntent, amount: 2000, id: disputeId, status: 'won' })));
    expect(await balance(customer.accountId)).toBe(20_000_000);
    expect(await flagged()).toBeNull();
  });

  it('a dispute that came before the invoice payment is applied when the payment is linked', async () => {
    const { customer, session, paid, paymentIntent, link } = await subscribed();
    await deliver(stripeEvent('checkout.session.completed', session));
    await deliver(stripeEvent('invoice.paid', paid));
    await deliver(stripeEvent('charge.dispute.created', dispute({ paymentIntent, amount: 2000 })));
    expect(await balance(customer.accountId)).toBe(20_000_000);
    expect(await (await deliver(stripeEvent('invoice_payment.paid', link))).json()).toMatchObject({ status: 'linked' });
    expect(await balance(customer.accountId)).toBe(0);
    expect((await ledgerRows(customer.accountId)).at(-1)).toEqual({ amount: -20_000_000, reason: 'dispute' });
    expect(await alerts(customer.accountId, 'payment_disputed')).toHaveLength(1);
  });

  it('a checkout\'s payment intent named by an invoice payment stays the checkout\'s', async () => {
    const customer = await createCustomer({ balance: 0 });
    const pack = await createPack({ unitAmount: 1000, credits: 10_000_000, bonus: 0 });
    const bought = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: pack, amount: 1000 });
    await deliver(stripeEvent('checkout.session.completed', bought));
    const oneOff = invoicePayment({ invoice: `in_test_${crypto.randomUUID().slice(0, 8)}`, paymentIntent: bought.payment_intent!, amount: 1000 });
    expect(await (await deliver(stripeEvent('invoice_payment.paid', oneOff))).json()).toMatchObject({ status: 'ignored' });
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent: bought.payment_intent!, amount: 1000, amountRefunded: 1000 })));
    expect(await balance(customer.accountId)).toBe(0);
    const { rows: [payment] } = await admin().query('select invoice_id, debited::bigint from public.stripe_payments where checkout_session_id = $1', [bought.id]);
    expect(payment).toEqual({ invoice_id: null, debited: '10000000' });
  });

  it('an invoice payment not paid, or paid other than by a payment intent, is recorded and links nothing', async () => {
    const invoiceId = `in_test_${crypto.randomUUID().slice(0, 8)}`;
    const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 20)}`;
    for (const object of [invoicePayment({ invoice: invoiceId, paymentIntent, amount: 2000, status: 'open' }), invoicePayment({ invoice: invoiceId, paymentIntent: null, amount: 2000 })]) {
      const event = stripeEvent('invoice_payment.paid', object);
      expect(await (await deliver(event)).json()).toMatchObject({ status: 'ignored' });
      const { rows } = await admin().query('select status from public.stripe_events where id = $1', [event.id]);
      expect(rows).toEqual([{ status: 'ignored' }]);
    }
    const { rows } = await admin().query('select 1 from public.stripe_payments where invoice_id = $1 or payment_intent_id = $2', [invoiceId, paymentIntent]);
    expect(rows).toHaveLength(0);
    const noInvoice = await deliver(stripeEvent('invoice_payment.paid', { ...invoicePayment({ invoice: invoiceId, paymentIntent, amount: 2000 }), invoice: null }));
    expect(noInvoice.status).toBe(400);
  });

  it('an invoice, its payment and a full refund delivered at the same moment take back exactly what was credited', async () => {
    for (let round = 0; round < 5; round++) {
      const { customer, session, paid, paymentIntent, link } = await subscribed();
      await deliver(stripeEvent('checkout.session.completed', session));
      const answers = await Promise.all([
        deliver(stripeEvent('invoice.paid', paid)),
        deliver(stripeEvent('invoice_payment.paid', link)),
        deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 2000, amountRefunded: 2000 }))),
      ]);
      expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200]);
      expect(await balance(customer.accountId)).toBe(0);
      expect((await ledgerRows(customer.accountId)).slice(-2)).toEqual([{ amount: 20_000_000, reason: 'subscription' }, { amount: -20_000_000, reason: 'refund' }]);
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

describe('Stripe as it really delivers', () => {
  async function payment(sessionId: string) {
    const { rows: [row] } = await admin().query(
      'select status, credits::int, quantity, amount_subtotal::int, amount_discount::int, amount_tax::int from public.stripe_payments where checkout_session_id = $1',
      [sessionId],
    );
    return row;
  }

  it('distinct events of one checkout delivered together all answer 2xx and credit once', async () => {
    for (let round = 0; round < 5; round++) {
      const customer = await createCustomer({ balance: 0 });
      const link = await createPack();
      const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 });
      const responses = await Promise.all([
        deliver(stripeEvent('checkout.session.completed', session)),
        deliver(stripeEvent('checkout.session.async_payment_succeeded', session)),
        deliver(stripeEvent('checkout.session.completed', session)),
        deliver(stripeEvent('charge.refunded', charge({ paymentIntent: session.payment_intent!, amount: 5000, amountRefunded: 0 }))),
      ]);
      expect(responses.map((response) => response.status)).toEqual([200, 200, 200, 200]);
      expect(await balance(customer.accountId)).toBe(55_000_000);
    }
  });

  it.each([
    ['null', 'null'],
    ['an array', '[]'],
    ['an empty object', '{}'],
    ['an event without data', '{"id":"evt_test_nodata","object":"event","type":"checkout.session.completed"}'],
    ['an event whose data.object is null', '{"id":"evt_test_nullobject","object":"event","type":"charge.refunded","data":{"object":null}}'],
    ['an event with a made-up id', '{"id":"nope","object":"event","type":"charge.refunded","data":{"object":{}}}'],
  ])('a correctly signed body that is not an event (%s) is a 400 and writes nothing', async (_name, body) => {
    const { rows: [before] } = await admin().query('select (select count(*) from public.stripe_events)::int as events, (select count(*) from public.stripe_payments)::int as payments');
    const response = await deliver({}, { body });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: 'invalid_event' } });
    const { rows: [after] } = await admin().query('select (select count(*) from public.stripe_events)::int as events, (select count(*) from public.stripe_payments)::int as payments');
    expect(after).toEqual(before);
  });

  it('Stripe Tax on top of the pack\'s price: credited, the tax recorded', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5450, subtotal: 5000, tax: 450 });
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'credited' });
    expect(await balance(customer.accountId)).toBe(55_000_000);
    expect(await payment(session.id)).toEqual({ status: 'credited', credits: 55_000_000, quantity: 1, amount_subtotal: 5000, amount_discount: 0, amount_tax: 450 });
  });

  it('a promotion code: credited in full, the discount recorded; a full refund takes all of it back', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 4000, subtotal: 5000, discount: 1000 });
    expect(await (await deliver(stripeEvent('checkout.session.completed', session))).json()).toMatchObject({ status: 'credited' });
    expect(await payment(session.id)).toMatchObject({ credits: 55_000_000, quantity: 1, amount_discount: 1000 });
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent: session.payment_intent!, amount: 4000, amountRefunded: 4000 })));
    expect(await balance(customer.accountId)).toBe(0);
  });

  it('an adjustable quantity: 3 packs are 3 times the credits; a subtotal that is no whole number of packs is unmatched', async () => {
    const customer = await createCustomer({ balance: 0 });
    const link = await createPack();
    const three = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 15_000 });
    expect(await (await deliver(stripeEvent('checkout.session.completed', three))).json()).toMatchObject({ status: 'credited' });
    expect(await payment(three.id)).toMatchObject({ credits: 165_000_000, quantity: 3 });
    expect(await balance(customer.accountId)).toBe(165_000_000);
    const odd = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 7500 });
    expect(await (await deliver(stripeEvent('checkout.session.completed', odd))).json()).toMatchObject({ status: 'unmatched' });
    expect(await balance(customer.accountId)).toBe(165_000_000);
  });

  it('a dispute won gives the credits back as bought (50 paid, the 5-credit bonus as bonus) and clears the flag; a dispute lost keeps them taken back', async () => {
    for (const outcome of ['won', 'lost'] as const) {
      const customer = await createCustomer({ balance: 0 });
      const link = await createPack();
      const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 });
      await deliver(stripeEvent('checkout.session.completed', session));
      const disputeId = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
      await deliver(stripeEvent('charge.dispute.created', dispute({ paymentIntent: session.payment_intent!, amount: 5000, id: disputeId })));
      expect(await balance(customer.accountId)).toBe(0);
      const closed = await deliver(stripeEvent('charge.dispute.closed', dispute({ paymentIntent: session.payment_intent!, amount: 5000, id: disputeId, status: outcome })));
      expect(await closed.json()).toMatchObject({ status: `dispute_${outcome}` });
      const { rows: [account] } = await admin().query('select balance::int, flagged_reason from public.accounts where id = $1', [customer.accountId]);
      if (outcome === 'lost') {
        expect(account).toMatchObject({ balance: 0, flagged_reason: expect.stringContaining('disputed') });
        continue;
      }
      expect(account).toEqual({ balance: 55_000_000, flagged_reason: null });
      const { rows } = await admin().query(
        `select category, remaining::int, reference from public.credit_grants where account_id = $1 and source = 'dispute_won' order by id`,
        [customer.accountId],
      );
      expect(rows).toEqual([
        { category: 'paid', remaining: 50_000_000, reference: session.id },
        { category: 'promotional', remaining: 5_000_000, reference: session.id },
      ]);
      expect((await ledgerRows(customer.accountId)).slice(-3)).toEqual([
        { amount: -55_000_000, reason: 'dispute' },
        { amount: 50_000_000, reason: 'dispute_won' },
        { amount: 5_000_000, reason: 'dispute_won' },
      ]);
    }
  });

  /** An account subscribed to Pro (20 credits a month) through its Payment Link; Team (50) is the plan it may move to. */
  async function onPro() {
    const customer = await createCustomer({ balance: 0 });
    const suffix = crypto.randomUUID().slice(0, 8);
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values
         ($1, 'Pro', 20000000, $2, $3), ($4, 'Team', 50000000, $5, null)`,
      [`pro${suffix}`, `price_test_pro${suffix}`, `plink_test_pro${suffix}`, `team${suffix}`, `price_test_team${suffix}`],
    );
    const customerId = `cus_test_plan${suffix}`;
    await deliver(stripeEvent('checkout.session.completed', checkoutSession({
      clientReferenceId: customer.accountId, paymentLink: `plink_test_pro${suffix}`, amount: 2000, mode: 'subscription', customer: customerId,
    })));
    const planOf = async () => (await admin().query('select plan from public.accounts where id = $1', [customer.accountId])).rows[0].plan;
    return { customer, suffix, customerId, planOf };
  }

  it('the plan follows the subscription: another price moves it, a scheduled cancellation waits, the end brings back the free plan', async () => {
    const { suffix, customerId, planOf } = await onPro();
    expect(await planOf()).toBe(`pro${suffix}`);
    const upgraded = await deliver(stripeEvent('customer.subscription.updated', subscription({ customer: customerId, price: `price_test_team${suffix}` })));
    expect(await upgraded.json()).toMatchObject({ status: 'plan_changed' });
    expect(await planOf()).toBe(`team${suffix}`);
    await deliver(stripeEvent('customer.subscription.updated', subscription({ customer: customerId, price: `price_test_team${suffix}`, cancelAtPeriodEnd: true })));
    expect(await planOf()).toBe(`team${suffix}`);
    const ended = await deliver(stripeEvent('customer.subscription.deleted', subscription({ customer: customerId, price: `price_test_team${suffix}`, status: 'canceled' })));
    expect(await ended.json()).toMatchObject({ status: 'plan_ended' });
    expect(await planOf()).toBe('free');
  });

  it('after a change of plan, the renewal credits the new plan, not the one its prorations name; prorations alone credit nothing', async () => {
    const { customer, suffix, customerId, planOf } = await onPro();
    await deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price: `price_test_pro${suffix}`, amount: 2000 })));
    await deliver(stripeEvent('customer.subscription.updated', subscription({ customer: customerId, price: `price_test_team${suffix}` })));
    expect(await planOf()).toBe(`team${suffix}`);

    // Half a month left: the unused Pro time given back, the Team time charged, then Team's next month.
    const prorations = [{ price: `price_test_pro${suffix}`, amount: -1000 }, { price: `price_test_team${suffix}`, amount: 2500 }];
    const onlyProrations = await deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price: null, amount: 1500, prorations })));
    expect(await onlyProrations.json()).toMatchObject({ status: 'not_credited' });
    expect(await balance(customer.accountId)).toBe(20_000_000);
    expect((await alerts(customer.accountId, 'invoice_not_credited')).map((alert) => alert.message)).toEqual([expect.stringContaining('prorations only')]);

    const renewal = await deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price: `price_test_team${suffix}`, amount: 6500, prorations })));
    expect(await renewal.json()).toMatchObject({ status: 'credited' });
    expect(await balance(customer.accountId)).toBe(70_000_000);
    expect(await planOf()).toBe(`team${suffix}`);
  });

  it('a $0 invoice and an invoice of the older shape are credited only under the operator\'s setting, and alerted otherwise', async () => {
    const customer = await createCustomer({ balance: 0 });
    const suffix = crypto.randomUUID().slice(0, 8);
    const price = `price_test_trial${suffix}`;
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Trial', 3000000, $2, $3)`,
      [`trial${suffix}`, price, `plink_test_trial${suffix}`],
    );
    const customerId = `cus_test_trial${suffix}`;
    await deliver(stripeEvent('checkout.session.completed', checkoutSession({
      clientReferenceId: customer.accountId, paymentLink: `plink_test_trial${suffix}`, amount: 0, mode: 'subscription', customer: customerId,
    })));

    const trial = await deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price, amount: 0 })));
    expect(await trial.json()).toMatchObject({ status: 'not_credited' });
    const legacy = await deliver(stripeEvent('invoice.paid', legacyInvoice({ customer: customerId, price, amount: 2000 })));
    expect(await legacy.json()).toMatchObject({ status: 'not_credited' });
    expect(await balance(customer.accountId)).toBe(0);
    const messages = (await alerts(customer.accountId, 'invoice_not_credited')).map((alert) => alert.message as string);
    expect(messages).toHaveLength(2);
    expect(messages.some((message) => message.includes('a $0 invoice'))).toBe(true);
    expect(messages.some((message) => message.includes('before 2025'))).toBe(true);

    await admin().query('update public.billing_settings set credit_zero_amount_invoices = true, accept_legacy_invoice_shape = true');
    try {
      expect(await (await deliver(stripeEvent('invoice.paid', invoice({ customer: customerId, price, amount: 0 })))).json()).toMatchObject({ status: 'credited' });
      expect(await (await deliver(stripeEvent('invoice.paid', legacyInvoice({ customer: customerId, price, amount: 2000 })))).json()).toMatchObject({ status: 'credited' });
      expect(await balance(customer.accountId)).toBe(6_000_000);
    } finally {
      await admin().query('update public.billing_settings set credit_zero_amount_invoices = false, accept_legacy_invoice_shape = false');
    }
  });
});

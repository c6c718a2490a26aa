import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import { beforeAll, describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';
import { charge, checkoutSession, dispute, invoice, invoicePayment, stripeEvent } from '../support/stripe-events.ts';
import { booksBalanced } from '../support/books.ts';
import { admin, createCustomer, createModel, ledger, serviceClient, stack, type Customer } from '../support/supabase.ts';

// Every credit is a grant; spending draws promotional before paid, then higher
// priority, then earliest expiry, then oldest; the job writes expiry off as a
// ledger row; a refund takes back from the grants of its payment first. The
// invariant (balance = Σ ledger, Σ remaining of live grants = the balance or 0)
// is checked after every test by the suite's setup.

const day = 86_400_000;

/** Posts a credit with the terms given, in one transaction, as the operator's tools would. */
async function grant(customer: Customer, amount: number, terms: Record<string, unknown>) {
  const client = await admin().connect();
  try {
    await client.query('begin');
    await client.query('select private.set_next_grant_terms($1)', [JSON.stringify(terms)]);
    await client.query(`select public.grant_credits($1, $2, 'grant', null, 'test grant')`, [customer.accountId, amount]);
    await client.query('commit');
  } catch (error) {
    await client.query('rollback');
    throw error;
  } finally {
    client.release();
  }
}

/** The customer's grants but the signup credits (which createCustomer's adjustment to its balance used up). */
async function grants(customer: Customer) {
  const { rows } = await admin().query(
    `select source, category, amount::int, remaining::int, expires_at, expired_at is not null as expired
       from public.credit_grants where account_id = $1 and source <> 'signup' order by id`,
    [customer.accountId],
  );
  return rows;
}

async function spend(customer: Customer, amount: number) {
  await ledger.grantCredits({ accountId: customer.accountId, amount: -amount, reason: 'adjustment', note: 'spend' });
}

describe('the order grants are spent in', () => {
  it('promotional before paid, then the earliest expiry, and a request\'s charge draws the same way', async () => {
    const customer = await createCustomer({ balance: 0 });
    const soon = new Date(Date.now() + 5 * day).toISOString();
    const later = new Date(Date.now() + 10 * day).toISOString();
    const paidSoon = new Date(Date.now() + 2 * day).toISOString();
    await grant(customer, 1_000, { category: 'paid', source: 'manual' });
    await grant(customer, 500, { category: 'promotional', source: 'promotion', expires_at: later });
    await grant(customer, 300, { category: 'promotional', source: 'promotion', expires_at: soon });
    await grant(customer, 200, { category: 'paid', source: 'manual', expires_at: paidSoon });

    await spend(customer, 600);
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([1_000, 200, 0, 200]);

    // A request's charge (settle_request's usage row) draws in the same order: promotional, then the paid grant that expires.
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 300 });
    await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 100, output: 300 }, usageSource: 'provider' });
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([1_000, 0, 0, 0]);
  });

  it('higher priority first within a category; below zero, credits pay the debt first', async () => {
    const customer = await createCustomer({ balance: 0 });
    await admin().query('update public.accounts set credit_limit = 1000 where id = $1', [customer.accountId]);
    await grant(customer, 100, { category: 'paid', priority: 0 });
    await grant(customer, 100, { category: 'paid', priority: 5 });
    await spend(customer, 50);
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([100, 50]);
    await spend(customer, 400); // 150 covered by grants, 250 of debt
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([0, 0]);
    await grant(customer, 300, { category: 'paid' });
    // The debt of 250 is paid first: 50 of the new grant is left, as is the balance.
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([0, 0, 50]);
    const { rows: [account] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
    expect(account.balance).toBe(50);
  });

  it('a draw changes no column an index of credit_grants names, so it can be a HOT update; used_up follows what is left', async () => {
    // PostgreSQL makes an update HOT only when no indexed column (key or predicate) changes.
    const { rows: indexes } = await admin().query<{ definition: string }>(
      `select pg_get_indexdef(indexrelid) as definition from pg_index where indrelid = 'public.credit_grants'::regclass`,
    );
    expect(indexes.length).toBeGreaterThan(0);
    expect(indexes.filter((index) => /\bremaining\b/.test(index.definition))).toEqual([]);
    const customer = await createCustomer({ balance: 0 });
    await grant(customer, 100, { category: 'paid' });
    const newest = async () =>
      (await admin().query('select remaining::int, used_up from public.credit_grants where account_id = $1 order by id desc limit 1', [customer.accountId])).rows[0];
    await spend(customer, 60);
    expect(await newest()).toEqual({ remaining: 40, used_up: false });
    await spend(customer, 40);
    expect(await newest()).toEqual({ remaining: 0, used_up: true });
  });
});

describe('expiry', () => {
  it('is a ledger row written by the job at the time given, once', async () => {
    const customer = await createCustomer({ balance: 0 });
    const expiresAt = new Date(Date.now() + 3 * day);
    await grant(customer, 700, { category: 'promotional', expires_at: expiresAt.toISOString() });
    await grant(customer, 400, { category: 'paid' });
    await spend(customer, 200);
    const expire = (at: Date) => serviceClient().rpc('expire_grants', { p_now: at.toISOString() });

    // The job runs for every account: only this customer's grants are looked at.
    await expire(new Date(expiresAt.getTime() - 1000));
    expect((await grants(customer)).map((row) => [row.remaining, row.expired])).toEqual([[500, false], [400, false]]);
    await expire(new Date(expiresAt.getTime() + 1000));
    expect(await grants(customer)).toMatchObject([
      { category: 'promotional', remaining: 0, expired: true },
      { category: 'paid', remaining: 400, expired: false },
    ]);
    const { rows: ledgerRows } = await admin().query(`select amount::int, reason from public.credit_ledger where account_id = $1 and reason = 'expiry'`, [customer.accountId]);
    expect(ledgerRows).toEqual([{ amount: -500, reason: 'expiry' }]);
    await expire(new Date(expiresAt.getTime() + 60_000));
    const { rows: [account] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
    expect(account.balance).toBe(400);
  });
});

describe('expiry waits for requests in flight', () => {
  it('what holds do not cover is written off at once; the held part once they settle, never past the balance', async () => {
    const customer = await createCustomer({ balance: 0 });
    const expiresAt = new Date(Date.now() + 3 * day);
    await grant(customer, 500, { category: 'promotional', expires_at: expiresAt.toISOString() });
    const model = await createModel({ input: 1_000_000, output: 1_000_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 200, maxOutputTokens: 200 });
    const expire = () => serviceClient().rpc('expire_grants', { p_now: new Date(expiresAt.getTime() + 1000).toISOString() });
    expect((await expire()).error).toBeNull();
    // 400 are held by the request in flight: only they wait.
    expect((await grants(customer)).map((row) => [row.remaining, row.expired])).toEqual([[400, false]]);
    await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 100, output: 50 }, usageSource: 'provider' });
    expect((await expire()).error).toBeNull();
    expect((await grants(customer)).map((row) => [row.remaining, row.expired])).toEqual([[0, true]]);
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: 0, held: 0 });
  });
});

describe('expiry and a key always at work', () => {
  const model = () => createModel({ input: 1_000_000, output: 1_000_000 });
  const expireAt = (at: Date) => serviceClient().rpc('expire_grants', { p_now: at.toISOString() });

  it('a small hold in flight at every run keeps only itself, not the whole expired grant, spendable', async () => {
    const customer = await createCustomer({ balance: 0 });
    const expiresAt = new Date(Date.now() + 3 * day);
    await grant(customer, 1_000_000, { category: 'promotional', expires_at: expiresAt.toISOString() });
    const bench = await model();
    // Each minute the job runs while one 10-unit request is in flight; the one before settles meanwhile.
    let inFlight = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId: inFlight, keyHash: customer.keyHash, model: bench, maxInputTokens: 5, maxOutputTokens: 5 });
    let servedAfterExpiry = 0;
    for (let minute = 1; minute <= 4; minute++) {
      expect((await expireAt(new Date(expiresAt.getTime() + minute * 60_000))).error).toBeNull();
      const next = crypto.randomUUID();
      const authorized = await ledger.authorizeRequest({ requestId: next, keyHash: customer.keyHash, model: bench, maxInputTokens: 5, maxOutputTokens: 5 });
      await ledger.settleRequest({ requestId: inFlight, outcome: 'completed', usage: { input: 5, output: 5 }, usageSource: 'provider' });
      if (authorized.status !== 'authorized') break;
      servedAfterExpiry += 1;
      inFlight = next;
    }
    if (servedAfterExpiry > 0) await ledger.settleRequest({ requestId: inFlight, outcome: 'completed', usage: { input: 5, output: 5 }, usageSource: 'provider' });
    // The first run wrote off all but the 10 held: no request was authorized on it afterwards.
    expect(servedAfterExpiry).toBe(0);
    await expireAt(new Date(expiresAt.getTime() + 10 * 60_000));
    expect((await grants(customer)).map((row) => [row.remaining, row.expired])).toEqual([[0, true]]);
    const { rows: written } = await admin().query(`select amount::int from public.credit_ledger where account_id = $1 and reason = 'expiry' order by id`, [customer.accountId]);
    expect(written.map((row) => row.amount)).toEqual([-999_990]);
  });

  it('with a credit limit as without: a request authorized against expiring credits is paid from them, not in debt', async () => {
    const bench = await model();
    const outcome = async (creditLimit: number) => {
      const customer = await createCustomer({ balance: 0 });
      await admin().query('update public.accounts set credit_limit = $2 where id = $1', [customer.accountId, creditLimit]);
      const expiresAt = new Date(Date.now() + 3 * day);
      await grant(customer, 1_000, { category: 'promotional', expires_at: expiresAt.toISOString() });
      const requestId = crypto.randomUUID();
      expect((await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model: bench, maxInputTokens: 500, maxOutputTokens: 500 })).status).toBe('authorized');
      await expireAt(new Date(expiresAt.getTime() + 1000));
      await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 500, output: 500 }, usageSource: 'provider' });
      await expireAt(new Date(expiresAt.getTime() + 61_000));
      const { rows: [account] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
      return account.balance as number;
    };
    expect(await outcome(0)).toBe(0);
    expect(await outcome(1_000_000)).toBe(0);
  });
});

describe('refunds take back from the grant they came from', () => {
  it('a pack with a bonus: its credits paid, its bonus promotional; a refund empties that payment\'s grants first', async () => {
    const customer = await createCustomer({ balance: 0 });
    await grant(customer, 3_000_000, { category: 'paid', source: 'manual' });
    const link = `plink_test_${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits, bonus_credits) values ('Builder', $1, 5000, 50000000, 5000000)`, [link]);
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 });
    const service = serviceClient();
    const checkout = stripeEvent('checkout.session.completed', session);
    expect((await service.rpc('apply_stripe_checkout', { p_event_id: checkout.id, p_event_type: checkout.type, p_session: session })).error).toBeNull();
    expect(await grants(customer)).toMatchObject([
      { source: 'manual', category: 'paid', amount: 3_000_000 },
      { source: 'purchase', category: 'paid', amount: 50_000_000 },
      { source: 'bonus', category: 'promotional', amount: 5_000_000 },
    ]);
    await spend(customer, 1_000_000); // from the bonus, promotional
    const refund = charge({ paymentIntent: session.payment_intent!, amount: 5000, amountRefunded: 5000 });
    const refunded = stripeEvent('charge.refunded', refund);
    expect((await service.rpc('apply_stripe_refund', { p_event_id: refunded.id, p_charge: refund })).error).toBeNull();
    // 55M taken back from the payment's own grants (4M of bonus, 50M paid) and 1M more from the others.
    expect((await grants(customer)).map((row) => row.remaining)).toEqual([2_000_000, 0, 0]);
  });
});

/** A new account subscribed, through a Payment Link, to a plan of 20 credits a month at $20 (its invoices not paid yet). */
async function subscribed(rollsOver: boolean) {
  const customer = await createCustomer({ balance: 0 });
  const planId = `terms${crypto.randomUUID().slice(0, 8)}`;
  const [price, link, customerId] = [`price_test_${planId}`, `plink_test_${planId}`, `cus_test_${planId}`];
  await admin().query(
    `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id, allowance_rolls_over) values ($1, 'Plan', 20000000, $2, $3, $4)`,
    [planId, price, link, rollsOver],
  );
  const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 2000, mode: 'subscription', customer: customerId });
  const checkout = stripeEvent('checkout.session.completed', session);
  expect((await serviceClient().rpc('apply_stripe_checkout', { p_event_id: checkout.id, p_event_type: checkout.type, p_session: session })).error).toBeNull();
  return { customer, customerId, price };
}

async function rpc(name: string, args: Record<string, unknown>) {
  const { data, error } = await serviceClient().rpc(name, args);
  if (error) throw new Error(`${name}: ${error.message}`);
  return data;
}

const balanceOf = async (customer: Customer) => Number((await admin().query('select balance::bigint from public.accounts where id = $1', [customer.accountId])).rows[0].balance);

describe('refunds after a grant expired', () => {

  /** 30 credits bought apart; a 20-credit month paid by one payment intent per amount; 5 spent, 15 expired. */
  async function expiredMonth(payments: number[]) {
    const { customer, customerId, price } = await subscribed(false);
    await grant(customer, 30_000_000, { category: 'paid', source: 'manual' });
    const paid = invoice({ customer: customerId, price, amount: 2000 });
    const paidEvent = stripeEvent('invoice.paid', paid);
    await rpc('apply_stripe_invoice', { p_event_id: paidEvent.id, p_invoice: paid });
    const intents = [];
    for (const amount of payments) {
      const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
      const linked = stripeEvent('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent, amount }));
      expect(await rpc('apply_stripe_invoice_payment', { p_event_id: linked.id, p_invoice_payment: linked.data.object })).toMatchObject({ status: 'linked' });
      intents.push(paymentIntent);
    }
    await spend(customer, 5_000_000); // from the allowance, which expires first
    await rpc('expire_grants', { p_now: new Date(paid.lines.data[0]!.period.end * 1000 + 1000).toISOString() });
    expect((await grants(customer)).map((row) => [row.source, row.remaining, row.expired])).toEqual([['manual', 30_000_000, false], ['subscription', 0, true]]);
    return { customer, intents };
  }

  it('a month paid by two payments, both refunded: what was spent is taken back once, as for one payment', async () => {
    const { customer, intents } = await expiredMonth([1000, 1000]);
    for (const paymentIntent of intents) {
      const refund = charge({ paymentIntent, amount: 1000, amountRefunded: 1000 });
      const refunded = stripeEvent('charge.refunded', refund);
      await rpc('apply_stripe_refund', { p_event_id: refunded.id, p_charge: refund });
    }
    expect(await balanceOf(customer)).toBe(25_000_000);
  });

  it('a dispute won after a partial refund gives back what the dispute took', async () => {
    const { customer, intents: [paymentIntent] } = await expiredMonth([2000]);
    const refund = charge({ paymentIntent: paymentIntent!, amount: 2000, amountRefunded: 1000 });
    const refunded = stripeEvent('charge.refunded', refund);
    await rpc('apply_stripe_refund', { p_event_id: refunded.id, p_charge: refund });
    const afterRefund = await balanceOf(customer);
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    const opened = dispute({ paymentIntent: paymentIntent!, amount: 1000, id });
    const openedEvent = stripeEvent('charge.dispute.created', opened);
    await rpc('apply_stripe_dispute', { p_event_id: openedEvent.id, p_dispute: opened });
    expect(await balanceOf(customer)).toBeLessThan(afterRefund);
    const won = dispute({ paymentIntent: paymentIntent!, amount: 1000, id, status: 'won' });
    const wonEvent = stripeEvent('charge.dispute.closed', won);
    await rpc('apply_stripe_dispute_closed', { p_event_id: wonEvent.id, p_dispute: won });
    expect(await balanceOf(customer)).toBe(afterRefund);
  });

  it('a refunded month whose allowance expired takes back only what was spent of it, not the expired part again', async () => {
    const { customer, intents: [paymentIntent] } = await expiredMonth([2000]);
    const refund = charge({ paymentIntent: paymentIntent!, amount: 2000, amountRefunded: 2000 });
    const refunded = stripeEvent('charge.refunded', refund);
    await rpc('apply_stripe_refund', { p_event_id: refunded.id, p_charge: refund });
    expect(await balanceOf(customer)).toBe(25_000_000);
  });
});

describe('a dispute won gives back what the dispute took, each part on the terms of the grant it came from', () => {
  const terms = async (customer: Customer) =>
    (await admin().query(
      `select source, category, remaining::int, expires_at, reference from public.credit_grants where account_id = $1 and source <> 'signup' order by id`,
      [customer.accountId],
    )).rows;


  /** A pack of 50 credits and a 5-credit bonus at $50, bought: its payment intent and checkout session. */
  async function boughtWithBonus(customer: Customer) {
    const link = `plink_test_${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits, bonus_credits) values ('Builder', $1, 5000, 50000000, 5000000)`, [link]);
    const session = checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 5000 });
    const checkout = stripeEvent('checkout.session.completed', session);
    expect(await rpc('apply_stripe_checkout', { p_event_id: checkout.id, p_event_type: checkout.type, p_session: session })).toMatchObject({ status: 'credited' });
    return { paymentIntent: session.payment_intent!, session: session.id };
  }

  async function refunded(paymentIntent: string, amount: number, amountRefunded: number) {
    const refund = charge({ paymentIntent, amount, amountRefunded });
    const event = stripeEvent('charge.refunded', refund);
    await rpc('apply_stripe_refund', { p_event_id: event.id, p_charge: refund });
  }

  async function disputed(paymentIntent: string, amount: number, id: string, status = 'needs_response') {
    const object = dispute({ paymentIntent, amount, id, status });
    const event = stripeEvent(status === 'needs_response' ? 'charge.dispute.created' : 'charge.dispute.closed', object);
    await rpc(status === 'needs_response' ? 'apply_stripe_dispute' : 'apply_stripe_dispute_closed', { p_event_id: event.id, p_dispute: object });
  }

  it('a pack with a bonus: the bonus comes back as bonus, with its end; the paid credits as paid; what came from other credits on their terms', async () => {
    const customer = await createCustomer({ balance: 0 });
    await grant(customer, 3_000_000, { category: 'paid', source: 'manual' });
    const { paymentIntent, session } = await boughtWithBonus(customer);
    // The bonus given an end, to see that its terms come back with it.
    const bonusEnds = new Date(Date.now() + 10 * day);
    await admin().query(`update public.credit_grants set expires_at = $2 where reference = $1 and source = 'bonus'`, [session, bonusEnds]);
    await spend(customer, 1_000_000); // from the bonus, promotional
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    await disputed(paymentIntent, 5000, id);
    // 55M taken back: 4M of bonus, 50M paid, and 1M of the credits bought apart.
    expect(await balanceOf(customer)).toBe(2_000_000);
    await booksBalanced(customer);

    await disputed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(57_000_000);
    expect(await terms(customer)).toEqual([
      { source: 'manual', category: 'paid', remaining: 2_000_000, expires_at: null, reference: null },
      { source: 'purchase', category: 'paid', remaining: 0, expires_at: null, reference: session },
      { source: 'bonus', category: 'promotional', remaining: 0, expires_at: bonusEnds, reference: session },
      // Credits without a reference of their own name the dispute's ledger row, as before.
      { source: 'dispute_won', category: 'paid', remaining: 1_000_000, expires_at: null, reference: `dispute_won:${id}` },
      { source: 'dispute_won', category: 'paid', remaining: 50_000_000, expires_at: null, reference: session },
      { source: 'dispute_won', category: 'promotional', remaining: 4_000_000, expires_at: bonusEnds, reference: session },
    ]);
    await booksBalanced(customer);

    // The bonus is spent first again, and a refund takes back from the payment's own credits first.
    await spend(customer, 1_000_000);
    await refunded(paymentIntent, 5000, 5000);
    expect((await terms(customer)).map((row) => row.remaining)).toEqual([0, 0, 0, 1_000_000, 0, 0]);
    expect(await balanceOf(customer)).toBe(1_000_000);
    await booksBalanced(customer);
  });

  it.each([
    ['a refund of $2, then a dispute of the other $48', [['refund', 200], ['dispute', 4800]]],
    ['a dispute of all $50, then a refund of $2', [['dispute', 5000], ['refund', 200]]],
  ] as const)('a partial refund and a dispute (%s), won: what the refund took stays taken back, the rest comes back as it was', async (_name, steps) => {
    const customer = await createCustomer({ balance: 0 });
    const { paymentIntent, session } = await boughtWithBonus(customer);
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    for (const [kind, amount] of steps) {
      if (kind === 'refund') await refunded(paymentIntent, 5000, amount);
      else await disputed(paymentIntent, amount, id);
      await booksBalanced(customer);
    }
    expect(await balanceOf(customer)).toBe(0);
    await disputed(paymentIntent, steps.find(([kind]) => kind === 'dispute')![1], id, 'won');
    // The refund's 4% (2.2M) is taken back from the bonus, as a refund alone takes it.
    expect(await balanceOf(customer)).toBe(52_800_000);
    expect(await terms(customer)).toEqual([
      { source: 'purchase', category: 'paid', remaining: 0, expires_at: null, reference: session },
      { source: 'bonus', category: 'promotional', remaining: 0, expires_at: null, reference: session },
      { source: 'dispute_won', category: 'paid', remaining: 50_000_000, expires_at: null, reference: session },
      { source: 'dispute_won', category: 'promotional', remaining: 2_800_000, expires_at: null, reference: session },
    ]);
    await booksBalanced(customer);
  });

  it('below zero (a credit limit): what the dispute took past the credits comes back first, paying that debt', async () => {
    const customer = await createCustomer({ balance: 0 });
    await admin().query('update public.accounts set credit_limit = 10000000 where id = $1', [customer.accountId]);
    const { paymentIntent, session } = await boughtWithBonus(customer);
    await spend(customer, 2_000_000); // from the bonus
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    await disputed(paymentIntent, 5000, id);
    // 3M of bonus, 50M paid, and 2M below zero.
    expect(await balanceOf(customer)).toBe(-2_000_000);
    await booksBalanced(customer);
    await disputed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(53_000_000);
    // The part taken below zero comes back on the payment's own paid terms, and pays the debt.
    expect((await terms(customer)).map((row) => [row.source, row.category, row.remaining, row.reference])).toEqual([
      ['purchase', 'paid', 0, session],
      ['bonus', 'promotional', 0, session],
      ['dispute_won', 'paid', 0, session],
      ['dispute_won', 'paid', 50_000_000, session],
      ['dispute_won', 'promotional', 3_000_000, session],
    ]);
    await booksBalanced(customer);
  });

  it('a month\'s allowance partly spent: what came from other credits does not end with the month; expired and refunded, it ends as if never disputed', async () => {
    const { customer, customerId, price } = await subscribed(false);
    await grant(customer, 30_000_000, { category: 'paid', source: 'manual' });
    const paid = invoice({ customer: customerId, price, amount: 2000 });
    const paidEvent = stripeEvent('invoice.paid', paid);
    await rpc('apply_stripe_invoice', { p_event_id: paidEvent.id, p_invoice: paid });
    const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
    const linked = stripeEvent('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent, amount: 2000 }));
    await rpc('apply_stripe_invoice_payment', { p_event_id: linked.id, p_invoice_payment: linked.data.object });
    await spend(customer, 5_000_000); // from the allowance, which ends first
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    await disputed(paymentIntent, 2000, id);
    await booksBalanced(customer);
    await disputed(paymentIntent, 2000, id, 'won');
    const periodEnd = new Date(paid.lines.data[0]!.period.end * 1000);
    expect((await terms(customer)).map((row) => [row.source, row.remaining, row.expires_at, row.reference])).toEqual([
      ['manual', 25_000_000, null, null],
      ['subscription', 0, periodEnd, paid.id],
      ['dispute_won', 5_000_000, null, `dispute_won:${id}`],
      ['dispute_won', 15_000_000, periodEnd, paid.id],
    ]);
    await booksBalanced(customer);
    await rpc('expire_grants', { p_now: new Date(periodEnd.getTime() + 1000).toISOString() });
    expect(await balanceOf(customer)).toBe(30_000_000);
    await refunded(paymentIntent, 2000, 2000);
    // As a month never disputed: 30M bought apart, less the 5M spent of the allowance.
    expect(await balanceOf(customer)).toBe(25_000_000);
    await booksBalanced(customer);
  });
});

describe('subscription allowances', () => {
  it('expire at the end of the period paid for, unless the plan rolls them over', async () => {
    const service = serviceClient();
    for (const rollsOver of [false, true]) {
      const { customer, customerId, price } = await subscribed(rollsOver);
      const paid = invoice({ customer: customerId, price, amount: 2000 });
      const event = stripeEvent('invoice.paid', paid);
      const applied = await service.rpc('apply_stripe_invoice', { p_event_id: event.id, p_invoice: paid });
      expect(applied.error).toBeNull();
      const periodEnd = new Date(paid.lines.data[0]!.period.end * 1000);
      expect(await grants(customer)).toMatchObject([{ source: 'subscription', category: 'paid', amount: 20_000_000, expires_at: rollsOver ? null : periodEnd }]);
    }
  });

  it('end with the period the plan\'s line paid for, not with a proration line listed before it, which ends now', async () => {
    const { customer, customerId, price } = await subscribed(false);
    const renewal = invoice({ customer: customerId, price, amount: 2600, prorations: [{ price: `price_test_left${crypto.randomUUID().slice(0, 8)}`, amount: 600 }] });
    const event = stripeEvent('invoice.paid', renewal);
    expect((await serviceClient().rpc('apply_stripe_invoice', { p_event_id: event.id, p_invoice: renewal })).error).toBeNull();
    const [allowance] = await grants(customer);
    expect(allowance).toMatchObject({ source: 'subscription', amount: 20_000_000, expires_at: new Date(renewal.lines.data[1]!.period.end * 1000) });
    await serviceClient().rpc('expire_grants', { p_now: new Date(Date.now() + 120_000).toISOString() });
    expect((await grants(customer)).map((row) => [row.remaining, row.expired])).toEqual([[20_000_000, false]]);
  });

  it('given back for a dispute won, keep the end of the month they were paid for', async () => {
    const { customer, customerId, price } = await subscribed(false);
    const paid = invoice({ customer: customerId, price, amount: 2000 });
    const service = serviceClient();
    const call = async (name: string, args: Record<string, unknown>) => expect((await service.rpc(name, args)).error).toBeNull();
    const paidEvent = stripeEvent('invoice.paid', paid);
    await call('apply_stripe_invoice', { p_event_id: paidEvent.id, p_invoice: paid });
    const paymentIntent = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
    const linked = stripeEvent('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent, amount: 2000 }));
    await call('apply_stripe_invoice_payment', { p_event_id: linked.id, p_invoice_payment: linked.data.object });
    const id = `dp_test_${crypto.randomUUID().slice(0, 8)}`;
    for (const [type, status] of [['charge.dispute.created', 'needs_response'], ['charge.dispute.closed', 'won']] as const) {
      const object = dispute({ paymentIntent, amount: 2000, id, status });
      const event = stripeEvent(type, object);
      await call(type === 'charge.dispute.created' ? 'apply_stripe_dispute' : 'apply_stripe_dispute_closed', { p_event_id: event.id, p_dispute: object });
    }
    const periodEnd = new Date(paid.lines.data[0]!.period.end * 1000);
    expect((await grants(customer)).map((row) => [row.source, row.remaining, row.expires_at])).toEqual([
      ['subscription', 0, periodEnd],
      ['dispute_won', 20_000_000, periodEnd],
    ]);
  });

  it('follow the plan the invoice paid for, also when it comes before the subscription moves the account to it', async () => {
    const { customer, customerId } = await subscribed(true);
    const planId = `terms${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id, allowance_rolls_over) values ($1, 'Monthly', 20000000, $2, $3, false)`,
      [planId, `price_test_${planId}`, `plink_test_${planId}`],
    );
    const paid = invoice({ customer: customerId, price: `price_test_${planId}`, amount: 2000 });
    const event = stripeEvent('invoice.paid', paid);
    expect((await serviceClient().rpc('apply_stripe_invoice', { p_event_id: event.id, p_invoice: paid })).error).toBeNull();
    expect(await grants(customer)).toMatchObject([{ source: 'subscription', amount: 20_000_000, expires_at: new Date(paid.lines.data[0]!.period.end * 1000) }]);
  });
});

describe('redemption codes', () => {
  let operator: SupabaseClient;
  beforeAll(async () => {
    const email = `codes-operator-${crypto.randomUUID().slice(0, 8)}@example.test`;
    const id = await createAuthUser(stack.authAdminDatabaseUrl, email);
    const token = signUserJwt(id, stack.jwtSecret, { email, appMetadata: { role: 'admin' } });
    operator = createClient(stack.supabaseUrl, stack.anonKey, {
      auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
      realtime: { transport: WebSocket as never },
      accessToken: async () => token,
    });
  });

  it('100 customers redeem a 10-use code at once through the API: exactly 10 succeed, each a grant of the code\'s terms', { timeout: 60_000 }, async () => {
    const code = `LAUNCH-${crypto.randomUUID().slice(0, 6).toUpperCase()}`;
    const created = await operator.rpc('operator_create_code', { p_code: code.toLowerCase(), p_credits: 2_000_000, p_max_uses: 10, p_grant_lifetime: '30 days' });
    expect(created.error).toBeNull();
    const customers = await Promise.all(Array.from({ length: 100 }, () => createCustomer({ balance: 0 })));
    const results = await Promise.all(customers.map((customer) => customer.client.rpc('redeem_code', { p_code: code })));
    const succeeded = results.filter((result) => result.error === null);
    expect(succeeded).toHaveLength(10);
    expect(new Set(results.filter((result) => result.error).map((result) => result.error!.message))).toEqual(new Set(['this code has been used up']));
    const { rows: [state] } = await admin().query('select uses from public.redemption_codes where code = $1', [code]);
    expect(state.uses).toBe(10);
    const winners = customers.filter((_, index) => results[index]!.error === null);
    for (const winner of winners.slice(0, 3)) {
      expect(await grants(winner)).toMatchObject([{ source: 'code', category: 'promotional', amount: 2_000_000, remaining: 2_000_000 }]);
      const expires = (await grants(winner))[0]!.expires_at as Date;
      expect(Math.abs(expires.getTime() - (Date.now() + 30 * day))).toBeLessThan(120_000);
    }
    // Once per account.
    const again = await winners[0]!.client.rpc('redeem_code', { p_code: code });
    expect(again.error?.message).toBe('this code has been used up');
    const { rows: audit } = await admin().query(`select action, count(*)::int as n from public.audit_log where subject = $1 group by action order by action`, [code]);
    expect(audit).toEqual([{ action: 'create_code', n: 1 }, { action: 'redeem_code', n: 10 }]);
  });

  it('once per account, not after its time, not by a customer creating codes', async () => {
    const code = `ONCE-${crypto.randomUUID().slice(0, 6).toUpperCase()}`;
    expect((await operator.rpc('operator_create_code', { p_code: code, p_credits: 1_000, p_max_uses: 5, p_category: 'paid' })).error).toBeNull();
    const customer = await createCustomer({ balance: 0 });
    expect((await customer.client.rpc('redeem_code', { p_code: code })).error).toBeNull();
    expect((await customer.client.rpc('redeem_code', { p_code: code })).error?.message).toBe('this account has redeemed this code already');
    expect(await grants(customer)).toMatchObject([{ source: 'code', category: 'paid', amount: 1_000, expires_at: null }]);

    const expired = `GONE-${crypto.randomUUID().slice(0, 6).toUpperCase()}`;
    await operator.rpc('operator_create_code', { p_code: expired, p_credits: 1_000, p_max_uses: 5, p_redeemable_until: new Date(Date.now() - day).toISOString() });
    expect((await customer.client.rpc('redeem_code', { p_code: expired })).error?.message).toBe('this code has expired');
    expect((await customer.client.rpc('redeem_code', { p_code: 'NO-SUCH-CODE' })).error?.code).toBe('PT404');
    expect((await customer.client.rpc('operator_create_code', { p_code: 'MINE-1234', p_credits: 1_000_000_000, p_max_uses: 1 })).error?.code).toBe('42501');
    const bad = await operator.rpc('operator_create_code', { p_code: 'x', p_credits: 0, p_max_uses: 1 });
    expect(bad.error?.code).toBe('22023');
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { booksBalanced, stripeLedger } from '../support/books.ts';
import { charge, checkoutSession, dispute, signature, stripeEvent, webhookDeliverer } from '../support/stripe-events.ts';
import { admin, createCustomer, ledger, type Customer } from '../support/supabase.ts';

// Sequences of disputes of one payment, delivered through the webhook route as
// Stripe sends them. Each dispute has its own id: a payment may be disputed
// again after a dispute closed (an inquiry, then a chargeback; a dispute of
// another of its charges), a closed dispute's event may be delivered again
// under a new event id, and events may come in any order. What a dispute won
// gives back is what that dispute took, never what another dispute (lost for
// good, or still open) took.
//
// Every amount is for a $50 pack of 50 credits and a 5-credit bonus: 55M.

const secret = 'whsec_test_dispute_sequences';
const pack = 55_000_000;
let gateway: Gateway;
let link: string;

beforeAll(async () => {
  gateway = await startGateway({ STRIPE_WEBHOOK_SECRET: secret, STRIPE_SECRET_KEY: 'sk_test_tollgate' });
  link = `plink_test_${crypto.randomUUID().replaceAll('-', '')}`;
  await admin().query(
    `insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits, bonus_credits) values ('Builder', $1, 5000, 50000000, 5000000)`,
    [link],
  );
});

afterAll(async () => {
  await gateway.close();
});

/** Delivers a signed event through the webhook route; every one of these must be answered 2xx. */
const deliver = webhookDeliverer(() => gateway.url, secret);

/** A new account that bought the pack: its payment intent. */
async function bought(customer?: Customer) {
  const buyer = customer ?? (await createCustomer({ balance: 0 }));
  const session = checkoutSession({ clientReferenceId: buyer.accountId, paymentLink: link, amount: 5000 });
  expect(await deliver(stripeEvent('checkout.session.completed', session))).toMatchObject({ status: 'credited' });
  return { customer: buyer, paymentIntent: session.payment_intent!, session: session.id };
}

const disputeId = () => `dp_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 16)}`;

/** charge.dispute.created for a new dispute (or the given one); the dispute's id. */
async function opened(paymentIntent: string, amount: number, options: { id?: string; status?: string } = {}) {
  const id = options.id ?? disputeId();
  await deliver(stripeEvent('charge.dispute.created', dispute({ paymentIntent, amount, id, status: options.status ?? 'needs_response' })));
  return id;
}

/** charge.dispute.closed with the outcome given: the event, so that it can be delivered again. */
async function closed(paymentIntent: string, amount: number, id: string, status: 'won' | 'lost' | 'warning_closed') {
  const event = stripeEvent('charge.dispute.closed', dispute({ paymentIntent, amount, id, status }));
  await deliver(event);
  return event;
}

async function balanceOf(customer: Customer) {
  const { rows } = await admin().query('select balance::bigint from public.accounts where id = $1', [customer.accountId]);
  return Number(rows[0].balance);
}

async function flagOf(customer: Customer): Promise<string | null> {
  const { rows } = await admin().query('select flagged_reason from public.accounts where id = $1', [customer.accountId]);
  return rows[0].flagged_reason;
}



describe('a payment disputed again after a dispute lost', () => {
  it.each(['won', 'warning_closed'] as const)('the second dispute %s gives back nothing of what the first, lost, took for good', async (outcome) => {
    const { customer, paymentIntent } = await bought();
    const first = await opened(paymentIntent, 5000);
    await closed(paymentIntent, 5000, first, 'lost');
    expect(await balanceOf(customer)).toBe(0);
    await booksBalanced(customer);

    const second = await opened(paymentIntent, 5000);
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, second, outcome);
    expect(await balanceOf(customer)).toBe(0);
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack]]);
    // The first dispute was lost: the account stays flagged for the operator.
    expect(await flagOf(customer)).toContain(paymentIntent);
    await booksBalanced(customer);
  });

  it('partial disputes ($20 lost, then $30 won): the second takes its own share, and gives back only that', async () => {
    const { customer, paymentIntent } = await bought();
    const first = await opened(paymentIntent, 2000);
    expect(await balanceOf(customer)).toBe(33_000_000);
    await closed(paymentIntent, 2000, first, 'lost');
    expect(await balanceOf(customer)).toBe(33_000_000);
    const second = await opened(paymentIntent, 3000);
    // $20 + $30 of $50 disputed: all of the pack is taken back.
    expect(await balanceOf(customer)).toBe(0);
    await booksBalanced(customer);
    await closed(paymentIntent, 3000, second, 'won');
    // The $30 won comes back; the $20 lost stays taken back.
    expect(await balanceOf(customer)).toBe(33_000_000);
    await booksBalanced(customer);
  });

  it('two partial disputes open at once ($20 and $30): each takes its share; the $20 won gives back its 22M, the $30 lost keeps its 33M', async () => {
    const { customer, paymentIntent } = await bought();
    const small = await opened(paymentIntent, 2000);
    const large = await opened(paymentIntent, 3000);
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 2000, small, 'won');
    expect(await balanceOf(customer)).toBe(22_000_000);
    // The $30 dispute is still open: the account stays flagged.
    expect(await flagOf(customer)).toContain(paymentIntent);
    await booksBalanced(customer);
    await closed(paymentIntent, 3000, large, 'lost');
    expect(await balanceOf(customer)).toBe(22_000_000);
    await booksBalanced(customer);
  });
});

describe('what a dispute won gives back, of two open at once', () => {
  it('is what that dispute drew, on the terms it drew it: the $20 drew the bonus and 17M paid, the $30 33M paid', async () => {
    const { customer, paymentIntent, session } = await bought();
    const small = await opened(paymentIntent, 2000);
    const large = await opened(paymentIntent, 3000);
    await closed(paymentIntent, 3000, large, 'lost');
    await closed(paymentIntent, 2000, small, 'won');
    expect(await balanceOf(customer)).toBe(22_000_000);
    const { rows } = await admin().query(
      `select category, remaining::int, reference from public.credit_grants where account_id = $1 and source = 'dispute_won' order by id`,
      [customer.accountId],
    );
    expect(rows).toEqual([
      { category: 'paid', remaining: 17_000_000, reference: session },
      { category: 'promotional', remaining: 5_000_000, reference: session },
    ]);
    await booksBalanced(customer);
  });
});

describe('a dispute won, delivered again', () => {
  it('the same event, or its closed event under a new event id, gives back once', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await opened(paymentIntent, 5000);
    const won = await closed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(pack);
    expect(await deliver(won)).toMatchObject({ status: 'duplicate' });
    await closed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(pack);
    expect(await flagOf(customer)).toBeNull();
    expect((await stripeLedger(customer)).filter(([reason]) => reason === 'dispute_won').reduce((sum, [, amount]) => sum + Number(amount), 0)).toBe(pack);
    await booksBalanced(customer);
  });

  it('its created event delivered again under a new event id after the win takes nothing', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await opened(paymentIntent, 5000);
    await closed(paymentIntent, 5000, id, 'won');
    await opened(paymentIntent, 5000, { id });
    expect(await balanceOf(customer)).toBe(pack);
    expect(await flagOf(customer)).toBeNull();
    await booksBalanced(customer);
  });

  it('re-sent after a second dispute opened, it gives back nothing the second took, and is answered 2xx', async () => {
    const { customer, paymentIntent } = await bought();
    const first = await opened(paymentIntent, 5000);
    await closed(paymentIntent, 5000, first, 'won');
    expect(await balanceOf(customer)).toBe(pack);
    const second = await opened(paymentIntent, 5000);
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, first, 'won');
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, second, 'lost');
    expect(await balanceOf(customer)).toBe(0);
    expect(await flagOf(customer)).toContain(paymentIntent);
    await booksBalanced(customer);
  });

  it('re-sent after a second dispute opened, when the first took nothing (all spent): the second\'s take stays', async () => {
    const { customer, paymentIntent } = await bought();
    await ledger.grantCredits({ accountId: customer.accountId, amount: -pack, reason: 'adjustment', note: 'spent' });
    const first = await opened(paymentIntent, 5000); // nothing left to take: uncollected
    await closed(paymentIntent, 5000, first, 'won'); // forgiven, nothing given back
    expect(await balanceOf(customer)).toBe(0);
    await ledger.grantCredits({ accountId: customer.accountId, amount: 100_000_000, reason: 'grant', note: 'bought apart' });
    await opened(paymentIntent, 5000);
    expect(await balanceOf(customer)).toBe(45_000_000);
    await closed(paymentIntent, 5000, first, 'won');
    expect(await balanceOf(customer)).toBe(45_000_000);
    await booksBalanced(customer);
  });
});

describe('dispute events out of order', () => {
  it('funds_reinstated before funds_withdrawn, either before or after the close: recorded, nothing changes but the close', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await opened(paymentIntent, 5000);
    const object = (status: string) => dispute({ paymentIntent, amount: 5000, id, status });
    expect(await deliver(stripeEvent('charge.dispute.funds_reinstated', object('won')))).toMatchObject({ status: 'ignored' });
    expect(await balanceOf(customer)).toBe(0);
    expect(await deliver(stripeEvent('charge.dispute.funds_withdrawn', object('needs_response')))).toMatchObject({ status: 'ignored' });
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(pack);
    await deliver(stripeEvent('charge.dispute.funds_reinstated', object('won')));
    await deliver(stripeEvent('charge.dispute.funds_withdrawn', object('won')));
    expect(await balanceOf(customer)).toBe(pack);
    await booksBalanced(customer);
  });

  it('a dispute closed as won before its created event arrives takes nothing when it does', async () => {
    const { customer, paymentIntent } = await bought();
    const id = disputeId();
    await closed(paymentIntent, 5000, id, 'won');
    expect(await balanceOf(customer)).toBe(pack);
    await opened(paymentIntent, 5000, { id });
    expect(await balanceOf(customer)).toBe(pack);
    expect(await stripeLedger(customer)).toEqual([['purchase', pack]]);
    await booksBalanced(customer);
  });

  it('a dispute closed as lost before its created event arrives takes the credits back then, once', async () => {
    const { customer, paymentIntent } = await bought();
    const id = disputeId();
    await closed(paymentIntent, 5000, id, 'lost');
    expect(await balanceOf(customer)).toBe(0);
    expect(await flagOf(customer)).toContain(paymentIntent);
    await opened(paymentIntent, 5000, { id });
    expect(await balanceOf(customer)).toBe(0);
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack]]);
    await booksBalanced(customer);
  });
});

describe('a dispute without an id', () => {
  it.each(['charge.dispute.created', 'charge.dispute.closed'])('%s is refused (400) and writes nothing: its close could not be told from another dispute\'s', async (type) => {
    const { customer, paymentIntent } = await bought();
    const { id: _id, ...object } = dispute({ paymentIntent, amount: 5000, status: type === 'charge.dispute.created' ? 'needs_response' : 'lost' });
    const event = stripeEvent(type, object);
    const body = JSON.stringify(event);
    const response = await fetch(`${gateway.url}/webhooks/stripe`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signature(body, secret) },
      body,
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: 'invalid_event' } });
    expect((await admin().query('select 1 from public.stripe_events where id = $1', [event.id])).rows).toEqual([]);
    expect(await balanceOf(customer)).toBe(pack);
  });
});

describe('a refund after a dispute lost', () => {
  it('of the whole payment takes nothing more', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await opened(paymentIntent, 5000);
    await closed(paymentIntent, 5000, id, 'lost');
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 5000, amountRefunded: 5000 })));
    expect(await balanceOf(customer)).toBe(0);
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack]]);
    await booksBalanced(customer);
  });

  it('of the rest of a partly disputed payment ($20 lost, $30 refunded) takes the rest, once', async () => {
    const customer = await createCustomer({ balance: 0 });
    await ledger.grantCredits({ accountId: customer.accountId, amount: 10_000_000, reason: 'grant', note: 'bought apart' });
    const { paymentIntent } = await bought(customer);
    const id = await opened(paymentIntent, 2000);
    await closed(paymentIntent, 2000, id, 'lost');
    expect(await balanceOf(customer)).toBe(43_000_000);
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 5000, amountRefunded: 3000 })));
    expect(await balanceOf(customer)).toBe(10_000_000);
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 5000, amountRefunded: 5000 })));
    expect(await balanceOf(customer)).toBe(10_000_000);
    await booksBalanced(customer);
  });
});

describe('an inquiry (no funds withdrawn)', () => {
  it('closed (warning_closed) gives back all it took and clears the flag; a chargeback opened later takes them again', async () => {
    const { customer, paymentIntent } = await bought();
    const inquiry = await opened(paymentIntent, 5000, { status: 'warning_needs_response' });
    // Taken back while the inquiry is open, as for any dispute.
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, inquiry, 'warning_closed');
    expect(await balanceOf(customer)).toBe(pack);
    expect(await flagOf(customer)).toBeNull();
    await booksBalanced(customer);

    const chargeback = await opened(paymentIntent, 5000);
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, inquiry, 'warning_closed'); // the inquiry's close, again
    expect(await balanceOf(customer)).toBe(0);
    await closed(paymentIntent, 5000, chargeback, 'lost');
    expect(await balanceOf(customer)).toBe(0);
    await booksBalanced(customer);
  });

  it('escalated to a chargeback under the same id and lost: taken once, kept', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await opened(paymentIntent, 5000, { status: 'warning_needs_response' });
    await deliver(stripeEvent('charge.dispute.funds_withdrawn', dispute({ paymentIntent, amount: 5000, id, status: 'needs_response' })));
    await closed(paymentIntent, 5000, id, 'lost');
    expect(await balanceOf(customer)).toBe(0);
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack]]);
    await booksBalanced(customer);
  });

  it('closed after a full refund gives nothing back', async () => {
    const { customer, paymentIntent } = await bought();
    const inquiry = await opened(paymentIntent, 5000, { status: 'warning_needs_response' });
    await deliver(stripeEvent('charge.refunded', charge({ paymentIntent, amount: 5000, amountRefunded: 5000 })));
    await closed(paymentIntent, 5000, inquiry, 'warning_closed');
    expect(await balanceOf(customer)).toBe(0);
    await booksBalanced(customer);
  });
});

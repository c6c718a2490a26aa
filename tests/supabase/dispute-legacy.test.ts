import { readFileSync } from 'node:fs';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { booksBalanced, stripeLedger } from '../support/books.ts';
import { checkoutSession, dispute, invoice, invoicePayment, stripeEvent, webhookDeliverer } from '../support/stripe-events.ts';
import { admin, createCustomer, ledger, type Customer } from '../support/supabase.ts';

// Payments disputed before migration 20261129003500, each dispute event applied by
// the functions of that time; then that migration's backfill of
// private.stripe_disputes, run as it is written there. From there on, either
// - the payment's next dispute events come through the webhook route, to
//   today's functions, which make what its disputes keep taken back whole; or
// - its events all came before 20261129003700 (applied by 20261129003500's
//   functions), and that migration's correction, run as it is written there,
//   puts it right;
// - a payment the old functions took back twice (a dispute's created event
//   after it was won) gets back, from 20261129003900's correction, what none of
//   its disputes keeps.
// The migrations' statements are run for this file's payments alone: the
// database is shared with the other test files.
//
// Every amount is for a $50 pack of 50 credits and a 5-credit bonus: 55M.

const secret = 'whsec_test_dispute_legacy';
const pack = 55_000_000;
const schema = 'dispute_legacy_test';
let gateway: Gateway;
let link: string;

const migration = (file: string) => readFileSync(new URL(`../../supabase/migrations/${file}`, import.meta.url), 'utf8');

/** The functions as they were until a migration: the file each was last defined in. */
const until = {
  '20261129003500': {
    apply_stripe_dispute: '20261127000300_stripe_as_delivered.sql',
    apply_stripe_dispute_closed: '20261129003000_dispute_won_as_taken.sql',
  },
  '20261129003700': {
    apply_stripe_dispute: '20261129003500_each_dispute_on_its_own.sql',
    apply_stripe_dispute_closed: '20261129003500_each_dispute_on_its_own.sql',
  },
} as const;
type Era = keyof typeof until;
type DisputeFunction = keyof (typeof until)[Era];

/** A function's definition in a migration, created in this file's schema under the era's name. */
function definitionUntil(era: Era, name: DisputeFunction) {
  const text = migration(until[era][name]);
  const start = text.indexOf(`create or replace function public.${name}(`);
  expect(start).toBeGreaterThanOrEqual(0);
  const end = text.indexOf('$$;', text.indexOf('as $$', start)) + 3;
  return text.slice(start, end).replace(`function public.${name}(`, `function ${schema}.until_${era}_${name}(`);
}

/** 20261129003500's two backfill statements, as written there, for one payment's events. */
function backfillStatements() {
  const text = migration('20261129003500_each_dispute_on_its_own.sql');
  const start = text.indexOf('insert into private.stripe_disputes (id, payment_id, amount, status, created_at)');
  const end = text.indexOf("-- What the payment's disputes open or lost dispute.");
  const statements = text.slice(start, end).split(/;\s*\n/).map((statement) => statement.trim()).filter(Boolean);
  expect(statements).toHaveLength(2);
  return statements.map((statement) => {
    expect(statement.split('where e.type = ')).toHaveLength(2);
    return statement.replace('where e.type = ', 'where e.business_key = $1 and e.type = ');
  });
}

/** A migration's correction (its closing `do` block), as written there, for one payment. */
function correctionOf(file: string, paymentIntent: string) {
  const text = migration(file);
  const block = text.slice(text.lastIndexOf('\ndo $$'));
  const payments = 'where exists (select 1 from private.stripe_disputes d where d.payment_id = p.id)';
  expect(block.split(payments)).toHaveLength(2);
  expect(paymentIntent).toMatch(/^pi_\w+$/);
  return block.replace(payments, `where p.payment_intent_id = '${paymentIntent}' and exists (select 1 from private.stripe_disputes d where d.payment_id = p.id)`);
}

beforeAll(async () => {
  gateway = await startGateway({ STRIPE_WEBHOOK_SECRET: secret, STRIPE_SECRET_KEY: 'sk_test_tollgate' });
  link = `plink_test_${crypto.randomUUID().replaceAll('-', '')}`;
  await admin().query(
    `insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits, bonus_credits) values ('Builder', $1, 5000, 50000000, 5000000)`,
    [link],
  );
  await admin().query(`create schema ${schema}`);
  await admin().query(`revoke all on schema ${schema} from public`);
  for (const era of Object.keys(until) as Era[]) {
    for (const name of Object.keys(until[era]) as DisputeFunction[]) await admin().query(definitionUntil(era, name));
  }
});

afterAll(async () => {
  await admin().query(`drop schema if exists ${schema} cascade`);
  await gateway.close();
});

/** Delivers a signed event through the webhook route to today's functions; every one of these must be answered 2xx. */
const deliver = webhookDeliverer(() => gateway.url, secret);

/** The dispute is recorded in private.stripe_disputes with that status. */
async function recordedAs(id: string, status: string) {
  const { rows } = await admin().query('select status from private.stripe_disputes where id = $1', [id]);
  expect(rows).toEqual([{ status }]);
}

/** Applies an event with the function as it was until the migration named (what the webhook route called then). */
async function appliedUntil(era: Era, event: ReturnType<typeof stripeEvent>) {
  const name = event.type === 'charge.dispute.created' ? 'apply_stripe_dispute' : 'apply_stripe_dispute_closed';
  const { rows } = await admin().query(`select ${schema}.until_${era}_${name}($1, $2::jsonb) as result`, [event.id, JSON.stringify(event.data.object)]);
  return rows[0].result as Record<string, unknown>;
}

/** 20261129003500 is applied: its backfill, for this payment. */
async function backfill(paymentIntent: string) {
  for (const statement of backfillStatements()) await admin().query(statement, [paymentIntent]);
}

/** 20261129003700 is applied: its correction, for this payment. */
async function correct(paymentIntent: string) {
  await admin().query(correctionOf('20261129003700_dispute_takes_reconciled.sql', paymentIntent));
}

/** 20261129003900 is applied: its correction, for this payment. */
async function giveBack(paymentIntent: string) {
  await admin().query(correctionOf('20261129003900_dispute_over_takes_given_back.sql', paymentIntent));
}

/** A new account that bought the pack: its payment intent. */
async function bought(customer?: Customer) {
  const buyer = customer ?? (await createCustomer({ balance: 0 }));
  const session = checkoutSession({ clientReferenceId: buyer.accountId, paymentLink: link, amount: 5000 });
  expect(await deliver(stripeEvent('checkout.session.completed', session))).toMatchObject({ status: 'credited' });
  return { customer: buyer, paymentIntent: session.payment_intent! };
}

const disputeId = () => `dp_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 16)}`;
const created = (paymentIntent: string, amount: number, id: string) =>
  stripeEvent('charge.dispute.created', dispute({ paymentIntent, amount, id }));
const closed = (paymentIntent: string, amount: number, id: string, status: 'won' | 'lost' | 'warning_closed') =>
  stripeEvent('charge.dispute.closed', dispute({ paymentIntent, amount, id, status }));

async function balanceOf(customer: Customer) {
  const { rows } = await admin().query('select balance::bigint from public.accounts where id = $1', [customer.accountId]);
  return Number(rows[0].balance);
}

async function flagOf(customer: Customer): Promise<string | null> {
  const { rows } = await admin().query('select flagged_reason from public.accounts where id = $1', [customer.accountId]);
  return rows[0].flagged_reason;
}

async function paymentOf(paymentIntent: string) {
  const { rows } = await admin().query(
    'select disputed_amount::int, debited::int, uncollected::int from public.stripe_payments where payment_intent_id = $1',
    [paymentIntent],
  );
  return rows[0] as { disputed_amount: number; debited: number; uncollected: number };
}



/** Two disputes of parts of the payment ($20 and $30), opened before 20261129003500: taken back as the larger alone. */
async function twoPartialDisputesBefore20261129003500(paymentIntent: string) {
  const [small, large] = [disputeId(), disputeId()];
  await appliedUntil('20261129003500', created(paymentIntent, 2000, small));
  await appliedUntil('20261129003500', created(paymentIntent, 3000, large));
  await backfill(paymentIntent);
  const { rows } = await admin().query(
    `select id, amount::int, status from private.stripe_disputes where id in ($1, $2) order by amount`,
    [small, large],
  );
  expect(rows).toEqual([{ id: small, amount: 2000, status: 'open' }, { id: large, amount: 3000, status: 'open' }]);
  return { small, large };
}

/** What is left of the account's grants not expired, per category (the signup credits, used up, left out). */
async function grantsLeftOf(customer: Customer) {
  const { rows } = await admin().query(
    `select category, sum(remaining)::int as remaining from public.credit_grants
      where account_id = $1 and expired_at is null and remaining > 0 group by category order by category`,
    [customer.accountId],
  );
  return Object.fromEntries(rows.map((row) => [row.category as string, row.remaining as number]));
}

/** A dispute created and won, then its created event again under a new event id, before 20261129003500: the pack taken back twice. */
async function wonThenCreatedAgainBefore20261129003500(customer: Customer, paymentIntent: string, options: { spentBetween?: number } = {}) {
  const id = disputeId();
  await appliedUntil('20261129003500', created(paymentIntent, 5000, id));
  await appliedUntil('20261129003500', closed(paymentIntent, 5000, id, 'won'));
  if (options.spentBetween) {
    await ledger.grantCredits({ accountId: customer.accountId, amount: -options.spentBetween, reason: 'adjustment', note: 'spent' });
  }
  await appliedUntil('20261129003500', created(paymentIntent, 5000, id));
  await backfill(paymentIntent);
  await recordedAs(id, 'won');
  return id;
}

/** A dispute closed as won before its created event, both before 20261129003500: the created event took the pack back. */
async function wonBeforeCreatedBefore20261129003500(paymentIntent: string) {
  const id = disputeId();
  await appliedUntil('20261129003500', closed(paymentIntent, 5000, id, 'won'));
  await appliedUntil('20261129003500', created(paymentIntent, 5000, id));
  await backfill(paymentIntent);
  await recordedAs(id, 'won');
  return id;
}

/** A dispute closed as lost before its created event, both before 20261129003500: it took nothing. */
async function lostBeforeCreatedBefore20261129003500(paymentIntent: string) {
  const id = disputeId();
  await appliedUntil('20261129003500', closed(paymentIntent, 5000, id, 'lost'));
  await backfill(paymentIntent);
  await recordedAs(id, 'lost');
  return id;
}

describe('disputes applied before 20261129003500, their next events through the webhook route', () => {
  it('two disputes of parts of a payment ($20 and $30), open then, both lost: all 55M taken back, disputed_amount the sum', async () => {
    const { customer, paymentIntent } = await bought();
    const { small, large } = await twoPartialDisputesBefore20261129003500(paymentIntent);
    // The old bug 20261129003500 names: the larger alone, 33M of 55M taken back.
    expect(await balanceOf(customer)).toBe(pack - 33_000_000);

    expect(await deliver(closed(paymentIntent, 2000, small, 'lost'))).toMatchObject({ status: 'dispute_lost' });
    expect(await balanceOf(customer)).toBe(0);
    expect(await deliver(closed(paymentIntent, 3000, large, 'lost'))).toMatchObject({ status: 'dispute_lost' });
    // Both disputes lost: $50 of $50 disputed, every credit of the pack taken back.
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent) })
      .toEqual({ balance: 0, payment: { disputed_amount: 5000, debited: pack, uncollected: 0 } });
    expect(await flagOf(customer)).toContain(paymentIntent);
    await booksBalanced(customer);
  });

  it('a dispute closed as lost before its created event, its created event coming after: the credits are taken back, once', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await lostBeforeCreatedBefore20261129003500(paymentIntent);
    // Before 20261129003500 a lost close that came first took nothing; its created event was to take the credits.
    expect(await balanceOf(customer)).toBe(pack);

    expect(await deliver(created(paymentIntent, 5000, id))).toMatchObject({ status: 'already_lost' });
    // Lost for good: the whole pack taken back.
    expect(await balanceOf(customer)).toBe(0);
    expect(await flagOf(customer)).toContain(paymentIntent);
    // Its events again, under new event ids, take nothing more.
    await deliver(created(paymentIntent, 5000, id));
    await deliver(closed(paymentIntent, 5000, id, 'lost'));
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack]]);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 5000, debited: pack, uncollected: 0 });
    await booksBalanced(customer);
  });
});

describe('20261129003700 puts right the payments whose dispute events all came before it', () => {
  it('two disputes of parts of a payment, both lost under 20261129003500: all 55M taken back; run again, or the events again, take nothing more', async () => {
    const { customer, paymentIntent } = await bought();
    const { small, large } = await twoPartialDisputesBefore20261129003500(paymentIntent);
    await appliedUntil('20261129003700', closed(paymentIntent, 2000, small, 'lost'));
    await appliedUntil('20261129003700', closed(paymentIntent, 3000, large, 'lost'));
    // The first bug: no event is left to take the other 22M.
    expect(await balanceOf(customer)).toBe(22_000_000);

    await correct(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent) })
      .toEqual({ balance: 0, payment: { disputed_amount: 5000, debited: pack, uncollected: 0 } });
    await correct(paymentIntent);
    await deliver(closed(paymentIntent, 2000, small, 'lost'));
    await deliver(created(paymentIntent, 3000, large));
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -22_000_000], ['dispute', -11_000_000], ['dispute', -22_000_000]]);
    await booksBalanced(customer);
  });

  it('a dispute closed as lost before its created event, the created event under 20261129003500: the credits are taken back and the account flagged', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await lostBeforeCreatedBefore20261129003500(paymentIntent);
    expect(await appliedUntil('20261129003700', created(paymentIntent, 5000, id))).toMatchObject({ status: 'already_lost' });
    // The second bug: the created event came and took nothing.
    expect(await balanceOf(customer)).toBe(pack);
    expect(await flagOf(customer)).toBeNull();

    await correct(paymentIntent);
    expect(await balanceOf(customer)).toBe(0);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 5000, debited: pack, uncollected: 0 });
    expect(await flagOf(customer)).toContain(paymentIntent);
    const { rows } = await admin().query(`select details from public.alerts where account_id = $1 and kind = 'payment_disputed'`, [customer.accountId]);
    expect(rows).toEqual([{ details: expect.objectContaining({ payment_intent: paymentIntent, taken: pack }) }]);
    await booksBalanced(customer);
  });

  it('of what was spent since, only what the credit limit allows is taken back; the rest is recorded uncollected and alerted', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await lostBeforeCreatedBefore20261129003500(paymentIntent);
    await appliedUntil('20261129003700', created(paymentIntent, 5000, id));
    await ledger.grantCredits({ accountId: customer.accountId, amount: -40_000_000, reason: 'adjustment', note: 'spent' });

    await correct(paymentIntent);
    expect(await balanceOf(customer)).toBe(0);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 5000, debited: 15_000_000, uncollected: 40_000_000 });
    const { rows } = await admin().query(`select details from public.alerts where account_id = $1 and kind = 'clawback_shortfall'`, [customer.accountId]);
    expect(rows).toEqual([{ details: expect.objectContaining({ owed: pack, debited: 15_000_000 }) }]);
    await booksBalanced(customer);
  });

  it('a dispute lost, then another won, before 20261129003500 (the win gave back all): the lost one\'s share is taken back', async () => {
    const { customer, paymentIntent } = await bought();
    const [lost, won] = [disputeId(), disputeId()];
    await appliedUntil('20261129003500', created(paymentIntent, 5000, lost));
    await appliedUntil('20261129003500', closed(paymentIntent, 5000, lost, 'lost'));
    await appliedUntil('20261129003500', created(paymentIntent, 5000, won));
    await appliedUntil('20261129003500', closed(paymentIntent, 5000, won, 'won'));
    expect(await balanceOf(customer)).toBe(pack);
    await backfill(paymentIntent);

    await correct(paymentIntent);
    expect(await balanceOf(customer)).toBe(0);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 5000, debited: pack, uncollected: 0 });
    expect(await flagOf(customer)).toContain(paymentIntent);
    // The won dispute's close again takes nothing more, gives nothing back, and leaves the flag.
    await deliver(closed(paymentIntent, 5000, won, 'won'));
    expect(await balanceOf(customer)).toBe(0);
    expect(await flagOf(customer)).toContain(paymentIntent);
    await booksBalanced(customer);
  });

  it('two disputes of parts of a payment, still open: both taken back now; the $20 won then gives back its 22M, the $30 lost keeps its 33M', async () => {
    const { customer, paymentIntent } = await bought();
    const { small, large } = await twoPartialDisputesBefore20261129003500(paymentIntent);

    await correct(paymentIntent);
    expect(await balanceOf(customer)).toBe(0);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 5000, debited: pack, uncollected: 0 });
    expect(await deliver(closed(paymentIntent, 2000, small, 'won'))).toMatchObject({ status: 'dispute_won' });
    expect(await balanceOf(customer)).toBe(22_000_000);
    expect(await flagOf(customer)).toContain(paymentIntent);
    expect(await deliver(closed(paymentIntent, 3000, large, 'lost'))).toMatchObject({ status: 'dispute_lost' });
    expect(await balanceOf(customer)).toBe(22_000_000);
    expect(await paymentOf(paymentIntent)).toEqual({ disputed_amount: 3000, debited: 33_000_000, uncollected: 0 });
    await booksBalanced(customer);
  });

  it('a payment whose disputes came under today\'s functions is left as it is', async () => {
    const { customer, paymentIntent } = await bought();
    const id = disputeId();
    await deliver(created(paymentIntent, 2000, id));
    await deliver(closed(paymentIntent, 2000, id, 'lost'));
    const before = { ledger: await stripeLedger(customer), payment: await paymentOf(paymentIntent) };
    expect(before.payment).toEqual({ disputed_amount: 2000, debited: 22_000_000, uncollected: 0 });

    await correct(paymentIntent);
    expect({ ledger: await stripeLedger(customer), payment: await paymentOf(paymentIntent) }).toEqual(before);
    await booksBalanced(customer);
  });
});

describe('20261129003900 gives back what a payment taken back twice keeps no more', () => {
  it('a dispute won, then its created event again under a new event id: the 55M taken again come back as they were taken, once', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await wonThenCreatedAgainBefore20261129003500(customer, paymentIntent);
    await correct(paymentIntent);
    // Left by 20261129003700: its one dispute won, yet the pack taken back.
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) })
      .toEqual({ balance: 0, payment: { disputed_amount: 0, debited: pack, uncollected: 0 }, flag: expect.stringContaining(paymentIntent) });
    await booksBalanced(customer);

    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) })
      .toEqual({ balance: pack, payment: { disputed_amount: 0, debited: 0, uncollected: 0 }, flag: null });
    // As the dispute won gave them back: the bonus as bonus, the paid credits as paid.
    expect(await grantsLeftOf(customer)).toEqual({ paid: 50_000_000, promotional: 5_000_000 });
    const given = [['purchase', pack], ['dispute', -pack], ['dispute_won', 50_000_000], ['dispute_won', 5_000_000],
                   ['dispute', -pack], ['dispute_won', 50_000_000], ['dispute_won', 5_000_000]];
    expect(await stripeLedger(customer)).toEqual(given);
    const { rows } = await admin().query(
      `select reference from public.credit_ledger where account_id = $1 and reference like 'dispute_won:reconciled:%' order by id`,
      [customer.accountId],
    );
    expect(rows).toEqual([{ reference: `dispute_won:reconciled:${paymentIntent}` }, { reference: `dispute_won:reconciled:${paymentIntent}:2` }]);
    await booksBalanced(customer);

    // Run again, or the dispute's events again: nothing more.
    await giveBack(paymentIntent);
    await deliver(created(paymentIntent, 5000, id));
    await deliver(closed(paymentIntent, 5000, id, 'won'));
    expect({ balance: await balanceOf(customer), ledger: await stripeLedger(customer), flag: await flagOf(customer) })
      .toEqual({ balance: pack, ledger: given, flag: null });
    await booksBalanced(customer);
  });

  it('spent in between: what was recorded uncollected is forgiven, what was taken comes back, no more', async () => {
    const { customer, paymentIntent } = await bought();
    await wonThenCreatedAgainBefore20261129003500(customer, paymentIntent, { spentBetween: 40_000_000 });
    await correct(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent) })
      .toEqual({ balance: 0, payment: { disputed_amount: 0, debited: 15_000_000, uncollected: 40_000_000 } });

    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), grants: await grantsLeftOf(customer) })
      .toEqual({ balance: 15_000_000, payment: { disputed_amount: 0, debited: 0, uncollected: 0 }, grants: { paid: 15_000_000 } });
    await booksBalanced(customer);
    await giveBack(paymentIntent);
    expect(await balanceOf(customer)).toBe(15_000_000);
    await booksBalanced(customer);
  });

  it('a dispute closed as won before its created event: the 55M come back and the flag is cleared; its won close again changes nothing', async () => {
    const { customer, paymentIntent } = await bought();
    const id = await wonBeforeCreatedBefore20261129003500(paymentIntent);
    await correct(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) })
      .toEqual({ balance: 0, payment: { disputed_amount: 0, debited: pack, uncollected: 0 }, flag: expect.stringContaining(paymentIntent) });
    await booksBalanced(customer);

    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) })
      .toEqual({ balance: pack, payment: { disputed_amount: 0, debited: 0, uncollected: 0 }, flag: null });
    await booksBalanced(customer);

    expect(await deliver(closed(paymentIntent, 5000, id, 'won'))).toMatchObject({ status: 'already_won' });
    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) })
      .toEqual({ balance: pack, payment: { disputed_amount: 0, debited: 0, uncollected: 0 }, flag: null });
    expect(await stripeLedger(customer)).toEqual([['purchase', pack], ['dispute', -pack], ['dispute_won', 50_000_000], ['dispute_won', 5_000_000]]);
    await booksBalanced(customer);
  });

  it('the won close again, on its own, clears the flag and gives nothing back: a dispute event never gives back, the correction does', async () => {
    // In a deploy the correction runs before any later event; here the event comes first, to see what it does alone.
    const { customer, paymentIntent } = await bought();
    const id = await wonBeforeCreatedBefore20261129003500(paymentIntent);
    await correct(paymentIntent);
    expect(await deliver(closed(paymentIntent, 5000, id, 'won'))).toMatchObject({ status: 'already_won' });
    expect({ balance: await balanceOf(customer), flag: await flagOf(customer) }).toEqual({ balance: 0, flag: null });
    await booksBalanced(customer);

    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent) })
      .toEqual({ balance: pack, payment: { disputed_amount: 0, debited: 0, uncollected: 0 } });
    await booksBalanced(customer);
  });

  it('the flag stays while a dispute of another of the account\'s payments is lost', async () => {
    const { customer, paymentIntent: other } = await bought();
    const lost = disputeId();
    await deliver(created(other, 2000, lost));
    await deliver(closed(other, 2000, lost, 'lost'));
    const { paymentIntent } = await bought(customer);
    await wonThenCreatedAgainBefore20261129003500(customer, paymentIntent);
    await correct(paymentIntent);
    // The flag names the payment taken back twice, whose one dispute was won.
    expect(await flagOf(customer)).toContain(paymentIntent);

    await giveBack(paymentIntent);
    expect({ balance: await balanceOf(customer), payment: await paymentOf(paymentIntent) })
      .toEqual({ balance: 2 * pack - 22_000_000, payment: { disputed_amount: 0, debited: 0, uncollected: 0 } });
    expect(await flagOf(customer)).toMatch(/^payment pi_\w+ disputed/);
    await booksBalanced(customer);
  });

  it('a payment whose disputes came under today\'s functions is left as it is: one lost and one won, or lost and its month expired since', async () => {
    const { customer, paymentIntent } = await bought();
    const [lost, won] = [disputeId(), disputeId()];
    await deliver(created(paymentIntent, 2000, lost));
    await deliver(created(paymentIntent, 3000, won));
    await deliver(closed(paymentIntent, 3000, won, 'won'));
    await deliver(closed(paymentIntent, 2000, lost, 'lost'));
    const before = { ledger: await stripeLedger(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) };
    expect(before.payment).toEqual({ disputed_amount: 2000, debited: 22_000_000, uncollected: 0 });
    expect(before.flag).toContain(paymentIntent);
    await giveBack(paymentIntent);
    expect({ ledger: await stripeLedger(customer), payment: await paymentOf(paymentIntent), flag: await flagOf(customer) }).toEqual(before);
    await booksBalanced(customer);

    // A month's allowance (20M for $20), half disputed and lost, the other half then expired unused:
    // the claw-back's count (its share less what expired) would make the 10M taken look too much.
    const subscriber = await createCustomer({ balance: 0 });
    const plan = `legacy${crypto.randomUUID().slice(0, 8)}`;
    const [price, planLink, customerId] = [`price_test_${plan}`, `plink_test_${plan}`, `cus_test_${plan}`];
    await admin().query(
      `insert into public.plans (id, name, monthly_credits, stripe_price_id, stripe_payment_link_id) values ($1, 'Plan', 20000000, $2, $3)`,
      [plan, price, planLink],
    );
    await deliver(stripeEvent('checkout.session.completed',
      checkoutSession({ clientReferenceId: subscriber.accountId, paymentLink: planLink, amount: 2000, mode: 'subscription', customer: customerId })));
    const paid = invoice({ customer: customerId, price, amount: 2000 });
    await deliver(stripeEvent('invoice.paid', paid));
    const monthly = `pi_test_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`;
    await deliver(stripeEvent('invoice_payment.paid', invoicePayment({ invoice: paid.id, paymentIntent: monthly, amount: 2000 })));
    const half = disputeId();
    await deliver(created(monthly, 1000, half));
    await deliver(closed(monthly, 1000, half, 'lost'));
    await admin().query('select public.expire_grants($1)', [new Date(paid.lines.data[0]!.period.end * 1000 + 1000).toISOString()]);
    const month = { ledger: await stripeLedger(subscriber), payment: await paymentOf(monthly), balance: await balanceOf(subscriber) };
    expect(month).toMatchObject({ payment: { disputed_amount: 1000, debited: 10_000_000, uncollected: 0 }, balance: 0 });
    await giveBack(monthly);
    expect({ ledger: await stripeLedger(subscriber), payment: await paymentOf(monthly), balance: await balanceOf(subscriber) }).toEqual(month);
    await booksBalanced(subscriber);
  });
});

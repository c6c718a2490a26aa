import Stripe from 'stripe';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { syncPaymentLinks } from '../../scripts/stripe-payment-links.ts';
import { startFakeStripe } from '../support/fake-stripe.ts';
import { admin, serviceClient } from '../support/supabase.ts';

let fake: Awaited<ReturnType<typeof startFakeStripe>>;
let stripe: Stripe;

beforeAll(async () => {
  fake = await startFakeStripe();
  stripe = new Stripe('sk_test_tollgate', { host: '127.0.0.1', port: fake.port, protocol: 'http', maxNetworkRetries: 0 });
});

afterAll(async () => {
  await fake.close();
  // Packs made here must not appear as top-up links to the rest of the suite.
  await admin().query(`update public.credit_packs set active = false where name like 'Links %'`);
  await admin().query(`update public.plans set active = false where id like 'links%'`);
});

describe('the Payment Link command', () => {
  it('creates a price and a link per pack and plan, stores them, and is idempotent on re-runs', async () => {
    const suffix = crypto.randomUUID().slice(0, 8);
    const { rows: [pack] } = await admin().query(
      `insert into public.credit_packs (name, unit_amount, credits, bonus_credits) values ($1, 5000, 50000000, 5000000) returning id`,
      [`Links ${suffix}`],
    );
    await admin().query(`insert into public.plans (id, name, monthly_credits, unit_amount) values ($1, 'Pro', 20000000, 2000)`, [`links${suffix}`]);
    const only = [pack.id, `links${suffix}`];

    const first = await syncPaymentLinks(stripe, serviceClient(), { only });
    expect(first.created).toHaveLength(2);
    const { rows: [stored] } = await admin().query('select * from public.credit_packs where id = $1', [pack.id]);
    expect(stored.stripe_price_id).toMatch(/^price_fake/);
    expect(stored.stripe_payment_link_id).toMatch(/^plink_fake/);
    expect(stored.payment_link_url).toMatch(/^https:\/\/buy\.stripe\.com\//);

    const priceRequest = fake.requests.find((request) => request.path === '/v1/prices' && request.form['metadata[credit_pack_id]'] === pack.id)!;
    expect(priceRequest).toMatchObject({
      method: 'POST',
      idempotencyKey: `tollgate:price:credit_packs:${pack.id}:5000:usd`,
      form: { currency: 'usd', unit_amount: '5000', 'product_data[name]': `Links ${suffix} credits` },
      authorization: 'Bearer sk_test_tollgate',
    });
    expect(priceRequest.stripeVersion).toMatch(/^\d{4}-\d{2}-\d{2}/);
    const linkRequest = fake.requests.find((request) => request.path === '/v1/payment_links' && request.form['metadata[credit_pack_id]'] === pack.id)!;
    expect(linkRequest).toMatchObject({
      idempotencyKey: `tollgate:link:credit_packs:${pack.id}:${stored.stripe_price_id}`,
      form: { 'line_items[0][price]': stored.stripe_price_id, 'line_items[0][quantity]': '1' },
    });
    const planPrice = fake.requests.find((request) => request.path === '/v1/prices' && request.form['metadata[plan_id]'] === `links${suffix}`)!;
    expect(planPrice.form['recurring[interval]']).toBe('month');

    // A second run changes nothing: no new price or link for this pack.
    const created = fake.requests.filter((request) => request.method === 'POST' && (request.path === '/v1/prices' || request.path === '/v1/payment_links')).length;
    await syncPaymentLinks(stripe, serviceClient(), { only });
    const createdAgain = fake.requests.filter((request) => request.method === 'POST' && (request.path === '/v1/prices' || request.path === '/v1/payment_links')).length;
    expect(createdAgain).toBe(created);

    // A new price: a new Stripe price and link, the old link switched off.
    await admin().query('update public.credit_packs set unit_amount = 4500 where id = $1', [pack.id]);
    const third = await syncPaymentLinks(stripe, serviceClient(), { only });
    expect(third.deactivated).toContain(stored.stripe_payment_link_id);
    expect(fake.objects.get(stored.stripe_payment_link_id)?.active).toBe(false);
    const { rows: [updated] } = await admin().query('select * from public.credit_packs where id = $1', [pack.id]);
    expect(updated.stripe_payment_link_id).not.toBe(stored.stripe_payment_link_id);
  });
});

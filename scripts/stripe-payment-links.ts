// `npm run stripe:links`: creates or updates a Stripe Price and Payment Link for
// every active credit pack and paid plan, and stores their ids and URLs back in
// the database. Safe to re-run: requests carry idempotency keys derived from the
// pack and its price, and unchanged packs create nothing. The account travels
// as `client_reference_id`, appended to the link's URL when it is shown to a
// customer (GET /v1/credits, the 402 error).
import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import Stripe from 'stripe';
import WebSocket from 'ws';

interface Sellable {
  table: 'credit_packs' | 'plans';
  id: string;
  name: string;
  unit_amount: number;
  currency: string;
  active: boolean;
  stripe_price_id: string | null;
  stripe_payment_link_id: string | null;
  payment_link_url: string | null;
}

export interface SyncReport {
  created: string[];
  updated: string[];
  deactivated: string[];
}

async function priceFor(stripe: Stripe, item: Sellable): Promise<Stripe.Price> {
  if (item.stripe_price_id) {
    const existing = await stripe.prices.retrieve(item.stripe_price_id);
    if (existing.unit_amount === item.unit_amount && existing.currency === item.currency && existing.active) return existing;
  }
  return stripe.prices.create(
    {
      currency: item.currency,
      unit_amount: item.unit_amount,
      product_data: { name: item.table === 'plans' ? `${item.name} plan` : `${item.name} credits` },
      ...(item.table === 'plans' ? { recurring: { interval: 'month' as const } } : {}),
      metadata: { [item.table === 'plans' ? 'plan_id' : 'credit_pack_id']: item.id },
    },
    { idempotencyKey: `tollgate:price:${item.table}:${item.id}:${item.unit_amount}:${item.currency}` },
  );
}

export async function syncPaymentLinks(stripe: Stripe, database: SupabaseClient, options: { only?: string[] } = {}): Promise<SyncReport> {
  const report: SyncReport = { created: [], updated: [], deactivated: [] };
  const columns = 'id, name, unit_amount, currency, active, stripe_price_id, stripe_payment_link_id, payment_link_url';
  const [packs, plans] = await Promise.all([
    database.from('credit_packs').select(columns).throwOnError(),
    database.from('plans').select(columns).not('unit_amount', 'is', null).throwOnError(),
  ]);
  const items: Sellable[] = [
    ...(packs.data as Omit<Sellable, 'table'>[]).map((pack) => ({ ...pack, table: 'credit_packs' as const })),
    ...(plans.data as Omit<Sellable, 'table'>[]).map((plan) => ({ ...plan, table: 'plans' as const })),
  ];

  for (const item of items) {
    if (options.only && !options.only.includes(item.id)) continue;
    if (!item.active) {
      if (item.stripe_payment_link_id) {
        await stripe.paymentLinks.update(item.stripe_payment_link_id, { active: false });
        report.deactivated.push(item.stripe_payment_link_id);
      }
      continue;
    }
    const price = await priceFor(stripe, item);
    if (item.stripe_payment_link_id && price.id === item.stripe_price_id) {
      await stripe.paymentLinks.update(item.stripe_payment_link_id, { active: true });
      report.updated.push(item.stripe_payment_link_id);
      continue;
    }
    const link = await stripe.paymentLinks.create(
      {
        line_items: [{ price: price.id, quantity: 1 }],
        metadata: { [item.table === 'plans' ? 'plan_id' : 'credit_pack_id']: item.id },
      },
      { idempotencyKey: `tollgate:link:${item.table}:${item.id}:${price.id}` },
    );
    if (item.stripe_payment_link_id) {
      await stripe.paymentLinks.update(item.stripe_payment_link_id, { active: false });
      report.deactivated.push(item.stripe_payment_link_id);
    }
    await database
      .from(item.table)
      .update({ stripe_price_id: price.id, stripe_payment_link_id: link.id, payment_link_url: link.url })
      .eq('id', item.id)
      .throwOnError();
    report.created.push(link.id);
  }
  return report;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const { STRIPE_SECRET_KEY, SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY } = process.env;
  const missing = Object.entries({ STRIPE_SECRET_KEY, SUPABASE_URL, SUPABASE_SERVICE_ROLE_KEY }).filter(([, value]) => !value);
  if (missing.length) {
    console.error(`Missing ${missing.map(([name]) => name).join(', ')}.`);
    process.exit(1);
  }
  const stripe = new Stripe(STRIPE_SECRET_KEY!);
  const database = createClient(SUPABASE_URL!, SUPABASE_SERVICE_ROLE_KEY!, {
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket as never },
  });
  const report = await syncPaymentLinks(stripe, database);
  console.log(`created ${report.created.length}, updated ${report.updated.length}, deactivated ${report.deactivated.length} payment links`);
}

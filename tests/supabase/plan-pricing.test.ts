import { describe, expect, it } from 'vitest';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

// A plan's price multiplier, in integer basis points, applied exactly to the
// rates with the single rounding rule once per request, and recorded on the row.

async function onPlan(multiplierBps: number) {
  const planId = `mult${crypto.randomUUID().slice(0, 8)}`;
  await admin().query(`insert into public.plans (id, name, monthly_credits, price_multiplier_bps) values ($1, 'Plan', 0, $2)`, [planId, multiplierBps]);
  const customer = await createCustomer({ balance: 10_000_000 });
  await admin().query('update public.accounts set plan = $1 where id = $2', [planId, customer.accountId]);
  return customer;
}

describe('plan pricing', () => {
  it('charges ceil(Σ tokens × price × m / 10,000 / 1,000,000), against hand-computed integers', async () => {
    const model = await createModel({ input: 1_250_000, output: 3_333_333 }, { cost: { input: 1_000_000, output: 3_000_000 } });
    const cases: Array<[number, number]> = [
      // 1000 × 1.25 + 777 × 3.333333 = 3839.999741 micro-dollars at list price: 3840.
      [10_000, 3840],
      // × 0.9 = 3455.9997669: 3456.
      [9_000, 3456],
      // × 0.3333 = 1279.87991367...: 1280.
      [3_333, 1280],
      // × 1.5 = 5759.9996115: 5760.
      [15_000, 5760],
    ];
    for (const [bps, expected] of cases) {
      const customer = await onPlan(bps);
      const requestId = crypto.randomUUID();
      const authorized = await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 1000 });
      expect(authorized.status).toBe('authorized');
      // The hold follows the multiplier too: ceil((1000 × 1.25 + 1000 × 3.333333) × m).
      expect(authorized.status === 'authorized' && authorized.hold).toBe(Math.ceil((1000 * 1_250_000 + 1000 * 3_333_333) * bps / 10_000 / 1_000_000));
      await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 1000, output: 777 }, usageSource: 'provider' });
      const { rows: [row] } = await admin().query(
        'select charged::int, upstream_cost::int, price_multiplier_bps from public.usage_events where request_id = $1',
        [requestId],
      );
      // The upstream cost is not multiplied: 1000 × 1 + 777 × 3 = 3331.
      expect({ bps, ...row }).toEqual({ bps, charged: expected, upstream_cost: 3331, price_multiplier_bps: bps });
    }
  });

  it('the multiplier reaches the long-context tier and web searches, not the tier\'s threshold', async () => {
    const model = await createModel({ input: 1_000_000, output: 2_000_000, web_search: 10_000 });
    await admin().query(`update public.models set long_context_threshold = 100, long_context_price = '{"input": 2000000, "output": 4000000}' where id = $1`, [model]);
    const customer = await onPlan(5_000);
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 1000, maxOutputTokens: 100, calls: { web_search: 2 } });
    await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 1000, output: 100, web_search: 2 }, usageSource: 'provider' });
    const { rows: [row] } = await admin().query('select charged::int from public.usage_events where request_id = $1', [requestId]);
    // Above 100 prompt tokens: 1000 × 2 + 100 × 4 = 2400, + 2 searches × 10,000 = 22,400; half: 11,200.
    expect(row.charged).toBe(11_200);
  });
});

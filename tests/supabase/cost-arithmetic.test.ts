import { describe, expect, it } from 'vitest';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

const claudeLike = {
  input: 3_000_000,
  cached_input: 300_000,
  cache_write: 3_750_000,
  cache_write_1h: 6_000_000,
  output: 15_000_000,
  reasoning: 15_000_000,
  image: 3_000_000,
  audio: 3_000_000,
};

// Each expected value is worked out by hand: sum(tokens * rate) / 1,000,000, rounded up once.
const cases: Array<{ name: string; usage: Record<string, number>; rates: Record<string, number | null>; expected: number | null }> = [
  { name: 'one bucket, exact', usage: { input: 1000 }, rates: { input: 2_500_000 }, expected: 2500 },
  { name: 'a fraction rounds up', usage: { input: 1 }, rates: { input: 150_000 }, expected: 1 },
  { name: 'nothing used costs nothing', usage: {}, rates: { input: 2_500_000 }, expected: 0 },
  { name: 'zero tokens in an unpriced bucket cost nothing', usage: { input: 10, audio: 0 }, rates: { input: 1_000_000, audio: null }, expected: 10 },
  { name: 'tokens in an unpriced bucket have no cost', usage: { input: 10, audio: 5 }, rates: { input: 1_000_000, audio: null }, expected: null },
  {
    name: 'every bucket at its own rate',
    // 3702 + 1500 + 7500 + 6000 + 11835 + 1500 + 300 + 30 = 32367
    usage: { input: 1234, cached_input: 5000, cache_write: 2000, cache_write_1h: 1000, output: 789, reasoning: 100, image: 100, audio: 10 },
    rates: claudeLike,
    expected: 32_367,
  },
  { name: 'rounded once per request, not per bucket', usage: { input: 1, output: 1, reasoning: 1 }, rates: { input: 100_000, output: 100_000, reasoning: 100_000 }, expected: 1 },
  { name: 'sub-unit sums round up to one', usage: { input: 333 }, rates: { input: 1 }, expected: 1 },
  { name: 'exact boundary does not round up', usage: { input: 1_000_000 }, rates: { input: 7 }, expected: 7 },
  { name: 'one past the boundary rounds up', usage: { input: 1_000_001 }, rates: { input: 7 }, expected: 8 },
  // 1e12 * 1e8 / 1e6 = 1e14; 999,999,999,999 * 1,000,001 / 1e6 = 1,000,000,999,998.999999 (the
  // products pass 64 bits); the sum 101,000,000,999,998.999999 rounds up.
  { name: 'huge counts stay exact', usage: { input: 1_000_000_000_000, output: 999_999_999_999 }, rates: { input: 100_000_000, output: 1_000_001 }, expected: 101_000_000_999_999 },
  { name: 'a free bucket', usage: { output: 5_000 }, rates: { output: 0 }, expected: 0 },
];

describe('cost arithmetic (private.cost_of)', () => {
  it.each(cases)('$name', async ({ usage, rates, expected }) => {
    const { rows } = await admin().query<{ cost: string | null }>(
      'select private.cost_of(private.normalize_usage($1), $2) as cost',
      [usage, rates],
    );
    expect(rows[0]?.cost === null ? null : Number(rows[0]?.cost)).toBe(expected);
  });

  it('clamps negative counts to zero and refuses unknown buckets and fractions', async () => {
    const { rows } = await admin().query('select private.normalize_usage($1) as usage', [{ input: -5, output: 3 }]);
    expect(rows[0].usage).toMatchObject({ input: 0, output: 3, cached_input: 0 });
    await expect(admin().query('select private.normalize_usage($1)', [{ tokens: 3 }])).rejects.toThrow(/unknown token bucket "tokens"/);
    await expect(admin().query('select private.normalize_usage($1)', [{ input: 1.5 }])).rejects.toThrow(/must be an integer/);
    await expect(admin().query('select private.normalize_usage($1)', [{ input: '7' }])).rejects.toThrow(/must be an integer/);
  });

  it('takes the worst case at the dearest input-side and output-side rates', async () => {
    // 1000 input tokens at the 1-hour cache write rate (6,000,000) = 6000;
    // 500 output tokens at 15,000,000 = 7500.
    const { rows } = await admin().query('select private.worst_case_cost($1, 1000, 500) as hold', [claudeLike]);
    expect(Number(rows[0].hold)).toBe(13_500);
  });
});

describe('cost through settle_request', () => {
  it('bills each bucket at its price, falls back for unpriced buckets, and records the upstream cost', async () => {
    // No cached-input or reasoning price: cached input falls back to input, reasoning to output.
    const model = await createModel({ input: 2_000_000, output: 8_000_000 }, { cost: { input: 1_000_000, output: 4_000_000 } });
    const customer = await createCustomer({ balance: 1_000_000 });
    const requestId = crypto.randomUUID();
    const authorization = await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 5000, maxOutputTokens: 1000 });
    expect(authorization.status).toBe('authorized');

    const settlement = await ledger.settleRequest({
      requestId,
      outcome: 'completed',
      usage: { input: 1200, cached_input: 800, output: 300, reasoning: 200 },
      usageSource: 'provider',
    });
    // price: (1200 + 800) * 2,000,000 + (300 + 200) * 8,000,000 = 8,000,000,000 / 1e6 = 8000
    // cost:  (1200 + 800) * 1,000,000 + (300 + 200) * 4,000,000 = 4000
    expect(settlement).toMatchObject({ amount: 8000, charged: 8000, upstream_cost: 4000, balance: 992_000, held: 0 });

    const { rows } = await admin().query('select * from public.usage_events where request_id = $1', [requestId]);
    expect(rows[0]).toMatchObject({
      status: 'completed', usage_source: 'provider', input_tokens: '1200', cached_input_tokens: '800',
      output_tokens: '300', reasoning_tokens: '200', amount: '8000', charged: '8000', upstream_cost: '4000',
    });
  });
});

describe('usage the model has no price for', () => {
  it('is charged nothing, never the balance; the rest at its price, and only the operator is told', async () => {
    // No price_web_search: the upstream reports searches the request never asked for.
    const model = await createModel({ input: 2_000_000, output: 8_000_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const single = crypto.randomUUID();
    const batched = crypto.randomUUID();
    for (const requestId of [single, batched]) {
      expect((await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 })).status).toBe('authorized');
    }
    const usage = { input: 100, output: 50, web_search: 2 };
    // 100 × 2 + 50 × 8 = 600; the two searches, 0.
    expect(await ledger.settleRequest({ requestId: single, outcome: 'completed', usage, usageSource: 'provider' })).toMatchObject({ amount: 600, charged: 600, balance: 9_999_400 });
    const { rows: [batch] } = await admin().query('select public.settle_requests($1) as result', [JSON.stringify([{ request_id: batched, outcome: 'completed', usage, usage_source: 'provider' }])]);
    expect(batch.result[0]).toMatchObject({ ok: true, result: { amount: 600, charged: 600, balance: 9_998_800 } });

    const { rows: alerts } = await admin().query(`select account_id, details from public.alerts where kind = 'unpriced_usage' and details ->> 'request_id' = any ($1) order by id`, [[single, batched]]);
    expect(alerts).toEqual([single, batched].map((requestId) => ({ account_id: null, details: { request_id: requestId, model, account_id: customer.accountId, unpriced: { web_search: 2 } } })));
    const { data: seen } = await customer.client.from('alerts').select('kind');
    expect((seen ?? []).filter((alert) => alert.kind === 'unpriced_usage')).toEqual([]);
  });
});

describe('long-context price tiers', () => {
  // Gemini 2.5 Pro-like: above 200,000 prompt tokens, input ×2 and output ×1.5 for the whole request.
  const rates = { input: 1_250_000, cached_input: 125_000, output: 10_000_000, reasoning: 10_000_000, long: { threshold: 200_000, input: 2_500_000, cached_input: 250_000, output: 15_000_000, reasoning: 15_000_000 } };

  it.each([
    // 100,000 × 1.25 + 1,000 × 10 = 125,000 + 10,000
    ['a prompt at the threshold pays the ordinary rates', { input: 150_000, cached_input: 50_000, output: 1_000 }, 150_000 * 1.25 + 50_000 * 0.125 + 1_000 * 10],
    // 200,001 prompt tokens: every bucket at the tier: 150,001 × 2.5 + 50,000 × 0.25 + 1,000 × 15
    ['one token past it pays the tier, for the whole request', { input: 150_001, cached_input: 50_000, output: 1_000 }, Math.ceil(150_001 * 2.5 + 50_000 * 0.25 + 1_000 * 15)],
  ])('%s', async (_name, usage, expected) => {
    const { rows } = await admin().query('select private.cost_of(private.normalize_usage($1), $2) as cost', [usage, rates]);
    expect(Number(rows[0].cost)).toBe(expected);
  });

  it('bills the tier through settle_request, and holds the dearer rates', async () => {
    const model = await createModel({ input: 1_250_000, cached_input: 125_000, output: 10_000_000 }, { cost: { input: 1_000_000, output: 8_000_000 } });
    await admin().query(
      `update public.models set long_context_threshold = 200000, long_context_price = '{"input": 2500000, "output": 15000000}', long_context_cost = '{"input": 2000000}' where id = $1`,
      [model],
    );
    const customer = await createCustomer({ balance: 100_000_000 });
    const settle = async (usage: Record<string, number>) => {
      const requestId = crypto.randomUUID();
      const authorization = await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model, maxInputTokens: 300_000, maxOutputTokens: 1000 });
      // The hold takes the tier's input and output rates: 300,000 × 2.5 + 1,000 × 15.
      expect(authorization).toMatchObject({ status: 'authorized', hold: 765_000 });
      return ledger.settleRequest({ requestId, outcome: 'completed', usage, usageSource: 'provider' });
    };
    // Below: 100,000 × 1.25 + 500 × 10 = 130,000.
    expect(await settle({ input: 100_000, output: 500 })).toMatchObject({ amount: 130_000 });
    // Above: 250,000 × 2.5 + 500 × 15 = 632,500 (cached input falls back to the tier's input).
    // Cost: the tier sets only input, 250,000 × 2; output keeps its ordinary cost, 500 × 8.
    expect(await settle({ input: 200_000, cached_input: 50_000, output: 500 })).toMatchObject({ amount: 632_500, upstream_cost: 504_000 });
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let gateway: Gateway;

beforeAll(async () => {
  gateway = await startGateway({ TOPUP_URL: 'https://buy.stripe.com/test_tollgate' });
});

afterAll(async () => {
  await gateway.close();
});

describe('GET /v1/models', () => {
  it('lists the priced models with their prices, through the openai SDK', async () => {
    const customer = await createCustomer();
    const models = [];
    for await (const model of gateway.openai(customer.apiKey).models.list()) models.push(model);
    const ids = models.map((model) => model.id);
    expect(ids).toContain('gpt-4o-mini');
    expect(ids).toContain('demo');
    expect(ids).not.toContain('unpriced-preview');
    expect(models.find((model) => model.id === 'gpt-4o-mini')).toMatchObject({
      object: 'model',
      owned_by: 'openai',
      pricing: { input: 180_000, cached_input: 90_000, output: 720_000 },
    });
  });

  it('shows a model\'s price per hosted web search, where it has one', async () => {
    const searched = await createModel({ input: 1, output: 1, web_search: 12_000 });
    const plain = await createModel({ input: 1, output: 1 });
    const customer = await createCustomer();
    await admin().query('update public.api_keys set allowed_models = $2 where id = $1', [customer.apiKeyId, [searched, plain]]);
    const page = await gateway.openai(customer.apiKey).models.list();
    const pricing = Object.fromEntries(page.data.map((model) => [model.id, (model as unknown as { pricing: Record<string, unknown> }).pricing]));
    expect(pricing[searched]).toMatchObject({ web_search_per_call: 12_000 });
    expect(pricing[plain]).not.toHaveProperty('web_search_per_call');
  });

  it('lists only the models a key is allowed', async () => {
    const allowed = await createModel({ input: 1, output: 1 });
    const customer = await createCustomer();
    await admin().query('update public.api_keys set allowed_models = $2 where id = $1', [customer.apiKeyId, [allowed]]);
    const page = await gateway.openai(customer.apiKey).models.list();
    expect(page.data.map((model) => model.id)).toEqual([allowed]);
  });

  it('refuses a missing or unknown key', async () => {
    expect((await fetch(`${gateway.url}/v1/models`)).status).toBe(401);
    const response = await fetch(`${gateway.url}/v1/models`, { headers: { authorization: 'Bearer tg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' } });
    expect(response.status).toBe(401);
    expect(await response.json()).toMatchObject({ error: { code: 'invalid_api_key' } });
  });
});

describe('GET /v1/credits', () => {
  it('offers every active pack\'s Payment Link with the account as client_reference_id', async () => {
    const customer = await createCustomer();
    const link = `https://buy.stripe.com/test_credits_${crypto.randomUUID().slice(0, 8)}`;
    const { rows: [pack] } = await admin().query(
      `insert into public.credit_packs (name, unit_amount, credits, bonus_credits, payment_link_url) values ('Credits test', 1, 10000000, 0, $1) returning id`,
      [link],
    );
    try {
      const response = await fetch(`${gateway.url}/v1/credits`, { headers: { authorization: `Bearer ${customer.apiKey}` } });
      const body = await response.json();
      expect(body.top_up_options).toContainEqual({
        name: 'Credits test', url: `${link}?client_reference_id=${customer.accountId}`, price: { amount: 1, currency: 'usd' }, credits: 10_000_000,
      });
    } finally {
      await admin().query('update public.credit_packs set active = false where id = $1', [pack.id]);
    }
  });

  it('shows the key\'s account: balance, held, available and where to top up', async () => {
    const customer = await createCustomer({ balance: 2_500_000 });
    const response = await fetch(`${gateway.url}/v1/credits`, { headers: { authorization: `Bearer ${customer.apiKey}` } });
    expect(await response.json()).toEqual({
      object: 'credits',
      account_id: customer.accountId,
      currency: 'usd',
      unit: 'micro',
      balance: 2_500_000,
      held: 0,
      available: 2_500_000,
      credit_limit: 0,
      plan: 'free',
      // The cheapest active pack's Payment Link (TOPUP_URL when no pack has one), carrying the account.
      top_up_url: expect.stringContaining(`client_reference_id=${customer.accountId}`),
      top_up_options: expect.any(Array),
    });
  });

  it('a key restricted to some addresses reads its account, and its models, only from them', async () => {
    const customer = await createCustomer({ balance: 7_000_000 });
    await admin().query(`update public.api_keys set allowed_ips = '{10.0.0.0/8}' where id = $1`, [customer.apiKeyId]);
    for (const path of ['/v1/credits', '/v1/models']) {
      const outside = await fetch(`${gateway.url}${path}`, { headers: { authorization: `Bearer ${customer.apiKey}`, 'x-forwarded-for': '203.0.113.9' } });
      const body = (await outside.json()) as { balance?: number; data?: unknown; error?: { code?: string } };
      expect({ status: outside.status, code: body.error?.code, balance: body.balance, data: body.data }).toEqual({ status: 403, code: 'ip_not_allowed', balance: undefined, data: undefined });
      const inside = await fetch(`${gateway.url}${path}`, { headers: { authorization: `Bearer ${customer.apiKey}`, 'x-forwarded-for': '10.1.2.3' } });
      expect(inside.status).toBe(200);
    }
  });
});

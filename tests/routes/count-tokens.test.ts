import Anthropic from '@anthropic-ai/sdk';
import { GoogleGenAI } from '@google/genai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, type Customer } from '../support/supabase.ts';

// The token counting the agents call between requests: checked like a request,
// rate limited, answered by the provider, charged nothing.

let fake: FakeUpstream;
let upstash: LocalUpstash;
let gateway: Gateway;
const price = { input: 3_000_000, output: 15_000_000 };

beforeAll(async () => {
  [fake, upstash] = await Promise.all([startFakeUpstream(), startLocalUpstash()]);
  gateway = await startGateway({
    ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url, OPENAI_BASE_URL: `${fake.url}/v1`,
    UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token,
  });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
  await upstash.stop();
});

async function footprint(customer: Customer) {
  const { rows: [row] } = await admin().query(
    `select (select count(*) from public.usage_events where account_id = $1)::int as requests,
            (select count(*) from public.credit_ledger where account_id = $1)::int as ledger_rows,
            (select held::int from public.accounts where id = $1) as held`,
    [customer.accountId],
  );
  return row;
}

describe('count_tokens and countTokens', () => {
  it('Anthropic\'s count_tokens with its SDK: the provider\'s count, nothing charged', async () => {
    const model = await createModel(price, { provider: 'anthropic', upstreamModel: 'claude-count' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = await footprint(customer);
    const client = new Anthropic({ apiKey: customer.apiKey, baseURL: gateway.url, maxRetries: 0 });
    const counted = await client.messages.countTokens({ model, messages: [{ role: 'user', content: 'How many tokens is this?' }] });
    expect(counted.input_tokens).toBeGreaterThan(0);
    expect(fake.requests.at(-1)).toMatchObject({ path: '/v1/messages/count_tokens', body: { model: 'claude-count' } });
    await gateway.settled();
    expect(await footprint(customer)).toEqual(before);
  });

  it('Gemini\'s countTokens with its SDK: the provider\'s count, nothing charged', async () => {
    const model = await createModel(price, { provider: 'google', upstreamModel: 'gemini-count', maxOutputTokens: 8192 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = await footprint(customer);
    const genai = new GoogleGenAI({ apiKey: customer.apiKey, httpOptions: { baseUrl: gateway.url } });
    const counted = await genai.models.countTokens({ model, contents: 'How many tokens is this?' });
    expect(counted.totalTokens).toBeGreaterThan(0);
    expect(fake.requests.at(-1)!.path).toBe('/v1beta/models/gemini-count:countTokens');
    await gateway.settled();
    expect(await footprint(customer)).toEqual(before);
  });

  it('refused like a request: unknown model, a model of another provider, a revoked key; and rate limited', async () => {
    const claude = await createModel(price, { provider: 'anthropic', upstreamModel: 'claude-count' });
    const gpt = await createModel(price);
    const customer = await createCustomer({ balance: 1_000_000 });
    const count = (model: string) =>
      fetch(`${gateway.url}/v1/messages/count_tokens`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }] }),
      });
    expect(await (await count('no-such-model')).json()).toMatchObject({ type: 'error', error: { type: 'not_found_error', code: 'model_not_found' } });
    // An id no model can have (a lone surrogate made the database's whole call unreadable: a 503 blaming billing).
    for (const odd of ['\ud800', 'claude-\udc00', '../x']) {
      const response = await count(odd);
      expect([response.status, await response.json()]).toMatchObject([404, { type: 'error', error: { code: 'model_not_found' } }]);
    }
    expect(await (await count(gpt)).json()).toMatchObject({ type: 'error', error: { code: 'unsupported_provider' } });

    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { requests_per_minute: 2 });
    const statuses = [];
    for (let call = 0; call < 3; call++) statuses.push((await count(claude)).status);
    expect(statuses).toEqual([200, 200, 429]);

    await createApiKeyManager(customer.client).revokeApiKey(customer.apiKeyId);
    expect((await count(claude)).status).toBe(401);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1` });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

describe('POST /v1/embeddings with the openai SDK', () => {
  it('returns the embeddings and bills the reported prompt tokens', async () => {
    const model = await createModel({ input: 20_000, output: 0 }, { upstreamModel: 'text-embedding-3-small', maxOutputTokens: 1 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: result, response } = await gateway
      .openai(customer.apiKey)
      .embeddings.create({ model, input: 'The food was delicious and the waiter...', encoding_format: 'float' })
      .withResponse();
    expect(result.data[0]?.embedding).toEqual([0.0023064255, -0.009327292, -0.0028842222, 0.0123471]);
    expect(fake.requests.at(-1)).toMatchObject({ path: '/v1/embeddings', model: 'text-embedding-3-small' });
    await gateway.settled();
    const { rows: [event] } = await admin().query('select * from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
    // 8 tokens × 20,000 / 1e6 = 0.16 → rounds up to 1.
    expect(event).toMatchObject({ status: 'completed', usage_source: 'provider', input_tokens: '8', amount: '1', charged: '1' });
  });

  it('refuses an input of the wrong type', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/embeddings`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'text-embedding-3-small', input: { text: 'x' } }),
    });
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ error: { code: 'invalid_request', param: 'input' } });
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countTokens } from '../../lib/metering/count-tokens.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// Each provider's stream ending cleanly without its final usage: a placeholder
// or a running count is not final usage, so the output delivered is counted
// with the tokenizer (usage_source = tokenizer) rather than billed as 1 or 0.

let fake: FakeUpstream;
let gateway: Gateway;

const price = { input: 1_000_000, output: 4_000_000 };
const delivered = ['The answer is', ' forty-two, as the book says.'];

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

async function settledEvent(requestId: string | null) {
  await gateway.settled();
  const { rows: [event] } = await admin().query(
    'select status, usage_source, input_tokens::int, output_tokens::int, reasoning_tokens::int from public.usage_events where request_id = $1',
    [requestId],
  );
  return event;
}

describe('a stream that ends without final usage is metered by the tokenizer', () => {
  it('OpenAI: no usage chunk although include_usage was asked for', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-no-final-usage' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream: true }),
    });
    expect(response.status).toBe(200);
    await response.text();
    const event = await settledEvent(response.headers.get('x-request-id'));
    expect(event).toMatchObject({ status: 'completed', usage_source: 'tokenizer', output_tokens: await countTokens(['Hello', '!', ' How', ' can', ' I', ' help', ' you', ' today', '?']) });
    expect(event.input_tokens).toBeGreaterThan(0);
  });

  it('Anthropic: message_start\'s output_tokens placeholder and a message_delta without usage', async () => {
    const model = await createModel(price, { provider: 'anthropic', upstreamModel: 'messages-no-final-usage' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model, max_tokens: 100, messages: [{ role: 'user', content: 'What is the answer?' }], stream: true }),
    });
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('forty-two');
    // The input Anthropic reported is kept; only the output is counted.
    expect(await settledEvent(response.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'tokenizer', input_tokens: 25, output_tokens: await countTokens(delivered), reasoning_tokens: 0,
    });
  });

  it('Gemini: running prompt-only usageMetadata and a finishing chunk without any', async () => {
    const model = await createModel(price, { provider: 'google', upstreamModel: 'generate-no-final-usage', maxOutputTokens: 8192 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'What is the answer?' }] }] }),
    });
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('forty-two');
    expect(await settledEvent(response.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'tokenizer', input_tokens: 12, output_tokens: await countTokens(delivered), reasoning_tokens: 0,
    });
  });
});

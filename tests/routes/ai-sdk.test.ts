import { createAnthropic } from '@ai-sdk/anthropic';
import { createGoogleGenerativeAI } from '@ai-sdk/google';
import { createOpenAI } from '@ai-sdk/openai';
import { generateText, streamText } from 'ai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// The Vercel AI SDK's default providers pointed at the gateway, changing only
// base URL and key: openai('…') speaks the Responses API, anthropic('…') the
// Messages API, google('…') generateContent.

let fake: FakeUpstream;
let gateway: Gateway;

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

async function bills(accountId: string) {
  await gateway.settled();
  const { rows } = await admin().query(
    `select status, usage_source, charged::int from public.usage_events where account_id = $1 order by created_at`,
    [accountId],
  );
  return rows;
}

const price = { input: 1_000_000, output: 4_000_000 };

describe('the AI SDK\'s default providers', () => {
  it('openai(…): the Responses API, generateText and streamText', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const openai = createOpenAI({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1` });
    const generated = await generateText({ model: openai(model), prompt: 'Say hello' });
    expect(generated.text).toBe('Hello! How can I help you today?');
    expect(generated.usage).toMatchObject({ inputTokens: 20, outputTokens: 74 });
    const streamed = streamText({ model: openai(model), prompt: 'Say hello' });
    expect(await streamed.text).toBe('Hello! How can I help you today?');
    expect(fake.requests.at(-1)!.path).toBe('/v1/responses');
    // 20 × 1 + 74 × 4 (output and reasoning) = 316, twice.
    expect(await bills(customer.accountId)).toEqual([
      { status: 'completed', usage_source: 'provider', charged: 316 },
      { status: 'completed', usage_source: 'provider', charged: 316 },
    ]);
  });

  it('openai(…) over several turns: earlier output goes back as item_reference, which only its own account may send', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const [owner, stranger] = [await createCustomer({ balance: 10_000_000 }), await createCustomer({ balance: 10_000_000 })];
    const first = await generateText({ model: createOpenAI({ apiKey: owner.apiKey, baseURL: `${gateway.url}/v1` })(model), prompt: 'Remember: the code is 4711' });
    await gateway.settled();
    const conversation = [{ role: 'user' as const, content: 'Remember: the code is 4711' }, ...first.response.messages, { role: 'user' as const, content: 'What was the code?' }];
    const second = await generateText({ model: createOpenAI({ apiKey: owner.apiKey, baseURL: `${gateway.url}/v1` })(model), messages: conversation });
    expect(second.text).toBe('Hello! How can I help you today?');
    // The SDK sent the first answer's items by reference (responses are stored by default), and the gateway passed them on.
    const sent = fake.requests.at(-1)!.body.input as Array<{ type?: string; id?: string }>;
    const referenced = sent.filter((item) => item.type === 'item_reference').map((item) => item.id);
    expect(referenced.length).toBeGreaterThan(0);
    expect((first.response.body as { output: Array<{ id: string }> }).output.map((item) => item.id)).toEqual(expect.arrayContaining(referenced));
    // Held at what the first answer read and wrote (20 and 74 tokens), not at a context
    // window: the second turn carries under a hundred tokens of its own.
    await gateway.settled();
    const { rows: held } = await admin().query('select max_input_tokens::int from public.usage_events where account_id = $1 order by created_at', [owner.accountId]);
    expect(held).toHaveLength(2);
    expect(held[1].max_input_tokens).toBeLessThan(1_000);
    // The same messages from another account's key: refused before the upstream is asked.
    const upstreamBefore = fake.requests.length;
    const refused = generateText({ model: createOpenAI({ apiKey: stranger.apiKey, baseURL: `${gateway.url}/v1` })(model), messages: conversation, maxRetries: 0 });
    await expect(refused).rejects.toMatchObject({ statusCode: 400, responseBody: expect.stringContaining('item_not_found') });
    expect(fake.requests.length).toBe(upstreamBefore);
    expect(await bills(stranger.accountId)).toEqual([{ status: 'failed', usage_source: null, charged: 0 }]);
  });

  it('openai(…) with a Claude or a Gemini model: the Responses API, translated, generateText and streamText', async () => {
    const claude = await createModel(price, { provider: 'anthropic', upstreamModel: 'messages-cache', maxOutputTokens: 64_000 });
    const gemini = await createModel(price, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const openai = createOpenAI({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1` });
    const generated = await generateText({ model: openai(claude), prompt: 'Hi' });
    expect(generated.text).toBe('Hello! The cached context says hi.');
    // The Responses API's input_tokens include cache reads and writes: 25 + 3000 + 1200.
    expect(generated.usage).toMatchObject({ inputTokens: 4225, outputTokens: 14 });
    const streamed = streamText({ model: openai(gemini), prompt: 'What is the answer?' });
    expect(await streamed.text).toBe('The answer is 42.');
    expect(await streamed.usage).toMatchObject({ inputTokens: 1200, outputTokens: 152 });
    expect(fake.requests.at(-1)!.path).toBe('/v1beta/models/generate-cached-thoughts:streamGenerateContent?alt=sse');
    // (25 + 3000 + 1200) × 1 + 14 × 4 (no cache prices: input's); (1200 × 1 + 152 × 4).
    expect(await bills(customer.accountId)).toEqual([
      { status: 'completed', usage_source: 'provider', charged: 4281 },
      { status: 'completed', usage_source: 'provider', charged: 1808 },
    ]);
  });

  it('anthropic(…): the Messages API, generateText and streamText', async () => {
    const model = await createModel({ input: 3_000_000, cached_input: 300_000, cache_write: 3_750_000, output: 15_000_000 }, { provider: 'anthropic', upstreamModel: 'messages-cache', maxOutputTokens: 64_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const anthropic = createAnthropic({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1` });
    const generated = await generateText({ model: anthropic(model), prompt: 'What is the answer?' });
    expect(generated.text.length).toBeGreaterThan(0);
    const streamed = streamText({ model: anthropic(model), prompt: 'What is the answer?' });
    expect((await streamed.text).length).toBeGreaterThan(0);
    const billed = await bills(customer.accountId);
    expect(billed).toHaveLength(2);
    expect(billed.every((row) => row.status === 'completed' && row.usage_source === 'provider' && row.charged > 0)).toBe(true);
  });

  it('google(…): generateContent and streamGenerateContent', async () => {
    const model = await createModel({ input: 300_000, cached_input: 30_000, output: 2_500_000 }, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const google = createGoogleGenerativeAI({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1beta` });
    const generated = await generateText({ model: google(model), prompt: 'What is the answer?' });
    expect(generated.text.length).toBeGreaterThan(0);
    const streamed = streamText({ model: google(model), prompt: 'What is the answer?' });
    expect((await streamed.text).length).toBeGreaterThan(0);
    const billed = await bills(customer.accountId);
    expect(billed).toHaveLength(2);
    expect(billed.every((row) => row.status === 'completed' && row.usage_source === 'provider' && row.charged > 0)).toBe(true);
  });
});

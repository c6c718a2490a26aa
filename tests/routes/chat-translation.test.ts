import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;

const claudePrice = { input: 3_000_000, cached_input: 300_000, cache_write: 3_750_000, cache_write_1h: 6_000_000, output: 15_000_000 };
const geminiPrice = { input: 300_000, cached_input: 30_000, output: 2_500_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const tools = [
  { type: 'function' as const, function: { name: 'get_weather', description: 'Weather for a place', parameters: { type: 'object', properties: { location: { type: 'string' } } } } },
];

async function amounts(accountId: string) {
  const { rows } = await admin().query('select amount from public.usage_events where account_id = $1 order by created_at', [accountId]);
  return rows.map((row) => Number(row.amount));
}

// A conversation using every translated feature: system prompt, image, tool call and tool result.
const conversation = [
  { role: 'system' as const, content: 'You are terse.' },
  { role: 'user' as const, content: [{ type: 'text' as const, text: 'What is in this picture, and the weather there?' }, { type: 'image_url' as const, image_url: { url: 'data:image/png;base64,iVBORw0KGgo=' } }] },
  { role: 'assistant' as const, content: null, tool_calls: [{ id: 'call_1', type: 'function' as const, function: { name: 'get_weather', arguments: '{"location":"Paris"}' } }] },
  { role: 'tool' as const, tool_call_id: 'call_1', content: 'Sunny, 21°C' },
];

describe('the openai SDK calling a Claude model through /v1/chat/completions', () => {
  it('non-streaming: translated there and back, billed on Anthropic\'s usage', async () => {
    const model = await createModel(claudePrice, { provider: 'anthropic', upstreamModel: 'messages-cache', maxOutputTokens: 64_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const completion = await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: conversation, tools, max_tokens: 500 });
    expect(completion).toMatchObject({
      object: 'chat.completion',
      model,
      choices: [{ index: 0, message: { role: 'assistant', content: 'Hello! The cached context says hi.' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 25 + 3000 + 1200, completion_tokens: 14, prompt_tokens_details: { cached_tokens: 3000 } },
    });
    expect(fake.requestsFor('messages-cache').at(-1)!.body).toEqual({
      model: 'messages-cache',
      max_tokens: 500,
      system: 'You are terse.',
      messages: [
        { role: 'user', content: [{ type: 'text', text: 'What is in this picture, and the weather there?' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: 'iVBORw0KGgo=' } }] },
        { role: 'assistant', content: [{ type: 'tool_use', id: 'call_1', name: 'get_weather', input: { location: 'Paris' } }] },
        { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'call_1', content: 'Sunny, 21°C' }] },
      ],
      tools: [{ name: 'get_weather', description: 'Weather for a place', input_schema: { type: 'object', properties: { location: { type: 'string' } } } }],
    });
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([6135]);
  });

  it('streaming with tools: tool calls and their arguments arrive as OpenAI chunks', async () => {
    const model = await createModel(claudePrice, { provider: 'anthropic', upstreamModel: 'messages-tool-use', maxOutputTokens: 64_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = gateway.openai(customer.apiKey).chat.completions.stream({
      model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, stream_options: { include_usage: true },
    });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]).toMatchObject({
      finish_reason: 'tool_calls',
      message: { content: "I'll check the weather.", tool_calls: [{ id: 'toolu_01A09q90qw90lq917835lq9', type: 'function', function: { name: 'get_weather', arguments: '{"location": "Paris, France"}' } }] },
    });
    expect(final.usage).toMatchObject({ prompt_tokens: 410, completion_tokens: 68 });
    // No max_tokens from the client: Anthropic gets the model's maximum, which is what was held.
    expect(fake.requestsFor('messages-tool-use').at(-1)!.body).toMatchObject({ max_tokens: 64_000, stream: true });
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([2250]);
  });

  it('an upstream error comes back in OpenAI\'s shape, nothing charged', async () => {
    const upstreamModel = `claude-fails-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-cache', status: 400 });
    const model = await createModel(claudePrice, { provider: 'anthropic', upstreamModel, maxOutputTokens: 1000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    await expect(gateway.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({
      status: 400,
      error: { message: 'Scripted failure 400', type: 'invalid_request_error', param: null },
    });
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([0]);
  });
});

describe('what a Claude model cannot answer, and what Anthropic adds, through /v1/chat/completions', () => {
  it('n above 1 is refused in OpenAI\'s shape before any hold: Claude answers with one choice, which the hold would count n times', async () => {
    const upstreamModel = `messages-cache-n-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-cache' });
    const model = await createModel(claudePrice, { provider: 'anthropic', upstreamModel, maxOutputTokens: 64_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);
    await expect(client.chat.completions.create({ model, n: 2, messages: [{ role: 'user', content: 'Two names for a cat' }] })).rejects.toMatchObject({
      status: 400, error: { code: 'unsupported_parameter', param: 'n' },
    });
    expect(fake.requestsFor(upstreamModel)).toHaveLength(0);
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([]);
    // n: 1 is the one choice Claude gives.
    const one = await client.chat.completions.create({ model, n: 1, max_tokens: 100, messages: [{ role: 'user', content: 'One name for a cat' }] });
    expect(one.choices).toHaveLength(1);
  });

  it('a request with tools holds the system prompt Anthropic adds for them: the input bound covers the input Anthropic bills', async () => {
    const model = await createModel(claudePrice, { provider: 'anthropic', upstreamModel: 'messages-tool-use', maxOutputTokens: 64_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const { response } = await gateway.openai(customer.apiKey).chat.completions
      .create({ model, max_tokens: 100, tools, messages: [{ role: 'user', content: 'Weather in Paris?' }] })
      .withResponse();
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select input_tokens::int, max_input_tokens::int, amount::int, hold::int from public.usage_events where request_id = $1',
      [response.headers.get('x-request-id')],
    );
    // Anthropic billed 410 input tokens for a prompt of a few dozen bytes and one tool.
    expect(event.input_tokens).toBe(410);
    expect(event.max_input_tokens).toBeGreaterThanOrEqual(event.input_tokens);
    expect(event.amount).toBeLessThanOrEqual(event.hold);
  });
});

describe('the openai SDK calling a Gemini model through /v1/chat/completions', () => {
  it('non-streaming: translated there and back, thoughts reported as reasoning tokens', async () => {
    const model = await createModel(geminiPrice, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const completion = await gateway.openai(customer.apiKey).chat.completions.create({ model, messages: conversation, tools, max_tokens: 300, temperature: 0.2 });
    expect(completion).toMatchObject({
      model,
      choices: [{ message: { role: 'assistant', content: 'The answer is 42.' }, finish_reason: 'stop' }],
      usage: { prompt_tokens: 1200, completion_tokens: 152, completion_tokens_details: { reasoning_tokens: 140 }, prompt_tokens_details: { cached_tokens: 1000 } },
    });
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toEqual({
      contents: [
        { role: 'user', parts: [{ text: 'What is in this picture, and the weather there?' }, { inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } }] },
        { role: 'model', parts: [{ functionCall: { name: 'get_weather', args: { location: 'Paris' } } }] },
        { role: 'user', parts: [{ functionResponse: { name: 'get_weather', response: { content: 'Sunny, 21°C' } } }] },
      ],
      generationConfig: { maxOutputTokens: 300, temperature: 0.2 },
      systemInstruction: { parts: [{ text: 'You are terse.' }] },
      tools: [{ functionDeclarations: [{ name: 'get_weather', description: 'Weather for a place', parameters: { type: 'object', properties: { location: { type: 'string' } } } }] }],
    });
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([470]);
  });

  it('streaming with tools: the function call arrives as an OpenAI tool call', async () => {
    const model = await createModel(geminiPrice, { provider: 'google', upstreamModel: 'generate-function-call', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = gateway.openai(customer.apiKey).chat.completions.stream({
      model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools, stream_options: { include_usage: true },
    });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]).toMatchObject({
      finish_reason: 'tool_calls',
      message: { tool_calls: [{ type: 'function', function: { name: 'get_weather', arguments: '{"location":"Paris, France"}' } }] },
    });
    expect(final.usage).toMatchObject({ prompt_tokens: 95, completion_tokens: 7 });
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([46]);
  });

  it('n above 1 is refused when streaming, before any hold: the stream carries one choice, which the hold and the bill would count n times', async () => {
    const model = await createModel(geminiPrice, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = fake.requestsFor('generate-cached-thoughts').length;
    await expect(
      gateway.openai(customer.apiKey).chat.completions.create({ model, n: 2, stream: true, messages: [{ role: 'user', content: 'Two names for a cat' }] }),
    ).rejects.toMatchObject({ status: 400, error: { code: 'unsupported_parameter', param: 'n' } });
    expect(fake.requestsFor('generate-cached-thoughts')).toHaveLength(before);
    await gateway.settled();
    expect(await amounts(customer.accountId)).toEqual([]);
  });

  it('refuses what Gemini cannot take, in OpenAI\'s shape, before any hold', async () => {
    const model = await createModel(geminiPrice, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 65_536 });
    const customer = await createCustomer({ balance: 1_000_000 });
    await expect(
      gateway.openai(customer.apiKey).chat.completions.create({
        model, messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'https://example.com/cat.png' } }] }],
      }),
    ).rejects.toMatchObject({ status: 400, error: { code: 'invalid_request', param: 'messages', message: 'Gemini models take images as data: URLs (base64).' } });
    await gateway.settled();
    // The request could not be translated, so it was refused inside authorize: nothing is written.
    const { rows } = await admin().query('select status, charged from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([]);
  });
});

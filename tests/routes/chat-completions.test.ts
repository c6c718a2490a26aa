import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type OpenAI from 'openai';
import { getEncoding } from 'js-tiktoken';
import { countTokens } from '../../lib/metering/count-tokens.ts';
import { readFixture, splitEvents, startFakeUpstream, withoutUsage, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;

// $1 / $4 per 1M input / output tokens, cached input $0.10, reasoning at the output price.
const price = { input: 1_000_000, cached_input: 100_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, OPENAI_API_KEY: 'sk-upstream' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

async function usageEvent(requestId: string | null) {
  const { rows } = await admin().query('select * from public.usage_events where request_id = $1', [requestId]);
  return rows[0];
}

async function balanceOf(accountId: string) {
  const { rows } = await admin().query('select balance::bigint, held::bigint from public.accounts where id = $1', [accountId]);
  return { balance: Number(rows[0].balance), held: Number(rows[0].held) };
}

describe('POST /v1/chat/completions with the openai SDK', () => {
  it('non-streaming: returns the upstream answer and bills the provider-reported usage exactly', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);

    const { data: completion, response } = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Say hello' }] })
      .withResponse();
    expect(completion).toEqual(JSON.parse(readFixture('chat-basic.json')));
    const requestId = response.headers.get('x-request-id');
    expect(requestId).toMatch(/^[0-9a-f-]{36}$/);

    const upstream = fake.requestsFor('chat-basic').at(-1)!;
    expect(upstream.headers.authorization).toBe('Bearer sk-upstream');
    expect(upstream.body.model).toBe('chat-basic');

    await gateway.settled();
    // 19 prompt tokens × $1/M + 9 completion tokens × $4/M = 19 + 36 = 55 micro-dollars.
    expect(await usageEvent(requestId)).toMatchObject({
      status: 'completed', usage_source: 'provider', input_tokens: '19', output_tokens: '9', amount: '55', charged: '55',
    });
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - 55, held: 0 });
  });

  it('asks OpenAI for the standard tier by name: a request with no tier, or auto, is not served at a dearer project default (Priority) while billed at standard prices', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const tierSent = async (client: OpenAI, tier: 'auto' | 'default' | undefined, upstream: FakeUpstream) => {
      await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }], ...(tier ? { service_tier: tier } : {}) });
      return upstream.requestsFor('chat-basic').at(-1)!.body.service_tier;
    };
    const client = gateway.openai(customer.apiKey);
    expect([await tierSent(client, undefined, fake), await tierSent(client, 'auto', fake), await tierSent(client, 'default', fake)]).toEqual(['default', 'default', 'default']);
    const responses = async (tier?: string) => {
      const response = await fetch(`${gateway.url}/v1/responses`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, input: 'Say hello', ...(tier ? { service_tier: tier } : {}) }),
      });
      expect(response.status).toBe(200);
      await response.text();
      return fake.requests.at(-1)!.body.service_tier;
    };
    fake.scenarios.set('chat-basic', { fixture: 'responses-basic' });
    try {
      expect([await responses(), await responses('auto')]).toEqual(['default', 'default']);
    } finally {
      fake.scenarios.delete('chat-basic');
    }
    // An OpenAI-compatible upstream gets the request as sent: its tiers, where it has any, are named otherwise.
    const compatible = await startGateway({ OPENAI_BASE_URL: `http://127.0.0.1:1/v1`, UPSTREAM_CHANNELS: JSON.stringify([{ provider: 'openai', kind: 'openai-compatible', baseUrl: `${fake.url}/v1`, priority: 1 }]) });
    try {
      const other = compatible.openai(customer.apiKey);
      expect([await tierSent(other, undefined, fake), await tierSent(other, 'auto', fake)]).toEqual([undefined, 'auto']);
    } finally {
      await compatible.close();
    }
    await gateway.settled();
  });

  it('streaming: the client gets the upstream events, and the bill matches the final usage chunk', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-cached-reasoning' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);

    const { data: stream, response } = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'What is the answer?' }], stream: true, stream_options: { include_usage: true } })
      .withResponse();
    const chunks = [];
    for await (const chunk of stream) chunks.push(chunk);
    expect(chunks.map((chunk) => chunk.choices[0]?.delta.content ?? '').join('')).toBe('The answer is 42.');
    expect(chunks.at(-1)?.usage).toMatchObject({ prompt_tokens: 2056, completion_tokens: 1234 });
    expect(fake.requestsFor('chat-cached-reasoning').at(-1)!.body.stream_options).toEqual({ include_usage: true });

    await gateway.settled();
    // input 2056 − 1920 cached = 136 × 1,000,000; cached 1920 × 100,000; output 1234 − 1216 reasoning = 18,
    // reasoning 1216, both × 4,000,000: (136,000,000 + 192,000,000 + 4,936,000,000) / 1e6 = 5264.
    expect(await usageEvent(response.headers.get('x-request-id'))).toMatchObject({
      status: 'completed', usage_source: 'provider',
      input_tokens: '136', cached_input_tokens: '1920', output_tokens: '18', reasoning_tokens: '1216', amount: '5264',
    });
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - 5264, held: 0 });
  });

  it('streaming without include_usage: the client sees exactly what the upstream would have sent, and is still billed', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream: true }),
    });
    expect(response.status).toBe(200);
    expect(response.headers.get('content-type')).toContain('text/event-stream');
    expect(await response.text()).toBe(withoutUsage(readFixture('chat-basic.chunks.txt')));
    expect(fake.requestsFor('chat-basic').at(-1)!.body.stream_options).toEqual({ include_usage: true });

    await gateway.settled();
    expect(await usageEvent(response.headers.get('x-request-id'))).toMatchObject({ usage_source: 'provider', amount: '55' });
  });

  it('streaming with include_usage: byte for byte the upstream stream', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-unicode' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], stream: true, stream_options: { include_usage: true } }),
    });
    expect(Buffer.from(await response.arrayBuffer())).toEqual(Buffer.from(readFixture('chat-unicode.chunks.txt')));
    await gateway.settled();
  });

  it('streams tool calls and their arguments, and bills them', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-tool-calls' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);
    const tools = [{ type: 'function' as const, function: { name: 'get_weather', parameters: { type: 'object', properties: { location: { type: 'string' } } } } }];

    const stream = client.chat.completions.stream({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools });
    const final = await stream.finalChatCompletion();
    expect(final.choices[0]?.message.tool_calls?.[0]).toMatchObject({ function: { name: 'get_weather', arguments: '{"location":"Paris, France"}' } });
    expect(fake.requestsFor('chat-tool-calls').at(-1)!.body.tools).toEqual(tools);

    const plain = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Weather in Paris?' }], tools });
    expect(plain.choices[0]?.finish_reason).toBe('tool_calls');

    await gateway.settled();
    // 82 × 1 + 17 × 4 = 150 per request, twice.
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - 300, held: 0 });
  });
});

describe('what the provider says about the operator\'s account', () => {
  it('its organization, project and rate limits are not passed on; the rest of its headers are', async () => {
    const upstreamModel = `chat-basic-headers-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, {
      fixture: 'chat-basic',
      headers: {
        'openai-organization': 'org-operator', 'openai-project': 'proj_operator', 'anthropic-organization-id': 'operator-org',
        'x-ratelimit-limit-requests': '10000', 'x-ratelimit-remaining-tokens': '29999000', 'anthropic-ratelimit-requests-limit': '4000',
        'openai-processing-ms': '12',
      },
    });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    for (const stream of [false, true]) {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 10 }),
      });
      await response.text();
      expect(response.status).toBe(200);
      const names = [...response.headers.keys()];
      expect(names.filter((name) => /organization|project|ratelimit/.test(name))).toEqual([]);
      expect(response.headers.get('openai-processing-ms')).toBe('12');
    }
    await gateway.settled();
  });
});

describe('OpenAI-compatible upstreams that report no usage', () => {
  // vLLM, OpenRouter, Ollama and Groq send reasoning text as `reasoning` (OpenAI-compatible servers of another kind as `reasoning_content`).
  const reasoning = ['The user asks', ' for the capital', ' of France.', ' That is Paris', ', no doubt about it.'];

  it('streaming: reasoning text sent as delta.reasoning is delivered output, counted by the tokenizer', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-compat-reasoning' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Capital of France?' }], stream: true }),
    });
    expect(await response.text()).toBe(readFixture('chat-compat-reasoning.chunks.txt'));
    await gateway.settled();
    expect(await usageEvent(response.headers.get('x-request-id'))).toMatchObject({
      status: 'completed', usage_source: 'tokenizer', output_tokens: String(await countTokens([...reasoning, 'Paris', '.'])),
    });
  });

  it('non-streaming: reasoning text sent as message.reasoning is delivered output, counted by the tokenizer', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-compat-reasoning' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const { response } = await gateway.openai(customer.apiKey).chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Capital of France?' }] })
      .withResponse();
    await gateway.settled();
    expect(await usageEvent(response.headers.get('x-request-id'))).toMatchObject({
      status: 'completed', usage_source: 'tokenizer', output_tokens: String(await countTokens(['Paris.', reasoning.join('')])),
    });
  });
});

describe('client aborts', () => {
  it('mid-stream: the upstream call is aborted, prompt + delivered output are billed by the tokenizer, the rest released', async () => {
    const upstreamModel = `long-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', eventDelayMs: 40 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);

    const { data: stream, response } = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Count to eighty.' }], stream: true, max_tokens: 500 })
      .withResponse();
    const received: string[] = [];
    for await (const chunk of stream) {
      const text = chunk.choices[0]?.delta.content;
      if (text) received.push(text);
      if (received.length === 5) break; // leaving the loop aborts the request
    }
    await gateway.settled();
    await expect.poll(() => fake.requestsFor(upstreamModel)[0]?.clientClosed, { timeout: 5000 }).toBe(true);
    const upstream = fake.requestsFor(upstreamModel)[0]!;
    expect(upstream.eventsSent).toBeLessThan(30);

    const event = await usageEvent(response.headers.get('x-request-id'));
    expect(event).toMatchObject({ status: 'aborted', usage_source: 'tokenizer' });
    // The output billed is what reached the gateway: at least what the client read, at most what the upstream sent.
    const encoding = getEncoding('cl100k_base');
    const words = Array.from({ length: 80 }, (_, index) => ` word${index + 1}`);
    const tokensOf = (count: number) => encoding.encode(words.slice(0, count).join('')).length;
    const output = Number(event.output_tokens);
    expect(output).toBeGreaterThanOrEqual(tokensOf(5));
    expect(output).toBeLessThanOrEqual(tokensOf(upstream.eventsSent));
    // Prompt: role + content tokens, 3 per message, 3 to prime the reply.
    expect(Number(event.input_tokens)).toBe(encoding.encode('user').length + encoding.encode('Count to eighty.').length + 3 + 3);
    const expectedCharge = Math.ceil((Number(event.input_tokens) * 1_000_000 + output * 4_000_000) / 1_000_000);
    expect(Number(event.charged)).toBe(expectedCharge);
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - expectedCharge, held: 0 });
  });

  it('before any output and with no usage: nothing is charged', async () => {
    const upstreamModel = `slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', headerDelayMs: 300 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const controller = new AbortController();
    const pending = fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      signal: controller.signal,
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Count to eighty.' }], stream: true }),
    });
    await expect.poll(() => fake.requestsFor(upstreamModel).length).toBe(1);
    controller.abort();
    await expect(pending).rejects.toThrow();
    await expect.poll(async () => (await balanceOf(customer.accountId)).held, { timeout: 5000 }).toBe(0);
    await gateway.settled();
    const { rows } = await admin().query('select status, charged from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([{ status: 'aborted', charged: '0' }]);
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000, held: 0 });
  });
});

describe('upstream failures', () => {
  it('an error event mid-stream reaches the client; the delivered output is billed as failed', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-midstream-error' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Tell a story' }], stream: true }),
    });
    const text = await response.text();
    expect(text).toContain('"type":"server_error"');
    await gateway.settled();
    const event = await usageEvent(response.headers.get('x-request-id'));
    const encoding = getEncoding('cl100k_base');
    expect(event).toMatchObject({ status: 'failed', usage_source: 'tokenizer', output_tokens: String(encoding.encode('Once upon a time').length) });
  });

  it('the upstream dying mid-stream ends the client\'s stream with an error event; delivered output is billed as failed', async () => {
    const upstreamModel = `dies-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', disconnectAfterEvents: 4, eventDelayMs: 20 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);
    const { data: stream, response } = await client.chat.completions
      .create({ model, messages: [{ role: 'user', content: 'Count' }], stream: true })
      .withResponse();
    const received: string[] = [];
    await expect(async () => {
      for await (const chunk of stream) received.push(chunk.choices[0]?.delta.content ?? '');
    }).rejects.toThrow(/broke off before the answer was complete/);
    await gateway.settled();
    const event = await usageEvent(response.headers.get('x-request-id'));
    const encoding = getEncoding('cl100k_base');
    expect(event).toMatchObject({ status: 'failed', usage_source: 'tokenizer', output_tokens: String(encoding.encode(' word1 word2 word3').length) });
    expect((await balanceOf(customer.accountId)).held).toBe(0);
  });
});

describe('channels and failover', () => {
  let failover: Gateway;
  let deadPort: number;

  beforeAll(async () => {
    const probe = await startFakeUpstream();
    deadPort = Number(new URL(probe.url).port);
    await probe.close();
  });

  afterAll(async () => {
    await failover?.close();
  });

  it('connection refused, then HTTP 500, then a working channel: served by the third, charged once', async () => {
    const broken = await startFakeUpstream();
    broken.scenarios.set('chat-basic', { fixture: 'chat-basic', status: 500 });
    failover = await startGateway({
      OPENAI_BASE_URL: `http://127.0.0.1:${deadPort}/v1`,
      UPSTREAM_CHANNELS: JSON.stringify([
        { provider: 'openai', kind: 'openai', baseUrl: `${broken.url}/v1`, priority: -1 },
        { provider: 'openai', kind: 'openai', baseUrl: `${fake.url}/v1`, priority: -2 },
      ]),
    });
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const before = fake.requestsFor('chat-basic').length;

    const completion = await failover.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }] });
    expect(completion.choices[0]?.message.content).toBe('Hello! How can I help you today?');
    expect(broken.requestsFor('chat-basic')).toHaveLength(1);
    expect(fake.requestsFor('chat-basic').length).toBe(before + 1);

    const stream = await failover.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Say hello' }], stream: true });
    let text = '';
    for await (const chunk of stream) text += chunk.choices[0]?.delta.content ?? '';
    expect(text).toBe('Hello! How can I help you today?');

    await failover.settled();
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - 55 * 2, held: 0 });
    await broken.close();
  });

  it('all channels down: 502 in OpenAI\'s shape, hold released, nothing charged', async () => {
    const down = await startGateway({ OPENAI_BASE_URL: `http://127.0.0.1:${deadPort}/v1` });
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    for (const stream of [false, true]) {
      const response = await fetch(`${down.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], stream }),
      });
      expect(response.status).toBe(502);
      expect(await response.json()).toMatchObject({ error: { code: 'upstream_unavailable', type: 'api_error', param: null } });
    }
    await down.settled();
    const { rows } = await admin().query('select status, charged from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([{ status: 'failed', charged: '0' }, { status: 'failed', charged: '0' }]);
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000, held: 0 });
    await down.close();
  });
});

describe('slow upstreams', () => {
  it('answers with headers and an SSE comment at once when the upstream is slow, then streams', async () => {
    const slow = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, STREAM_HEADER_WAIT_MS: '50', STREAM_HEARTBEAT_MS: '100' });
    const upstreamModel = `thinking-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-basic', headerDelayMs: 450 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });

    const started = performance.now();
    const response = await fetch(`${slow.url}/v1/chat/completions`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Think hard' }], stream: true }),
    });
    expect(performance.now() - started).toBeLessThan(400);
    const text = await response.text();
    expect(text.startsWith(': waiting for the upstream\n\n: keep-alive\n\n')).toBe(true);
    expect(text.replace(/^(: [^\n]*\n\n)+/, '')).toBe(withoutUsage(readFixture('chat-basic.chunks.txt')));

    // And the official SDK ignores the comments.
    const stream = await slow.openai(customer.apiKey).chat.completions.create({ model, messages: [{ role: 'user', content: 'Think' }], stream: true });
    let content = '';
    for await (const chunk of stream) content += chunk.choices[0]?.delta.content ?? '';
    expect(content).toBe('Hello! How can I help you today?');
    await slow.settled();
    expect(await balanceOf(customer.accountId)).toEqual({ balance: 1_000_000 - 110, held: 0 });
    await slow.close();
  });
});

describe('what the stream splitting preserves', () => {
  it('keeps each fixture event intact', () => {
    expect(splitEvents(readFixture('chat-basic.chunks.txt')).join('')).toBe(readFixture('chat-basic.chunks.txt'));
  });
});

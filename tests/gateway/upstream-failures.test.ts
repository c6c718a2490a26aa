import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { freePort } from '../../scripts/local-supabase/index.ts';
import { splitEvents, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// What the upstream does wrong reaches the customer in their API's shape, and
// never names the operator's channels, hosts or keys; the log has them.

let fake: FakeUpstream;
let gateway: Gateway;
const price = { input: 1_000_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url, OPENAI_API_KEY: 'sk-operator-secret' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

/** A chat completion sent to `gateway` with `apiKey`. */
const postChat = (gateway: Gateway, apiKey: string, body: Record<string, unknown>, signal?: AbortSignal) =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify(body),
    ...(signal ? { signal } : {}),
  });

async function eventOf(requestId: string | null) {
  const { rows: [event] } = await admin().query('select status, usage_source, charged::int from public.usage_events where request_id = $1', [requestId]);
  return event;
}

describe('a stream that breaks off mid-way ends with an error in the caller\'s format', () => {
  const cases = [
    {
      name: 'Anthropic: event: error',
      provider: 'anthropic', fixture: 'messages-long',
      request: (model: string, apiKey: string) => fetch(`${gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model, max_tokens: 500, messages: [{ role: 'user', content: 'Count' }], stream: true }),
      }),
      last: /^event: error\ndata: \{"type":"error","error":\{"type":"api_error","message":"The upstream connection broke off before the answer was complete."\}\}\n\n$/,
    },
    {
      name: 'Gemini: an error object',
      provider: 'google', fixture: 'generate-long',
      request: (model: string, apiKey: string) => fetch(`${gateway.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
        method: 'POST',
        headers: { 'x-goog-api-key': apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ contents: [{ parts: [{ text: 'Count' }] }] }),
      }),
      last: /^data: \{"error":\{"code":502,"message":"The upstream connection broke off before the answer was complete.","status":"UNAVAILABLE"\}\}\r\n\r\n$/,
    },
    {
      name: 'OpenAI: an error chunk',
      provider: 'openai', fixture: 'chat-long',
      request: (model: string, apiKey: string) => fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Count' }], stream: true }),
      }),
      last: /^data: \{"error":\{"message":"The upstream connection broke off before the answer was complete.","type":"api_error","code":"upstream_unavailable","param":null\}\}\n\n$/,
    },
  ];

  it.each(cases)('$name', async ({ provider, fixture, request, last }) => {
    const upstreamModel = `cut-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture, disconnectAfterEvents: 6, eventDelayMs: 10 });
    const model = await createModel(price, { provider, upstreamModel, maxOutputTokens: 8192 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await request(model, customer.apiKey);
    expect(response.status).toBe(200);
    const text = await response.text();
    const events = splitEvents(text);
    expect(events.at(-1)).toMatch(last);
    await gateway.settled();
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({ status: 'failed', usage_source: 'tokenizer' });
  });
});

describe('channels that do not answer', () => {
  it('every channel answering 429: 429 upstream_rate_limited with the upstream\'s Retry-After, nothing charged', async () => {
    const upstreamModel = `limited-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-basic', status: 429, retryAfter: '7' });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    for (const stream of [false, true]) {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], stream }),
      });
      expect(response.status).toBe(429);
      expect(response.headers.get('retry-after')).toBe('7');
      expect(await response.json()).toMatchObject({ error: { code: 'upstream_rate_limited', type: 'rate_limit_error' } });
    }
    const messages = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model: await createModel(price, { provider: 'anthropic', upstreamModel }), max_tokens: 10, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    expect(messages.status).toBe(429);
    expect(await messages.json()).toMatchObject({ type: 'error', error: { type: 'rate_limit_error', code: 'upstream_rate_limited' } });
    await gateway.settled();
    const { rows } = await admin().query('select charged::int from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows.every((row) => row.charged === 0)).toBe(true);
  });

  it('errors name no channel, host or key: a refused key and a dead host answer 502, and only the log says which', async () => {
    const deadPort = await freePort();
    const upstreamModel = `refused-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-basic', status: 401 });
    const channels = await startGateway({
      OPENAI_BASE_URL: `${fake.url}/v1`,
      OPENAI_API_KEY: 'sk-operator-secret',
      UPSTREAM_CHANNELS: JSON.stringify([{ provider: 'openai', kind: 'openai', baseUrl: `http://127.0.0.1:${deadPort}/v1`, apiKey: 'sk-backup-secret', priority: -1 }]),
    });
    try {
      const model = await createModel(price, { upstreamModel });
      const customer = await createCustomer({ balance: 1_000_000 });
      const response = await fetch(`${channels.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      expect(response.status).toBe(502);
      const text = await response.text();
      expect(JSON.parse(text)).toMatchObject({ error: { code: 'upstream_unavailable' } });
      for (const secret of [new URL(fake.url).host, String(deadPort), '127.0.0.1', 'sk-operator', 'sk-backup', 'Scripted failure']) expect(text).not.toContain(secret);
      await channels.settled();
      // What the customer may read of the request says no more.
      const { rows: [event] } = await admin().query('select error from public.usage_events where account_id = $1', [customer.accountId]);
      expect(event.error).not.toMatch(/127\.0\.0\.1|localhost/);
      const logged = JSON.stringify(channels.logs.filter((entry) => entry.event === 'upstream_channels_failed'));
      expect(logged).toContain(new URL(fake.url).host);
      expect(logged).toContain(String(deadPort));
      expect(logged).toContain('HTTP 401');
    } finally {
      await channels.close();
    }
  });
});

describe('keys in URLs and logs', () => {
  it('?key= is taken only on the Gemini routes, and no key ever reaches the log', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const gemini = await createModel(price, { provider: 'google', upstreamModel: 'generate-function-call', maxOutputTokens: 8192 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const inUrl = await fetch(`${gateway.url}/v1/chat/completions?key=${customer.apiKey}`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }] }),
    });
    expect(inUrl.status).toBe(401);
    expect(await inUrl.json()).toMatchObject({ error: { code: 'missing_api_key', message: expect.stringContaining('only on the Gemini routes') } });
    for (const path of ['/v1/credits', '/v1/models']) expect((await fetch(`${gateway.url}${path}?key=${customer.apiKey}`)).status).toBe(401);

    const viaGemini = await fetch(`${gateway.url}/v1beta/models/${gemini}:generateContent?key=${customer.apiKey}`, {
      method: 'POST', headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'Weather in Paris?' }] }] }),
    });
    expect(viaGemini.status).toBe(200);
    // A few failures too, which log.
    await fetch(`${gateway.url}/v1/chat/completions`, {
      method: 'POST', headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' }, body: '{"model":',
    });
    await gateway.settled();
    const log = JSON.stringify(gateway.logs);
    expect(log).not.toContain(customer.apiKey);
    expect(log).not.toContain(customer.apiKey.slice(3, 20));
  });
});

describe('error text PostgreSQL cannot store as such', () => {
  it('an upstream error message with a NUL in it: the request is settled (failed, its usage charged), not left held', async () => {
    const chunk = (body: unknown) => `data: ${JSON.stringify(body)}\n\n`;
    const stream = [
      chunk({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [{ index: 0, delta: { role: 'assistant', content: 'Hello there' }, finish_reason: null }] }),
      chunk({ error: { message: 'upstream said \u0000 something', type: 'server_error' } }),
      chunk({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'm', choices: [], usage: { prompt_tokens: 40, completion_tokens: 20, total_tokens: 60 } }),
      'data: [DONE]\n\n',
    ].join('');
    const nul = await startGateway({ OPENAI_BASE_URL: 'http://upstream.invalid/v1' }, {
      upstreamFetch: async () => new Response(stream, { status: 200, headers: { 'content-type': 'text/event-stream' } }),
    });
    try {
      const model = await createModel(price);
      const customer = await createCustomer({ balance: 1_000_000 });
      const response = await postChat(nul, customer.apiKey, { model, messages: [{ role: 'user', content: 'hi' }], stream: true });
      await response.text();
      await nul.settled();
      // 40 input × 1 + 20 output × 4 = 120.
      expect(await eventOf(response.headers.get('x-request-id'))).toEqual({ status: 'failed', usage_source: 'provider', charged: 120 });
      expect(nul.logs.filter((entry) => /settlement_(refused|queued|unrecorded)/.test(String(entry.event)))).toEqual([]);
    } finally {
      await nul.close();
    }
  });
});

describe('an answer that runs past REQUEST_MAX_MS (set below the platform\'s own limit, which would kill the function unsettled)', () => {
  let limited: Gateway;
  beforeAll(async () => {
    limited = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url, REQUEST_MAX_MS: '400' });
  });
  afterAll(async () => {
    await limited.close();
  });

  it('a stream is ended with an error event in its API\'s shape, the upstream call aborted, what was delivered billed', async () => {
    const upstreamModel = `chat-long-slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-long', eventDelayMs: 50 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await postChat(limited, customer.apiKey, { model, messages: [{ role: 'user', content: 'Count' }], stream: true });
    const text = await response.text();
    expect(text).toMatch(/data: \{"error":\{"message":"The answer did not finish within this gateway's limit of 400 ms; what was delivered is billed\.","type":"api_error","code":"upstream_timeout"/);
    expect(text).toContain('"content"');
    await limited.settled();
    const event = await eventOf(response.headers.get('x-request-id'));
    expect(event).toMatchObject({ status: 'failed', usage_source: 'tokenizer' });
    expect(event.charged).toBeGreaterThan(0);
    expect(fake.requests.find((request) => request.model === upstreamModel)?.clientClosed).toBe(true);
  });

  it.each([
    ['Anthropic', 'anthropic', 'messages-long', /^event: error\ndata: \{"type":"error","error":\{"type":"timeout_error","message":"The answer did not finish within this gateway's limit of 400 ms; what was delivered is billed\."\}\}/],
    ['Gemini', 'google', 'generate-long', /^data: \{"error":\{"code":504,"message":"The answer did not finish within this gateway's limit of 400 ms; what was delivered is billed\.","status":"DEADLINE_EXCEEDED"\}\}/],
  ])('%s: the error event names the timeout as the API does (timeout_error, DEADLINE_EXCEEDED)', async (_name, provider, fixture, expected) => {
    const upstreamModel = `${fixture}-slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture, eventDelayMs: 60 });
    const model = await createModel(price, { provider, upstreamModel, maxOutputTokens: 8192 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = provider === 'anthropic'
      ? await fetch(`${limited.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model, max_tokens: 500, messages: [{ role: 'user', content: 'Count' }], stream: true }),
      })
      : await fetch(`${limited.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
        method: 'POST',
        headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ contents: [{ parts: [{ text: 'Count' }] }] }),
      });
    expect(splitEvents(await response.text()).at(-1)).toMatch(expected);
    await limited.settled();
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({ status: 'failed' });
  });

  it.each([false, true])('an upstream error answer whose body never ends (stream: %s) is given up too, its hold released', async (stream) => {
    const encoder = new TextEncoder();
    const stalled = await startGateway({ OPENAI_BASE_URL: 'http://upstream.invalid/v1', REQUEST_MAX_MS: '400' }, {
      upstreamFetch: async (_input, init) => new Response(new ReadableStream<Uint8Array>({
        start(controller) {
          controller.enqueue(encoder.encode('{"error":{"message":"Scripted'));
          init?.signal?.addEventListener('abort', () => controller.error(new DOMException('aborted', 'AbortError')), { once: true });
        },
      }), { status: 400, headers: { 'content-type': 'application/json' } }),
    });
    try {
      const model = await createModel(price);
      const customer = await createCustomer({ balance: 1_000_000 });
      const response = await postChat(stalled, customer.apiKey, { model, messages: [{ role: 'user', content: 'Hi' }], stream }, AbortSignal.timeout(4_000));
      expect([response.status, ((await response.json()) as { error: { code: string } }).error.code]).toEqual([504, 'upstream_timeout']);
      await stalled.settled();
      const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [customer.accountId]);
      expect(account).toEqual({ balance: 1_000_000, held: 0 });
    } finally {
      await stalled.close();
    }
  });

  it('a non-streamed call is given up: 504 upstream_timeout, the hold released, nothing charged', async () => {
    const upstreamModel = `chat-basic-slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'chat-basic', headerDelayMs: 2_000 });
    const model = await createModel(price, { upstreamModel });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await postChat(limited, customer.apiKey, { model, messages: [{ role: 'user', content: 'Hi' }] });
    expect(response.status).toBe(504);
    expect(await response.json()).toMatchObject({ error: { code: 'upstream_timeout', message: expect.stringContaining('nothing was charged') } });
    await limited.settled();
    expect(await eventOf(response.headers.get('x-request-id'))).toEqual({ status: 'failed', usage_source: null, charged: 0 });
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: 1_000_000, held: 0 });
  });
});

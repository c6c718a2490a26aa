import Anthropic from '@anthropic-ai/sdk';
import { getEncoding } from 'js-tiktoken';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countTokens } from '../../lib/metering/count-tokens.ts';
import { pdfPageTokenBound, remoteContentTokenBound } from '../../lib/metering/prompt-pieces.ts';
import { readFixture, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { buildPdf } from '../support/pdf.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;

// Claude Sonnet-like prices, micro-USD per 1M tokens; thinking priced apart to show its bucket.
const price = { input: 3_000_000, cached_input: 300_000, cache_write: 3_750_000, cache_write_1h: 6_000_000, output: 15_000_000, reasoning: 10_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ ANTHROPIC_BASE_URL: fake.url, ANTHROPIC_API_KEY: 'sk-ant-upstream' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const anthropic = (apiKey: string) => new Anthropic({ apiKey, baseURL: gateway.url, maxRetries: 0 });

async function eventOf(requestId: string | null) {
  const { rows } = await admin().query('select * from public.usage_events where request_id = $1', [requestId]);
  return rows[0];
}

async function claude(upstreamModel: string) {
  return createModel(price, { provider: 'anthropic', upstreamModel, maxOutputTokens: 64_000 });
}

describe('POST /v1/messages with @anthropic-ai/sdk', () => {
  it('non-streaming: cache reads and 5-minute and 1-hour cache writes each at their own price', async () => {
    const model = await claude('messages-cache');
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: message, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1024, system: 'Be brief.', messages: [{ role: 'user', content: 'Hi' }] })
      .withResponse();
    expect(message).toEqual(JSON.parse(readFixture('messages-cache.json', 'anthropic')));
    const upstream = fake.requestsFor('messages-cache').at(-1)!;
    expect(upstream.headers['x-api-key']).toBe('sk-ant-upstream');
    // The client's API version is forwarded as sent.
    expect(upstream.headers['anthropic-version']).toMatch(/^\d{4}-\d{2}-\d{2}$/);
    await gateway.settled();
    // 25 × 3 + 3000 × 0.3 + 1000 × 3.75 + 200 × 6 + 14 × 15 = 75 + 900 + 3750 + 1200 + 210
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({
      input_tokens: '25', cached_input_tokens: '3000', cache_write_tokens: '1000', cache_write_1h_tokens: '200', output_tokens: '14',
      amount: '6135', usage_source: 'provider',
    });
  });

  it('streaming: forwarded event for event; message_delta\'s cumulative usage is assigned, not added', async () => {
    const model = await claude('messages-cache');
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: stream, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }], stream: true })
      .withResponse();
    let text = '';
    for await (const event of stream) if (event.type === 'content_block_delta' && event.delta.type === 'text_delta') text += event.delta.text;
    expect(text).toBe('Hello! The cached context says hi.');
    await gateway.settled();
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({
      input_tokens: '25', cached_input_tokens: '3000', cache_write_tokens: '1000', cache_write_1h_tokens: '200', output_tokens: '14', amount: '6135',
    });

    const raw = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'anthropic-version': '2023-06-01', 'content-type': 'application/json' },
      body: JSON.stringify({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }], stream: true }),
    });
    expect(await raw.text()).toBe(readFixture('messages-cache.chunks.txt', 'anthropic'));
    await gateway.settled();
  });

  it('thinking tokens go to the reasoning bucket, out of the output', async () => {
    const model = await claude('messages-thinking');
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = anthropic(customer.apiKey).messages.stream({
      model, max_tokens: 2048, thinking: { type: 'enabled', budget_tokens: 1024 }, messages: [{ role: 'user', content: '27 + 15?' }],
    });
    const final = await stream.finalMessage();
    expect(final.content.map((block) => block.type)).toEqual(['thinking', 'text']);
    await gateway.settled();
    const { rows: [event] } = await admin().query('select * from public.usage_events where account_id = $1', [customer.accountId]);
    // 40 × 3 + (310 − 290) × 15 + 290 × 10 = 120 + 300 + 2900
    expect(event).toMatchObject({ input_tokens: '40', output_tokens: '20', reasoning_tokens: '290', amount: '3320' });
  });

  it('tool use, streamed and not', async () => {
    const model = await claude('messages-tool-use');
    const customer = await createCustomer({ balance: 1_000_000 });
    const tools = [{ name: 'get_weather', description: 'Weather for a place', input_schema: { type: 'object' as const, properties: { location: { type: 'string' } } } }];
    const client = anthropic(customer.apiKey);
    const streamed = await client.messages.stream({ model, max_tokens: 1024, tools, messages: [{ role: 'user', content: 'Weather in Paris?' }] }).finalMessage();
    expect(streamed.content[1]).toMatchObject({ type: 'tool_use', name: 'get_weather', input: { location: 'Paris, France' } });
    const plain = await client.messages.create({ model, max_tokens: 1024, tools, messages: [{ role: 'user', content: 'Weather in Paris?' }] });
    expect(plain.stop_reason).toBe('tool_use');
    expect(fake.requestsFor('messages-tool-use').at(-1)!.body.tools).toEqual(tools);
    await gateway.settled();
    // 410 × 3 + 68 × 15 = 1230 + 1020, twice
    const { rows } = await admin().query('select amount from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([{ amount: '2250' }, { amount: '2250' }]);
  });

  it('a request with tools holds the system prompt Anthropic adds for them: the input bound covers the input Anthropic bills', async () => {
    const model = await claude('messages-tool-use');
    const customer = await createCustomer({ balance: 1_000_000 });
    const tools = [{ name: 'get_weather', input_schema: { type: 'object' as const } }];
    const { response } = await anthropic(customer.apiKey).messages
      .create({ model, max_tokens: 100, tools, messages: [{ role: 'user', content: 'Weather in Paris?' }] })
      .withResponse();
    await gateway.settled();
    const event = await eventOf(response.headers.get('x-request-id'));
    // Anthropic billed 410 input tokens for a prompt of a few dozen bytes and one tool.
    expect(Number(event.input_tokens)).toBe(410);
    expect(Number(event.max_input_tokens)).toBeGreaterThanOrEqual(410);
    expect(Number(event.amount)).toBeLessThanOrEqual(Number(event.hold));
  });

  it('client abort: the input Anthropic reported plus the delivered output, hold released', async () => {
    const upstreamModel = `claude-long-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-long', eventDelayMs: 40 });
    const model = await claude(upstreamModel);
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: stream, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1000, messages: [{ role: 'user', content: 'Count' }], stream: true })
      .withResponse();
    let deltas = 0;
    for await (const event of stream) {
      if (event.type === 'content_block_delta') deltas += 1;
      if (deltas === 5) break;
    }
    await expect.poll(() => fake.requestsFor(upstreamModel)[0]?.clientClosed, { timeout: 5000 }).toBe(true);
    await gateway.settled();
    const event = await eventOf(response.headers.get('x-request-id'));
    const encoding = getEncoding('cl100k_base');
    const words = Array.from({ length: 80 }, (_, index) => ` word${index + 1}`);
    expect(event).toMatchObject({ status: 'aborted', usage_source: 'tokenizer', input_tokens: '30' });
    expect(Number(event.output_tokens)).toBeGreaterThanOrEqual(encoding.encode(words.slice(0, 5).join('')).length);
    expect(Number(event.output_tokens)).toBeLessThan(encoding.encode(words.join('')).length);
    const { rows: [account] } = await admin().query('select held from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe('0');
  });

  it('client abort before any output: the input Anthropic already reported is charged, nothing more', async () => {
    const upstreamModel = `claude-slow-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-long', eventDelayMs: 400 });
    const model = await claude(upstreamModel);
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: stream, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1000, messages: [{ role: 'user', content: 'Count' }], stream: true })
      .withResponse();
    for await (const event of stream) if (event.type === 'message_start') break;
    await expect.poll(() => fake.requestsFor(upstreamModel)[0]?.clientClosed, { timeout: 5000 }).toBe(true);
    await gateway.settled();
    // 30 input tokens × 3 = 90; no output reached the gateway.
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({
      status: 'aborted', usage_source: 'provider', input_tokens: '30', output_tokens: '0', charged: '90',
    });
  });

  it('refuses what is billed beyond token prices: server tools', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const model = await claude('messages-cache');
    const send = (body: object, headers: Record<string, string> = {}) =>
      fetch(`${gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json', ...headers },
        body: JSON.stringify({ model, max_tokens: 10, messages: [{ role: 'user', content: 'x' }], ...body }),
      });
    const code = await send({ tools: [{ type: 'code_execution_20250825', name: 'code_execution' }] });
    expect(code.status).toBe(400);
    expect(await code.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'unsupported_parameter' } });
    // Web search is priced per search; this model has no such price.
    const search = await send({ tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 5 }] });
    expect(search.status).toBe(400);
    expect(await search.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'tool_not_priced' } });
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(0);
  });

  it('refuses options Anthropic bills at other rates than the model\'s (fast mode, one geography, other models answering) and server-held threads, sent through the SDK; their defaults pass as sent', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const model = await claude('messages-cache');
    const client = anthropic(customer.apiKey);
    const messages = [{ role: 'user' as const, content: 'Hi' }];
    const sent = fake.requestsFor('messages-cache').length;
    const refusals: Array<[string, () => Promise<unknown>, string]> = [
      ['fast mode', () => client.messages.create({ model, max_tokens: 10, messages, speed: 'fast' }), 'speed'],
      ['fast mode, on the beta route', () => client.beta.messages.create({ model, max_tokens: 10, messages, speed: 'fast', betas: ['fast-mode-2026-02-01'] }), 'speed'],
      ['US-only inference', () => client.messages.create({ model, max_tokens: 10, messages, inference_geo: 'us' }), 'inference_geo'],
      ['server-side fallback to a named model', () => client.beta.messages.create({ model, max_tokens: 10, messages, fallbacks: [{ model: 'claude-fable-5-1' }] }), 'fallback'],
      ['server-side fallback to the default ones', () => client.beta.messages.create({ model, max_tokens: 10, messages, fallbacks: 'default' }), 'fallback'],
      ['an advisor model', () => client.beta.messages.create({ model, max_tokens: 10, messages, tools: [{ type: 'advisor_20260301', name: 'advisor', model: 'claude-opus-5-5' }] }), 'advisor_20260301'],
      // Threads held by Anthropic under the operator's one key: any account could continue another's.
      ['a server-held thread begun', () => client.beta.messages.create({ model, max_tokens: 10, messages, thread: { type: 'create' }, betas: ['message-threads-2026-08-12'] }), 'thread'],
      ['a server-held thread continued', () => client.beta.messages.create({ model, max_tokens: 10, messages, thread: { type: 'continue', previous_message_id: 'msg_01' } }), 'thread'],
    ];
    for (const [what, send, named] of refusals) {
      const error = await send().then(() => null, (caught: unknown) => caught);
      expect(error, what).toBeInstanceOf(Anthropic.BadRequestError);
      const { error: body } = (error as InstanceType<typeof Anthropic.BadRequestError>).error as { error: { type: string; code: string; message: string } };
      expect(body, what).toMatchObject({ type: 'invalid_request_error', code: 'unsupported_parameter', message: expect.stringMatching(new RegExp(`${named}.* is not available through this gateway`)) });
    }
    expect(fake.requestsFor('messages-cache').length).toBe(sent);
    await gateway.settled();
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(0);

    // The defaults, said out loud, are what is billed: forwarded untouched.
    await client.beta.messages.create({ model, max_tokens: 10, messages, speed: 'standard', inference_geo: 'global', fallbacks: [] });
    expect(fake.requestsFor('messages-cache').at(-1)!.body).toMatchObject({ speed: 'standard', inference_geo: 'global', fallbacks: [] });
    await client.messages.create({ model, max_tokens: 10, messages, speed: null, inference_geo: null });
    expect(fake.requestsFor('messages-cache').at(-1)!.body).toMatchObject({ speed: null, inference_geo: null });
  });

  it('a request the usage says ran above the standard rates (a workspace whose default geography is the US) is billed as any, and the log says so, streamed and not, native and translated', async () => {
    const model = await claude('messages-us-geo');
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = anthropic(customer.apiKey);
    const plain = await client.messages.create({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }] }).withResponse();
    const streamed = await client.messages.stream({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }] });
    await streamed.finalMessage();
    await gateway.settled();
    const reported = gateway.logs.filter((entry) => entry.event === 'upstream_above_standard_rates' && entry.model === model);
    expect(reported).toEqual([
      expect.objectContaining({ level: 'warn', requestId: plain.response.headers.get('x-request-id'), reported: ['inference_geo us'] }),
      expect.objectContaining({ level: 'warn', reported: ['inference_geo us'] }),
    ]);
    // Billed at the model's prices, as any request: 6135, as messages-cache.
    const { rows } = await admin().query('select amount::int from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([{ amount: 6135 }, { amount: 6135 }]);
    // The same answer reached through the Chat Completions and Responses translations, streamed and not.
    const openai = gateway.openai(customer.apiKey);
    await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1024 });
    for await (const _chunk of await openai.chat.completions.create({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1024, stream: true })) void _chunk;
    await openai.responses.create({ model, input: 'Hi', max_output_tokens: 1024 });
    for await (const _event of await openai.responses.create({ model, input: 'Hi', max_output_tokens: 1024, stream: true })) void _event;
    await gateway.settled();
    expect(gateway.logs.filter((entry) => entry.event === 'upstream_above_standard_rates' && entry.model === model)).toHaveLength(6);
    // An ordinary answer says nothing of the kind.
    const ordinary = await claude('messages-cache');
    await client.messages.create({ model: ordinary, max_tokens: 1024, messages: [{ role: 'user', content: 'Hi' }] });
    await gateway.settled();
    expect(gateway.logs.filter((entry) => entry.event === 'upstream_above_standard_rates' && entry.model === ordinary)).toEqual([]);
  });

  it('server tools that add input are held for it: web fetch at max_uses × max_content_tokens, each search at 10,000 result tokens; an unbounded web fetch and the MCP connector are refused', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const model = await createModel({ ...price, web_search: 10_000 }, { provider: 'anthropic', upstreamModel: 'messages-cache', maxOutputTokens: 64_000 });
    const send = (body: object) =>
      fetch(`${gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model, max_tokens: 10, messages: [{ role: 'user', content: 'x' }], ...body }),
      });
    const held = async (body: object) => {
      const response = await send(body);
      expect(response.status).toBe(200);
      await response.text();
      await gateway.settled();
      const { rows: [event] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
      return event.max_input_tokens as number;
    };
    // The request's own bound (its text and tool definitions) is a few hundred tokens on top.
    const between = (low: number) => ({ low, high: low + 1_000 });
    const within = (tokens: number, low: number) => ({ low, high: tokens < low + 1_000 ? low + 1_000 : tokens });
    const fetchTool = { type: 'web_fetch_20250910', name: 'web_fetch', max_uses: 2 };
    expect(within(await held({ tools: [{ ...fetchTool, max_content_tokens: 50_000 }] }), 2 * 50_000)).toEqual(between(2 * 50_000));
    // Without max_content_tokens a fetch is content of unknown size (a PDF can fill the context window).
    expect(within(await held({ tools: [fetchTool] }), 2 * remoteContentTokenBound)).toEqual(between(2 * remoteContentTokenBound));
    expect(within(await held({ tools: [{ type: 'web_search_20250305', name: 'web_search', max_uses: 3 }] }), 3 * 10_000)).toEqual(between(3 * 10_000));
    expect(within(await held({ tools: [{ type: 'web_search_20250305', name: 'web_search' }] }), 10 * 10_000)).toEqual(between(10 * 10_000));

    const before = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    const refusals = [
      [{ tools: [{ type: 'web_fetch_20250910', name: 'web_fetch' }] }, 'without max_uses'],
      [{ tools: [{ type: 'web_fetch_20250910', name: 'web_fetch', max_uses: 0, max_content_tokens: 1000 }] }, 'without max_uses'],
      [{ mcp_servers: [{ type: 'url', url: 'https://mcp.example.test/sse', name: 'example' }] }, 'The MCP connector'],
      [{ tools: [{ type: 'mcp_toolset', mcp_server_name: 'example' }] }, 'The MCP connector'],
    ] as const;
    for (const [body, message] of refusals) {
      const response = await send(body);
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'unsupported_parameter', message: expect.stringContaining(message) } });
    }
    // A bound beyond any balance is refused as any such hold is, never a 500.
    for (const [max_uses, max_content_tokens] of [[1e6, 1e9], [1e12, 1e300], [1e300, 1]]) {
      const response = await send({ tools: [{ ...fetchTool, max_uses, max_content_tokens }, { type: 'web_search_20250305', name: 'web_search', max_uses }] });
      expect([response.status, ((await response.json()) as { error: { type: string } }).error.type]).toEqual([402, 'billing_error']);
    }
    const after = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(after.rows[0].n).toBe(before.rows[0].n);
  });

  it("Anthropic's own client tools are held at the input their definitions are billed as, which the request's bytes do not show", async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const model = await claude('messages-cache');
    const held = async (tools: object[]) => {
      const response = await fetch(`${gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json', 'anthropic-beta': 'computer-use-2025-01-24' },
        body: JSON.stringify({ model, max_tokens: 10, messages: [{ role: 'user', content: 'x' }], tools }),
      });
      expect(response.status).toBe(200);
      await response.text();
      await gateway.settled();
      const { rows: [event] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
      return event.max_input_tokens as number;
    };
    const computer = { type: 'computer_20250124', name: 'computer', display_width_px: 1024, display_height_px: 768 };
    const editor = { type: 'text_editor_20250124', name: 'str_replace_editor' };
    const bash = { type: 'bash_20250124', name: 'bash' };
    const custom = { name: 'lookup', description: 'Looks a word up.', input_schema: { type: 'object', properties: {} } };
    const base = await held([custom]);
    // Computer use 735 and its system prompt up to 499, the text editor 700, bash 245: beside each one's bytes.
    expect((await held([custom, computer])) - base).toBeGreaterThanOrEqual(735 + 499);
    expect((await held([custom, editor])) - base).toBeGreaterThanOrEqual(700);
    expect((await held([custom, bash])) - base).toBeGreaterThanOrEqual(245);
    // A first computer-use turn is billed about 20 + 346 + 499 + 735 + 700 + 245 = 2,545 input tokens.
    expect(await held([computer, editor, bash])).toBeGreaterThanOrEqual(2_545);
    // A type not known here is held at the largest of them.
    expect((await held([custom, { type: 'memory_20250818', name: 'memory' }])) - base).toBeGreaterThanOrEqual(735 + 499);
  });

  it('a PDF sent inline is held by its pages, which its bytes do not show: a balance that cannot hold them is refused before the upstream is called', async () => {
    const model = await claude('messages-cache');
    const pdf = (pages: number) => buildPdf({ pages, objectStreams: true }).toString('base64');
    const ask = (apiKey: string, data: string) =>
      anthropic(apiKey).messages.create({ model, max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'base64', media_type: 'application/pdf', data } }, { type: 'text', text: 'Summarize.' }] }] }).withResponse();
    const rich = await createCustomer({ balance: 100_000_000 });
    const five = await ask(rich.apiKey, pdf(5));
    // 5 pages under 1 KB of base64: held at 5 × 50,000 beside it.
    expect(Number((await eventOf(five.response.headers.get('x-request-id'))).max_input_tokens)).toBeGreaterThanOrEqual(5 * pdfPageTokenBound);
    const hundred = await ask(rich.apiKey, pdf(100));
    expect(Number((await eventOf(hundred.response.headers.get('x-request-id'))).max_input_tokens)).toBeGreaterThanOrEqual(remoteContentTokenBound);
    // $1 holds about 330,000 input tokens at $3 a million: enough for the 100-page PDF's bytes, not for its pages.
    const poor = await createCustomer({ balance: 1_000_000 });
    const calls = fake.requests.length;
    await expect(ask(poor.apiKey, pdf(100))).rejects.toMatchObject({ status: 402 });
    expect(fake.requests.length).toBe(calls);
  });

  it('what Claude Code sends by default passes: a system message inside messages, unknown blocks, the 1M-context beta', async () => {
    const customer = await createCustomer({ balance: 10_000_000 });
    const model = await claude('messages-cache');
    // Above 200k prompt tokens the whole request pays the tier, as Anthropic bills the 1M beta.
    await admin().query(
      `update public.models set long_context_threshold = 200000, long_context_price = '{"input": 6000000, "output": 22500000}' where id = $1`,
      [model],
    );
    const response = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: {
        'x-api-key': customer.apiKey, 'content-type': 'application/json',
        'anthropic-beta': 'context-1m-2025-08-07,mid-conversation-system-2026-04-07', 'anthropic-version': '2023-06-01',
      },
      body: JSON.stringify({
        model, max_tokens: 100, thinking: { type: 'adaptive' }, output_config: { effort: 'high' },
        messages: [
          { role: 'user', content: 'Hello' },
          { role: 'system', content: [{ type: 'text', text: 'The working directory changed.' }] },
          { role: 'user', content: [{ type: 'text', text: 'Go on' }, { type: 'future_block', payload: { x: 1 } }] },
        ],
      }),
    });
    expect(response.status).toBe(200);
    const upstream = fake.requests.at(-1)!;
    // Forwarded untouched: unknown roles, blocks and fields, and the client's beta header.
    expect((upstream.body.messages as Array<{ role: string }>)[1]!.role).toBe('system');
    expect(upstream.body.output_config).toEqual({ effort: 'high' });
    expect(upstream.headers['anthropic-beta']).toBe('context-1m-2025-08-07,mid-conversation-system-2026-04-07');
    await gateway.settled();
    const { rows: [event] } = await admin().query('select status, usage_source from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
    expect(event).toEqual({ status: 'completed', usage_source: 'provider' });
  });

  it('errors come back in Anthropic\'s shape', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = anthropic(customer.apiKey);
    await expect(client.messages.create({ model: 'no-such-claude', max_tokens: 10, messages: [{ role: 'user', content: 'x' }] })).rejects.toMatchObject({
      status: 404,
      error: { type: 'error', error: { type: 'not_found_error', code: 'model_not_found' } },
    });
    const missingMaxTokens = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'claude-sonnet-4-5', messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(missingMaxTokens.status).toBe(400);
    expect(await missingMaxTokens.json()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'invalid_max_tokens' } });
    const noKey = await fetch(`${gateway.url}/v1/messages`, { method: 'POST', body: '{}' });
    expect(await noKey.json()).toMatchObject({ type: 'error', error: { type: 'authentication_error', code: 'missing_api_key' } });

    const gpt = await createModel({ input: 1, output: 1 });
    const wrongFormat = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model: gpt, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }),
    });
    expect(wrongFormat.status).toBe(400);
    expect(await wrongFormat.json()).toMatchObject({ type: 'error', error: { code: 'unsupported_provider' } });
    await gateway.settled();
    // Refused inside authorize, before any hold: nothing is written.
    const { rows } = await admin().query('select status, charged from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows).toEqual([]);
  });
});

describe('the web_search server tool on /v1/messages', () => {
  // $0.01 per search ($10 per 1k), as Anthropic bills it.
  const searchModel = (upstreamModel: string) => createModel({ ...price, web_search: 10_000 }, { provider: 'anthropic', upstreamModel, maxOutputTokens: 64_000 });
  const tools = [{ type: 'web_search_20250305' as const, name: 'web_search' as const, max_uses: 3 }];
  // 6321 input × 3 + 58 output × 15 + 1 search × 10,000 = 18,963 + 870 + 10,000.
  const charged = 29_833;

  async function searchEvent(requestId: string | null) {
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select status, usage_source, input_tokens::int, output_tokens::int, web_searches::int, charged::int from public.usage_events where request_id = $1',
      [requestId],
    );
    return event;
  }

  it('non-streaming: usage.server_tool_use.web_search_requests is billed per search', async () => {
    const model = await searchModel('messages-web-search');
    const customer = await createCustomer({ balance: 2_000_000 });
    const { data: message, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'When was PostgreSQL 18 released?' }], tools })
      .withResponse();
    expect(message.content.map((block) => block.type)).toEqual(['text', 'server_tool_use', 'web_search_tool_result', 'text']);
    expect(fake.requests.at(-1)!.body.tools).toEqual(tools);
    expect(await searchEvent(response.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'provider', input_tokens: 6321, output_tokens: 58, web_searches: 1, charged,
    });
  });

  it('streaming: message_delta\'s usage, search count included, is what is billed', async () => {
    const model = await searchModel('messages-web-search');
    const customer = await createCustomer({ balance: 2_000_000 });
    const { data: stream, response } = await anthropic(customer.apiKey)
      .messages.create({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'When was PostgreSQL 18 released?' }], tools, stream: true })
      .withResponse();
    const blocks: string[] = [];
    for await (const event of stream) if (event.type === 'content_block_start') blocks.push(event.content_block.type);
    expect(blocks).toEqual(['text', 'server_tool_use', 'web_search_tool_result', 'text']);
    expect(await searchEvent(response.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'provider', input_tokens: 6321, output_tokens: 58, web_searches: 1, charged,
    });
  });

  it('a search that failed is not billed: the final count (0) is what is billed, not the search blocks, streamed or not', async () => {
    const model = await searchModel('messages-web-search-failed');
    const customer = await createCustomer({ balance: 2_000_000 });
    const client = anthropic(customer.apiKey);
    const body = { model, max_tokens: 1024, messages: [{ role: 'user' as const, content: 'When was PostgreSQL 18 released?' }], tools };
    const { data: message, response: plain } = await client.messages.create(body).withResponse();
    expect(message.content[2]).toMatchObject({ type: 'web_search_tool_result', content: { type: 'web_search_tool_result_error', error_code: 'unavailable' } });
    const { data: stream, response: streamed } = await client.messages.create({ ...body, stream: true }).withResponse();
    const blocks: string[] = [];
    for await (const event of stream) if (event.type === 'content_block_start') blocks.push(event.content_block.type);
    expect(blocks).toEqual(['text', 'server_tool_use', 'web_search_tool_result', 'text']);
    // 6321 input × 3 + 58 output × 15, no search.
    for (const response of [plain, streamed]) {
      expect(await searchEvent(response.headers.get('x-request-id'))).toEqual({
        status: 'completed', usage_source: 'provider', input_tokens: 6321, output_tokens: 58, web_searches: 0, charged: 6321 * 3 + 58 * 15,
      });
    }
  });

  it('a stream cut after a search: the search, message_start\'s input and the delivered output', async () => {
    const upstreamModel = `messages-search-cut-${crypto.randomUUID()}`;
    // Events 0-9: the first text block, the search and its results; no final usage.
    fake.scenarios.set(upstreamModel, { fixture: 'messages-web-search', disconnectAfterEvents: 10, eventDelayMs: 5 });
    const model = await searchModel(upstreamModel);
    const customer = await createCustomer({ balance: 2_000_000 });
    const response = await fetch(`${gateway.url}/v1/messages`, {
      method: 'POST',
      headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ model, max_tokens: 1024, messages: [{ role: 'user', content: 'When was PostgreSQL 18 released?' }], tools, stream: true }),
    });
    expect(await response.text()).toMatch(/event: error\ndata: \{"type":"error"/);
    // The search query the model wrote is output too.
    const output = await countTokens(["I'll search for that.", '{"query": "PostgreSQL 18 release date"}']);
    expect(await searchEvent(response.headers.get('x-request-id'))).toEqual({
      status: 'failed', usage_source: 'tokenizer', input_tokens: 2130, output_tokens: output, web_searches: 1, charged: 2130 * 3 + output * 15 + 10_000,
    });
  });
});


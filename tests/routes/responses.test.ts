import { createOpenAI } from '@ai-sdk/openai';
import { generateText } from 'ai';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { countTokens } from '../../lib/metering/count-tokens.ts';
import { remoteContentTokenBound } from '../../lib/metering/prompt-pieces.ts';
import { boundResponsesInput } from '../../lib/providers/openai/responses-input.ts';
import { responsesRequestSchema } from '../../lib/providers/openai/responses-wire.ts';
import { readFixture, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// OpenAI's Responses API, as Codex CLI, the AI SDK's default OpenAI provider and
// the Agents SDK call it, through the official openai SDK.

let fake: FakeUpstream;
let gateway: Gateway;
// $1.25 / $10 per 1M input / output tokens, cached input $0.125: reasoning at the output price.
const price = { input: 1_250_000, cached_input: 125_000, output: 10_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, OPENAI_API_KEY: 'sk-upstream' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

async function eventOf(requestId: string | null) {
  await gateway.settled();
  const { rows: [event] } = await admin().query(
    `select status, usage_source, input_tokens::int, cached_input_tokens::int, output_tokens::int, reasoning_tokens::int, charged::int
       from public.usage_events where request_id = $1`,
    [requestId],
  );
  return event;
}

/** The ids of the output items a Responses stream began (response.output_item.added), in order. */
function itemsBegun(stream: string): string[] {
  return stream
    .split('\n')
    .filter((line) => line.startsWith('data: '))
    .map((line) => JSON.parse(line.slice(6)) as { type: string; item?: { id: string } })
    .filter((event) => event.type === 'response.output_item.added')
    .map((event) => event.item!.id);
}

describe('POST /v1/responses with the openai SDK', () => {
  it('non-streaming: the upstream answer as is, billed from its usage', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const { data: response, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'Say hello', reasoning: { effort: 'medium' } })
      .withResponse();
    expect(response.output_text).toBe('Hello! How can I help you today?');
    // As stored upstream, each response and each of its output items has an id of its own.
    const fixture = JSON.parse(readFixture('responses-basic.json')) as { output: Array<{ id: string }> };
    expect(response).toMatchObject({
      ...fixture,
      id: expect.stringMatching(/^resp_[0-9a-f]{48}$/),
      output: fixture.output.map((item) => ({ ...item, id: expect.stringMatching(new RegExp(`^${item.id.split('_')[0]}_[0-9a-f]{32}$`)) })),
    });
    // 20 input × 1.25 + 10 output × 10 + 64 reasoning × 10 = 25 + 100 + 640 = 765.
    expect(await eventOf(raw.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'provider', input_tokens: 20, cached_input_tokens: 0, output_tokens: 10, reasoning_tokens: 64, charged: 765,
    });
  });

  it('streaming: the events as the upstream sent them, billed from response.completed', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = await gateway.openai(customer.apiKey).responses.create({ model, input: 'Say hello', stream: true });
    const types: string[] = [];
    let text = '';
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.output_text.delta') text += event.delta;
    }
    expect(text).toBe('Hello! How can I help you today?');
    expect(types.at(0)).toBe('response.created');
    expect(types.at(-1)).toBe('response.completed');
    const { rows: [event] } = await admin().query('select request_id from public.usage_events where account_id = $1', [customer.accountId]);
    expect(await eventOf(event.request_id)).toMatchObject({ status: 'completed', usage_source: 'provider', charged: 765 });
  });

  it('what Codex sends passes through untouched: tools in input items, namespace and custom tools, store false, its headers', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-function-call', maxOutputTokens: 128_000 });
    // Enough for the model's whole output, so max_output_tokens is not capped.
    const customer = await createCustomer({ balance: 10_000_000 });
    const body = {
      model,
      instructions: 'You are Codex.',
      input: [
        { type: 'message', role: 'developer', content: [{ type: 'input_text', text: '<permissions>workspace-write</permissions>' }] },
        { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'List the files' }] },
        { type: 'additional_tools', tools: [{ type: 'namespace', name: 'mcp__fs', tools: [{ type: 'function', name: 'read', parameters: { type: 'object' } }] }] },
      ],
      tools: [
        { type: 'function', name: 'shell', parameters: { type: 'object', properties: { command: { type: 'array', items: { type: 'string' } } } } },
        { type: 'custom', name: 'apply_patch', format: { type: 'grammar', syntax: 'lark', definition: 'start: /.+/' } },
      ],
      tool_choice: 'auto', parallel_tool_calls: false, store: false, stream: true,
      reasoning: { effort: 'medium', summary: 'auto', context: 'all_turns' }, text: { verbosity: 'low' },
      include: ['reasoning.encrypted_content'], prompt_cache_key: 'session-123', client_metadata: { origin: 'codex_cli_rs' },
    };
    const response = await fetch(`${gateway.url}/v1/responses`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json',
        originator: 'codex_cli_rs', session_id: 'session-123', 'x-openai-subagent': 'review', 'x-unrelated': 'kept-out',
      },
      body: JSON.stringify(body),
    });
    expect(response.status).toBe(200);
    expect(await response.text()).toContain('"name":"shell"');
    const upstream = fake.requests.at(-1)!;
    expect(upstream.path).toBe('/v1/responses');
    // Untouched but for the model and the tier asked for by name (OpenAI's own channel: see "What the price sheet cannot price" in the README).
    expect(upstream.body).toEqual({ ...body, model: 'responses-function-call', service_tier: 'default' });
    expect(upstream.headers).toMatchObject({ originator: 'codex_cli_rs', session_id: 'session-123', 'x-openai-subagent': 'review', authorization: 'Bearer sk-upstream' });
    expect(upstream.headers['x-unrelated']).toBeUndefined();
    // 28 uncached input × 1.25 + 384 cached × 0.125 + 20 output × 10 + 32 reasoning × 10 = 35 + 48 + 200 + 320 = 603.
    expect(await eventOf(response.headers.get('x-request-id'))).toEqual({
      status: 'completed', usage_source: 'provider', input_tokens: 28, cached_input_tokens: 384, output_tokens: 20, reasoning_tokens: 32, charged: 603,
    });
  });

  it('a stream cut before response.completed: the delivered output by the tokenizer, as for chat', async () => {
    const upstreamModel = `responses-cut-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'responses-basic', disconnectAfterEvents: 10, eventDelayMs: 5 });
    const model = await createModel(price, { upstreamModel, maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, input: 'Say hello', stream: true }),
    });
    const text = await response.text();
    expect(text).toMatch(/event: error\ndata: \{"type":"error","code":"upstream_unavailable"/);
    // Events 0-9 went out: the deltas "Hello", "!", " How", " can".
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({
      status: 'failed', usage_source: 'tokenizer', output_tokens: await countTokens(['Hello', '!', ' How', ' can']),
    });
    // The items it began are recorded as this account's, though no final event listed them.
    const begun = itemsBegun(text);
    expect(begun).toHaveLength(2);
    const { rows: [stored] } = await admin().query('select account_id, item_ids from public.stored_responses where request_id = $1', [response.headers.get('x-request-id')]);
    expect(stored).toEqual({ account_id: customer.accountId, item_ids: [...begun].sort() });
  });

  it('hosted tools with fees are refused before any hold; a stored response is retrievable only by its own account, free', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const other = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);
    await expect(client.responses.create({ model, input: 'find it', tools: [{ type: 'file_search', vector_store_ids: ['vs_1'] }] })).rejects.toMatchObject({
      status: 400, error: { code: 'unsupported_parameter', param: 'tools' },
    });
    // A hosted MCP server's results and tool list are input of no bound.
    await expect(client.responses.create({ model, input: 'list files', tools: [{ type: 'mcp', server_label: 'fs', server_url: 'https://mcp.example.test' }] })).rejects.toMatchObject({
      status: 400, error: { code: 'unsupported_parameter', param: 'tools', message: expect.stringContaining('The hosted tool "mcp"') },
    });
    // The shell tool in a container OpenAI runs is billed per container session; run locally, it is a client tool.
    for (const environment of [{ type: 'container_auto', memory_limit: '64g' }, { type: 'container_reference', container_id: 'cntr_1' }]) {
      await expect(client.responses.create({ model, input: 'ls', tools: [{ type: 'shell', environment } as never] })).rejects.toMatchObject({
        status: 400, error: { code: 'unsupported_parameter', param: 'tools', message: expect.stringContaining('hosted container') },
      });
    }
    for (const tool of [{ type: 'shell', environment: { type: 'local' } }, { type: 'shell' }]) {
      expect((await gateway.openai(other.apiKey).responses.create({ model, input: 'ls', max_output_tokens: 20, tools: [tool as never] })).status).toBe('completed');
      expect(fake.requests.at(-1)!.body.tools).toEqual([tool]);
    }
    // Web search is priced per search; this model has no such price. Any version or spelling of the tool.
    for (const type of ['web_search', 'web_search_preview', 'web_search_2026_01_01']) {
      await expect(client.responses.create({ model, input: 'news?', tools: [{ type } as never] })).rejects.toMatchObject({
        status: 400, error: { code: 'tool_not_priced', param: 'tools' },
      });
    }
    const created = await client.responses.create({ model, input: 'Say hello' });
    await gateway.settled();
    const { rows: [before] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
    // Recorded without a false alarm (PostgREST answers a void function with 204 and no body).
    expect(gateway.logs.filter((entry) => entry.event === 'stored_response_unrecorded')).toEqual([]);
    const retrieved = await client.responses.retrieve(created.id);
    expect(retrieved.id).toBe(created.id);
    await expect(gateway.openai(other.apiKey).responses.retrieve(created.id)).rejects.toMatchObject({ status: 404, error: { code: 'response_not_found' } });
    // A key restricted to some addresses reads it only from them.
    await admin().query(`update public.api_keys set allowed_ips = '{10.0.0.0/8}' where id = $1`, [customer.apiKeyId]);
    await expect(client.responses.retrieve(created.id, {}, { headers: { 'x-forwarded-for': '203.0.113.9' } })).rejects.toMatchObject({ status: 403, error: { code: 'ip_not_allowed' } });
    expect((await client.responses.retrieve(created.id, {}, { headers: { 'x-forwarded-for': '10.0.0.7' } })).id).toBe(created.id);
    await admin().query('update public.api_keys set allowed_ips = null where id = $1', [customer.apiKeyId]);
    await gateway.settled();
    const { rows: [after] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
    expect(after).toEqual(before);
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(1);
  });
});

describe('hosted web search on /v1/responses', () => {
  // $0.01 per search ($10 per 1k), as OpenAI bills its web_search tool.
  const searched = { ...price, web_search: 10_000 };
  // 8452 input × 1.25 + (47 output + 96 reasoning) × 10 + 2 searches × 10,000 = 10,565 + 1,430 + 20,000.
  const charged = 31_995;

  async function searchEvent(requestId: string | null) {
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select status, usage_source, web_searches::int, charged::int from public.usage_events where request_id = $1',
      [requestId],
    );
    return event;
  }

  it('non-streaming: each web_search_call in the output is billed at the model\'s price per search', async () => {
    const model = await createModel(searched, { upstreamModel: 'responses-web-search', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 2_000_000 });
    const { data: response, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'When was PostgreSQL 18 released?', tools: [{ type: 'web_search' }] })
      .withResponse();
    expect(response.output.filter((item) => item.type === 'web_search_call')).toHaveLength(2);
    expect(fake.requests.at(-1)!.body.tools).toEqual([{ type: 'web_search' }]);
    expect(await searchEvent(raw.headers.get('x-request-id'))).toEqual({ status: 'completed', usage_source: 'provider', web_searches: 2, charged });
  });

  it('streaming: the searches response.completed lists are billed', async () => {
    const model = await createModel(searched, { upstreamModel: 'responses-web-search', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 2_000_000 });
    const stream = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'When was PostgreSQL 18 released?', tools: [{ type: 'web_search_preview' }], stream: true })
      .withResponse();
    const types: string[] = [];
    for await (const event of stream.data) types.push(event.type);
    expect(types.filter((type) => type === 'response.web_search_call.completed')).toHaveLength(2);
    expect(await searchEvent(stream.response.headers.get('x-request-id'))).toEqual({ status: 'completed', usage_source: 'provider', web_searches: 2, charged });
  });

  it('searches run before the stream broke are billed with it', async () => {
    const upstreamModel = `responses-search-cut-${crypto.randomUUID()}`;
    // Events 0-11: both searches done, no text yet.
    fake.scenarios.set(upstreamModel, { fixture: 'responses-web-search', disconnectAfterEvents: 12, eventDelayMs: 5 });
    const model = await createModel(searched, { upstreamModel, maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 2_000_000 });
    const response = await fetch(`${gateway.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, input: 'When was PostgreSQL 18 released?', tools: [{ type: 'web_search' }], stream: true }),
    });
    expect(await response.text()).toMatch(/event: error\ndata: \{"type":"error","code":"upstream_unavailable"/);
    expect(await searchEvent(response.headers.get('x-request-id'))).toEqual({ status: 'failed', usage_source: 'provider', web_searches: 2, charged: 20_000 });
  });

  it('the hold covers max_tool_calls searches, or 10 when the request sets no bound', async () => {
    const model = await createModel(searched, { upstreamModel: 'responses-web-search', maxOutputTokens: 128_000 });
    // Enough for 3 searches, their results (10,000 input tokens held each) and 200 output
    // tokens, not for 10 searches and theirs.
    const customer = await createCustomer({ balance: 80_000 });
    const client = gateway.openai(customer.apiKey);
    const body = { model, input: 'When was PostgreSQL 18 released?', tools: [{ type: 'web_search' as const }], max_output_tokens: 200 };
    await expect(client.responses.create(body)).rejects.toMatchObject({ status: 402, error: { code: 'insufficient_credits' } });
    expect(fake.requests.filter((request) => request.body.model === 'responses-web-search' && request.body.max_output_tokens === 200)).toHaveLength(0);
    // max_tool_calls is in the API, not yet in this SDK's types.
    const withBound = { ...body, max_tool_calls: 3 };
    const bounded = await client.responses.create(withBound);
    expect(bounded.status).toBe('completed');
    await gateway.settled();
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: 80_000 - charged, held: 0 });
  });
});

describe('what /v1/responses cannot meter, and content of unknown size', () => {
  const post = (apiKey: string, body: Record<string, unknown>) =>
    fetch(`${gateway.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  async function nothingWritten(accountId: string, balance: number) {
    await gateway.settled();
    const { rows: events } = await admin().query('select request_id from public.usage_events where account_id = $1', [accountId]);
    expect(events).toEqual([]);
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [accountId]);
    expect(account).toEqual({ balance, held: 0 });
  }

  it('background mode is refused before any hold or upstream call, streamed or not: OpenAI would run the model after the request, unmetered', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const upstreamBefore = fake.requests.length;
    for (const stream of [false, true]) {
      const response = await post(customer.apiKey, { model, input: 'Write a 20,000-word novel.', background: true, stream });
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ error: { code: 'unsupported_parameter', param: 'background', message: expect.stringContaining('Background mode') } });
    }
    expect(fake.requests.length).toBe(upstreamBefore);
    await nothingWritten(customer.accountId, 1_000_000);
    // background: false is the ordinary request.
    const served = await gateway.openai(customer.apiKey).responses.create({ model, input: 'Say hello', background: false });
    expect(served.status).toBe('completed');
  });

  it('content stored upstream is held as content of unknown size: a continued response, a stored item, a stored prompt template', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const stored = [
      { previous_response_id: 'resp_0123456789abcdef' },
      { input: [{ type: 'item_reference', id: 'msg_0123456789abcdef' }] },
      { prompt: { id: 'pmpt_abc123', version: '2', variables: { city: 'Paris' } } },
    ];
    for (const content of stored) {
      const response = await post(customer.apiKey, { model, input: 'And then?', max_output_tokens: 20, ...content });
      expect(response.status).toBe(200);
      await response.text();
      await gateway.settled();
      const { rows: [event] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
      expect({ content, held: event.max_input_tokens >= 1_000_000 }).toEqual({ content, held: true });
    }
  });

  it('stored content of its own account is held at what the responses it comes from read and wrote, once they are recorded and settled; anything else as content of unknown size', async () => {
    const model = await createModel({ ...price, web_search: 10_000 }, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const created = (await (await post(customer.apiKey, { model, input: 'Remember: the code is 4711' })).json()) as { id: string; output: Array<{ id: string }> };
    await gateway.settled();
    const [reasoning, message] = created.output.map((item) => item.id);
    const heldFor = async (body: Record<string, unknown>) => {
      const response = await post(customer.apiKey, { model, max_output_tokens: 20, ...body });
      expect(response.status, JSON.stringify(body)).toBe(200);
      await response.text();
      await gateway.settled();
      const { rows: [event] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [response.headers.get('x-request-id')]);
      return event.max_input_tokens as number;
    };
    const besides = (body: Record<string, unknown>) => boundResponsesInput(responsesRequestSchema.parse({ model, ...body })).references!.besides;
    // responses-basic read 20 tokens and wrote 74 (64 of them reasoning); its two output items
    // are recorded with it. Framing: 64 a response, 8 an item of it.
    const ofCreated = 20 + 74 + 64 + 2 * 8;
    const continued = { input: 'What was the code?', previous_response_id: created.id };
    expect(await heldFor(continued)).toBe(besides(continued) + ofCreated);
    const sentBack = { input: [{ type: 'item_reference', id: message }, { type: 'reasoning', id: reasoning, summary: [] }, { role: 'user', content: 'What was the code?' }] };
    expect(await heldFor(sentBack)).toBe(besides(sentBack) + ofCreated);
    // A reference's type is optional: {id} alone is one too.
    const typeless = { input: [{ id: message }, { type: null, id: reasoning }, { role: 'user', content: 'What was the code?' }] };
    expect(await heldFor(typeless)).toBe(besides(typeless) + ofCreated);
    // Both at once: the one response they come from is counted once.
    expect(await heldFor({ ...sentBack, previous_response_id: created.id })).toBe(besides({ ...sentBack, previous_response_id: created.id }) + ofCreated);
    expect(besides(continued)).toBeLessThan(100);

    // Held as before (content of unknown size): an id recorded for no account; the same
    // with a hosted search, which runs the model over the whole context again; a response
    // billed by an estimate or not completed.
    // Another model continuing it (an image, a context window, cost it otherwise), or a request
    // leaving earlier reasoning or items out (reasoning.context, truncation "auto").
    const otherModel = await createModel({ ...price, web_search: 10_000 }, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const unknown = [
      { input: [{ type: 'item_reference', id: message }, { type: 'item_reference', id: 'msg_never_recorded' }] },
      { input: [{ id: 'msg_never_recorded' }] },
      { ...continued, tools: [{ type: 'web_search' }], max_tool_calls: 1 },
      { ...continued, model: otherModel },
      { ...continued, reasoning: { effort: 'low', context: 'all_turns' } },
      { ...continued, truncation: 'auto' },
    ];
    for (const body of unknown) expect(await heldFor(body)).toBeGreaterThanOrEqual(remoteContentTokenBound);
    const { rows: [{ request_id: createdRequest }] } = await admin().query('select request_id from public.stored_responses where response_id = $1', [created.id]);
    for (const change of [`usage_source = 'estimate'`, `status = 'aborted'`]) {
      await admin().query(`update public.usage_events set ${change} where request_id = $1`, [createdRequest]);
      expect(await heldFor(continued)).toBeGreaterThanOrEqual(remoteContentTokenBound);
      await admin().query(`update public.usage_events set usage_source = 'provider', status = 'completed' where request_id = $1`, [createdRequest]);
    }
    expect(await heldFor(continued)).toBe(besides(continued) + ofCreated);
    // A response made with either setting, a hosted tool, or a stored prompt template (which can bring hosted tools) does not bound what follows it.
    for (const setting of [{ truncation: 'auto' }, { reasoning: { context: 'current_turn' } }, { tools: [{ type: 'web_search' }], max_tool_calls: 1 }, { prompt: { id: 'pmpt_abc123' } }]) {
      const partial = (await (await post(customer.apiKey, { model, input: 'Remember: the code is 4711', ...setting })).json()) as { id: string };
      await gateway.settled();
      expect(await heldFor({ input: 'What was the code?', previous_response_id: partial.id })).toBeGreaterThanOrEqual(remoteContentTokenBound);
    }
  });

  it('a request held at the stored content it refers to takes no hold ahead, which would be held as content of unknown size', async () => {
    const ahead = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, OPENAI_API_KEY: 'sk-upstream', READY_HOLDS: 'on', READY_HOLD_SECONDS: '5' });
    try {
      const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
      const customer = await createCustomer({ balance: 100_000_000 });
      const send = async (body: Record<string, unknown>) => {
        const response = await ahead.openai(customer.apiKey).responses.create({ model, max_output_tokens: 50, ...body } as never);
        await ahead.settled();
        return response as unknown as { id: string };
      };
      const first = await send({ input: 'Remember: the code is 4711' });
      for (let index = 0; index < 4; index++) await send({ input: 'And then?', previous_response_id: first.id });
      await new Promise((resolve) => setTimeout(resolve, 300));
      await ahead.settled();
      const { rows } = await admin().query(
        'select max_input_tokens::int, ready_until is not null as ahead from public.usage_events where account_id = $1 order by created_at', [customer.accountId]);
      expect(rows.map((row) => row.ahead)).toEqual([false, false, false, false, false]);
      expect(rows.slice(1).every((row) => row.max_input_tokens < 1_000)).toBe(true);
    } finally {
      await ahead.close();
    }
  });

  it('a response is continued only by the account that created it; one recorded for no account yet passes', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const [owner, stranger] = [await createCustomer({ balance: 10_000_000 }), await createCustomer({ balance: 10_000_000 })];
    const created = await gateway.openai(owner.apiKey).responses.create({ model, input: 'Remember: the code is 4711' });
    await gateway.settled();
    const upstreamBefore = fake.requests.length;
    const refused = await post(stranger.apiKey, { model, input: 'What was the code?', previous_response_id: created.id });
    expect(refused.status).toBe(400);
    expect(await refused.json()).toMatchObject({ error: { type: 'invalid_request_error', code: 'previous_response_not_found', param: 'previous_response_id', message: `Previous response with id '${created.id}' not found.` } });
    expect(fake.requests.length).toBe(upstreamBefore);
    // The check runs beside the authorization, so a hold was taken: it is given back, charged nothing.
    await gateway.settled();
    const { rows: events } = await admin().query('select status, charged::int, error from public.usage_events where account_id = $1', [stranger.accountId]);
    expect(events).toEqual([{ status: 'failed', charged: 0, error: expect.stringContaining(`Previous response with id '${created.id}' not found.`) }]);
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [stranger.accountId]);
    expect(account).toEqual({ balance: 10_000_000, held: 0 });
    // A key that could not use it is refused as any such key is: the answer never tells whether the id exists.
    for (const previous of [created.id, `resp_${'1'.repeat(48)}`]) {
      const unknownKey = await post('tg_not_a_key_of_anyone', { model, input: 'What was the code?', previous_response_id: previous });
      expect([unknownKey.status, ((await unknownKey.json()) as { error: { code: string } }).error.code]).toEqual([401, 'invalid_api_key']);
    }
    // An id with a NUL in it (which no text column holds) is one recorded for no account, not an outage.
    for (const previous of [created.id, `resp_${'0'.repeat(48)}`, 'resp_\u0000abc']) {
      const continued = await post(owner.apiKey, { model, input: 'And then?', previous_response_id: previous });
      expect(continued.status).toBe(200);
      await continued.text();
    }
    const retrieved = await fetch(`${gateway.url}/v1/responses/resp_%00abc`, { headers: { authorization: `Bearer ${owner.apiKey}` } });
    expect([retrieved.status, ((await retrieved.json()) as { error: { code: string } }).error.code]).toEqual([404, 'response_not_found']);
    await gateway.settled();
  });

  it("a request refers only to its own account's stored items: by item_reference or by an item's id; one recorded for no account passes", async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const [owner, stranger] = [await createCustomer({ balance: 10_000_000 }), await createCustomer({ balance: 10_000_000 })];
    // One answer streamed, one not: each stored response's output items are recorded as its account's.
    const streamed = await post(owner.apiKey, { model, input: 'Remember: the code is 4711', stream: true });
    const streamedIds = itemsBegun(await streamed.text());
    const whole = (await (await post(owner.apiKey, { model, input: 'And the other code?' })).json()) as { output: Array<{ id: string; type: string }> };
    await gateway.settled();
    expect(streamedIds).toHaveLength(2);
    expect(new Set([...streamedIds, ...whole.output.map((item) => item.id)]).size).toBe(4);
    const [reasoning, message] = whole.output;

    const upstreamBefore = fake.requests.length;
    const references = [
      [{ type: 'item_reference', id: streamedIds[1] }],
      [{ type: 'item_reference', id: message!.id }],
      // A reasoning item sent back by its id, as clients do with stored responses.
      [{ type: 'message', role: 'user', content: 'What was the code?' }, { type: 'reasoning', id: reasoning!.id, summary: [] }],
      // Among ids of the stranger's own and unknown ones, the first of another account's is named.
      [{ type: 'item_reference', id: 'msg_never_recorded' }, { type: 'item_reference', id: message!.id }, { type: 'item_reference', id: streamedIds[0] }],
    ];
    for (const input of references) {
      const refused = await post(stranger.apiKey, { model, input, max_output_tokens: 20 });
      const named = (input.find((item) => 'id' in item && item.id !== 'msg_never_recorded') as { id: string }).id;
      expect([refused.status, await refused.json()]).toEqual([
        400,
        { error: expect.objectContaining({ type: 'invalid_request_error', code: 'item_not_found', param: 'input', message: `Item with id '${named}' not found.` }) },
      ]);
    }
    expect(fake.requests.length).toBe(upstreamBefore);
    // Streamed alike, and beside a previous response of its own: nothing streamed, the refusal is the answer.
    const mine = (await (await post(stranger.apiKey, { model, input: 'Hi' })).json()) as { id: string };
    await gateway.settled();
    const streamedRefusal = await post(stranger.apiKey, { model, stream: true, previous_response_id: mine.id, input: [{ type: 'item_reference', id: message!.id }] });
    expect([streamedRefusal.status, ((await streamedRefusal.json()) as { error: { code: string } }).error.code]).toEqual([400, 'item_not_found']);
    await gateway.settled();
    const { rows } = await admin().query(`select count(*)::int as refused, sum(charged)::int as charged from public.usage_events where account_id = $1 and status = 'failed'`, [stranger.accountId]);
    expect(rows[0]).toEqual({ refused: references.length + 1, charged: 0 });

    // The owner refers to its own; ids recorded for no account pass.
    for (const input of [[{ type: 'item_reference', id: streamedIds[1] }, { type: 'item_reference', id: message!.id }], [{ type: 'item_reference', id: 'msg_never_recorded' }]]) {
      const own = await post(owner.apiKey, { model, input, max_output_tokens: 20 });
      expect(own.status).toBe(200);
      await own.text();
    }
    const unknown = await post(stranger.apiKey, { model, input: [{ type: 'item_reference', id: `msg_${'0'.repeat(40)}` }, { type: 'reasoning', id: 'rs_\u0000x', summary: [] }], max_output_tokens: 20 });
    expect(unknown.status).toBe(200);
    await unknown.text();
    await gateway.settled();
  });

  it('an answer whose output item has an id that is not a string (an OpenAI-compatible upstream) is billed from its usage all the same', async () => {
    const upstream = createServer((request, response) => {
      request.resume();
      request.on('end', () => {
        response.writeHead(200, { 'content-type': 'application/json' });
        response.end(JSON.stringify({
          id: 'resp_compatible', object: 'response', status: 'completed', model: 'compatible',
          output: [{ id: 7, type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: 'Hello there.', annotations: [] }] }],
          usage: { input_tokens: 1000, input_tokens_details: { cached_tokens: 0 }, output_tokens: 1000, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 2000 },
        }));
      });
    });
    await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
    const compatible = await startGateway({ OPENAI_BASE_URL: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/v1`, OPENAI_API_KEY: 'sk-upstream' });
    try {
      const model = await createModel(price, { upstreamModel: 'compatible', maxOutputTokens: 4096 });
      const customer = await createCustomer({ balance: 100_000_000 });
      const response = await fetch(`${compatible.url}/v1/responses`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, input: 'Hi', max_output_tokens: 2000 }),
      });
      expect(response.status).toBe(200);
      await response.text();
      await compatible.settled();
      // 1000 × 1.25 + 1000 × 10 = 11,250.
      expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({ status: 'completed', usage_source: 'provider', input_tokens: 1000, output_tokens: 1000, charged: 11_250 });
    } finally {
      await compatible.close();
      await new Promise((resolve) => upstream.close(resolve));
    }
  });

  it('a stored conversation is refused: this gateway creates none, so any is the operator\'s own', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const upstreamBefore = fake.requests.length;
    for (const conversation of ['conv_689667905b048191b4740501625afd940c7533ace33a2dab', { id: 'conv_689667905b048191b4740501625afd940c7533ace33a2dab' }]) {
      for (const stream of [false, true]) {
        const response = await post(customer.apiKey, { model, input: 'And then?', conversation, stream });
        expect([response.status, await response.json()]).toEqual([
          400,
          { error: expect.objectContaining({ code: 'unsupported_parameter', param: 'conversation', message: expect.stringContaining('POST /v1/conversations') }) },
        ]);
      }
    }
    expect(fake.requests.length).toBe(upstreamBefore);
    await nothingWritten(customer.accountId, 10_000_000);
  });

  it('the ownership check of previous_response_id costs no round trip of its own: a warm key\'s upstream call starts while it runs, and the answer waits for it', async () => {
    // Every ownership check answers 300 ms late.
    const delay = 300;
    const slowCheck: typeof fetch = async (input, init) => {
      if (String(input).endsWith('/rpc/stored_elsewhere')) await new Promise((resolve) => setTimeout(resolve, delay));
      return fetch(input, init);
    };
    const warm = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, OPENAI_API_KEY: 'sk-upstream', READY_HOLDS: 'on', READY_HOLD_SECONDS: '5' }, { databaseFetch: slowCheck });
    try {
      const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
      // A continuation holds ~1.25M (content of unknown size): enough for holds taken ahead.
      const [owner, stranger] = [await createCustomer({ balance: 100_000_000 }), await createCustomer({ balance: 100_000_000 })];
      const send = async (apiKey: string, previous?: string) => {
        const before = warm.events.length;
        const started = performance.now();
        const response = await fetch(`${warm.url}/v1/responses`, {
          method: 'POST',
          headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model, input: 'And then?', max_output_tokens: 50, ...(previous ? { previous_response_id: previous } : {}) }),
        });
        const body = (await response.json()) as { id?: string; error?: { code: string } };
        const took = performance.now() - started;
        await warm.settled();
        const events = warm.events.slice(before);
        const at = (pattern: RegExp) => events.find((event) => pattern.test(event.url))?.at;
        return { status: response.status, body, took, events, check: at(/\/rpc\/stored_elsewhere$/), upstream: at(/\/v1\/responses$/), authorized: events.some((event) => /\/rpc\/authorize_requests?$/.test(event.url)) };
      };
      // Two continuations make a key warm for continuations: the third adopts a hold taken ahead.
      const first = await send(owner.apiKey);
      const own = await send(stranger.apiKey);
      // Continuing a response billed by an estimate is held as content of unknown size (one
      // billed from the provider's usage is held at that usage, and takes no hold ahead).
      await admin().query(
        `update public.usage_events set usage_source = 'estimate' where request_id in (select request_id from public.stored_responses where response_id = any ($1))`,
        [[first.body.id, own.body.id]],
      );
      for (let index = 0; index < 2; index++) {
        expect((await send(owner.apiKey, first.body.id)).status).toBe(200);
        expect((await send(stranger.apiKey, own.body.id)).status).toBe(200);
      }
      const continued = await send(owner.apiKey, first.body.id);
      expect([continued.status, continued.authorized]).toEqual([200, false]);
      // The upstream call started while the check was still out, not after it answered.
      expect(continued.upstream! - continued.check!).toBeLessThan(delay / 2);
      expect(continued.took).toBeGreaterThanOrEqual(delay - 5);

      // Another account's: the upstream call started beside the check is aborted, the hold given back.
      const { rows: [before] } = await admin().query('select balance::int from public.accounts where id = $1', [stranger.accountId]);
      const refused = await send(stranger.apiKey, first.body.id);
      expect([refused.status, refused.authorized, refused.body.error?.code]).toEqual([400, false, 'previous_response_not_found']);
      const { rows: [after] } = await admin().query('select balance::int from public.accounts where id = $1', [stranger.accountId]);
      expect(after.balance).toBe(before.balance);
      expect(warm.logs).toContainEqual(expect.objectContaining({ event: 'ready_hold_refused', reason: 'previous_response_not_found' }));
      // Refused, the key is cold on this instance: the next such request starts no upstream call
      // before its check answers, and no hold is taken ahead for it.
      for (let index = 0; index < 3; index++) {
        const again = await send(stranger.apiKey, first.body.id);
        expect([again.status, again.upstream, again.authorized]).toEqual([400, undefined, true]);
      }
    } finally {
      await warm.close();
    }
  });

  it('an input list with a string in it is a 400 in OpenAI\'s shape (param input) before any hold, not a 500', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-basic', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const upstreamBefore = fake.requests.length;
    for (const input of [['Hello', 'world'], [{ role: 'user', content: 'Hello' }, 'world'], [null]]) {
      const response = await post(customer.apiKey, { model, input });
      expect(response.status).toBe(400);
      expect(await response.json()).toMatchObject({ error: { code: 'invalid_request', param: 'input', message: expect.stringContaining("Invalid 'input'") } });
    }
    expect(fake.requests.length).toBe(upstreamBefore);
    await nothingWritten(customer.accountId, 1_000_000);
  });
});

describe('tool results with images and files: held as the same content in a message would be', () => {
  // A function's output as a list of content parts, as the AI SDK sends a tool result of type
  // "content": OpenAI puts each image and file in the prompt and bills it as input.
  async function heldAndBilled(accountId: string) {
    await gateway.settled();
    const { rows } = await admin().query(
      'select max_input_tokens::int, input_tokens::int, hold::int, amount::int, charged::int from public.usage_events where account_id = $1 order by created_at',
      [accountId],
    );
    return rows as Array<{ max_input_tokens: number; input_tokens: number; hold: number; amount: number; charged: number }>;
  }

  const covered = (event: { max_input_tokens: number; input_tokens: number; hold: number; amount: number; charged: number }) => ({
    inputBound: event.max_input_tokens >= event.input_tokens,
    holdCoversCost: event.hold >= event.amount,
    chargedInFull: event.charged === event.amount,
  });
  const coveredInFull = { inputBound: true, holdCoversCost: true, chargedInFull: true };

  it('the AI SDK: a PDF by file id and an image by URL returned by a tool are held as content of unknown size and as an image', async () => {
    const model = await createModel(price, { upstreamModel: 'responses-tool-output-file', maxOutputTokens: 128_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const openai = createOpenAI({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1` });
    const toolResult = (value: Array<{ type: 'file-id'; fileId: string } | { type: 'image-url'; url: string }>) => [
      { role: 'user' as const, content: 'Summarise the quarterly report.' },
      { role: 'assistant' as const, content: [{ type: 'tool-call' as const, toolCallId: 'call_1', toolName: 'fetch_report', input: {} }] },
      { role: 'tool' as const, content: [{ type: 'tool-result' as const, toolCallId: 'call_1', toolName: 'fetch_report', output: { type: 'content' as const, value } }] },
    ];
    const file = await generateText({ model: openai(model), maxOutputTokens: 100, messages: toolResult([{ type: 'file-id', fileId: 'file-8Kq3vYzR2pX7mN4wLbT9aE' }]) });
    expect(file.text).toBe('The quarterly report says revenue grew 12%.');
    // The AI SDK sends the file as a content part of the function's output.
    expect(fake.requestsFor('responses-tool-output-file').at(-1)!.body.input).toContainEqual({
      type: 'function_call_output', call_id: 'call_1', output: [{ type: 'input_file', file_id: 'file-8Kq3vYzR2pX7mN4wLbT9aE' }],
    });
    fake.scenarios.set(`${model}-image`, { fixture: 'responses-tool-output-image' });
    const imageModel = await createModel(price, { upstreamModel: `${model}-image`, maxOutputTokens: 128_000 });
    const image = await generateText({ model: openai(imageModel), maxOutputTokens: 100, messages: toolResult([{ type: 'image-url', url: 'https://example.com/chart.png' }]) });
    expect(image.text).toBe('The chart shows sales rising through the year.');
    const [fileEvent, imageEvent] = await heldAndBilled(customer.accountId);
    // 60,000 input tokens for a 40-page PDF (its text and an image of each page); 48,200 for a 2048×768 high-detail image on gpt-4o-mini.
    expect([fileEvent!.input_tokens, imageEvent!.input_tokens]).toEqual([60_000, 48_200]);
    expect([covered(fileEvent!), covered(imageEvent!)]).toEqual([coveredInFull, coveredInFull]);
  });

  it('the openai SDK: images and files in the output of a function, a custom tool and a computer call are each held', async () => {
    const imageModel = `responses-tool-output-image-${crypto.randomUUID()}`;
    fake.scenarios.set(imageModel, { fixture: 'responses-tool-output-image' });
    const fileModel = `responses-tool-output-file-${crypto.randomUUID()}`;
    fake.scenarios.set(fileModel, { fixture: 'responses-tool-output-file' });
    const models = { image: await createModel(price, { upstreamModel: imageModel, maxOutputTokens: 128_000 }), file: await createModel(price, { upstreamModel: fileModel, maxOutputTokens: 128_000 }) };
    const customer = await createCustomer({ balance: 10_000_000 });
    const client = gateway.openai(customer.apiKey);
    const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
    const results: Array<[keyof typeof models, OpenAI.Responses.ResponseInputItem[]]> = [
      ['image', [
        { type: 'function_call', call_id: 'call_1', name: 'screenshot', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_1', output: [{ type: 'input_image', image_url: 'https://example.com/chart.png', detail: 'high' }] },
      ]],
      ['image', [
        { type: 'function_call', call_id: 'call_2', name: 'screenshot', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_2', output: [{ type: 'input_text', text: 'The chart:' }, { type: 'input_image', image_url: `data:image/png;base64,${png}` }] },
      ]],
      ['image', [
        { type: 'custom_tool_call', call_id: 'call_3', name: 'render', input: 'chart' },
        { type: 'custom_tool_call_output', call_id: 'call_3', output: [{ type: 'input_image', image_url: 'https://example.com/chart.png', detail: 'high' }] },
      ]],
      ['image', [
        { type: 'computer_call', id: 'cu_1', call_id: 'call_4', action: { type: 'screenshot' }, pending_safety_checks: [], status: 'completed' },
        { type: 'computer_call_output', call_id: 'call_4', output: { type: 'computer_screenshot', image_url: `data:image/png;base64,${png}` } },
      ]],
      ['image', [
        { type: 'computer_call', id: 'cu_2', call_id: 'call_5', action: { type: 'screenshot' }, pending_safety_checks: [], status: 'completed' },
        { type: 'computer_call_output', call_id: 'call_5', output: { type: 'computer_screenshot', file_id: 'file-Screenshot5' } },
      ]],
      ['file', [
        { type: 'function_call', call_id: 'call_6', name: 'fetch_report', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_6', output: [{ type: 'input_file', file_url: 'https://example.com/report.pdf' }] },
      ]],
      ['file', [
        { type: 'function_call', call_id: 'call_7', name: 'fetch_report', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_7', output: [{ type: 'input_image', file_id: 'file-Chart7' }, { type: 'input_file', file_id: 'file-Report7' }] },
      ]],
    ];
    for (const [kind, items] of results) {
      await client.responses.create({ model: models[kind], max_output_tokens: 100, input: [{ role: 'user', content: 'What does it show?' }, ...items] });
    }
    const events = await heldAndBilled(customer.accountId);
    expect(events.map((event) => event.input_tokens)).toEqual(results.map(([kind]) => (kind === 'image' ? 48_200 : 60_000)));
    expect(events.map(covered)).toEqual(results.map(() => coveredInFull));
  });
});

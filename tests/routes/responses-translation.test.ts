import { createOpenAI } from '@ai-sdk/openai';
import { generateText, jsonSchema, tool } from 'ai';
import type OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// POST /v1/responses for Claude and Gemini models, by translation to their own
// formats and back, through the openai SDK: what Codex CLI and the AI SDK's
// default OpenAI provider send, answered as the Responses API answers.

let fake: FakeUpstream;
let gateway: Gateway;

// Claude Sonnet-like prices (thinking priced apart, to show its bucket); Gemini Flash-like prices.
const claudePrice = { input: 3_000_000, cached_input: 300_000, cache_write: 3_750_000, cache_write_1h: 6_000_000, output: 15_000_000, reasoning: 10_000_000 };
const geminiPrice = { input: 300_000, cached_input: 30_000, output: 2_500_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ ANTHROPIC_BASE_URL: fake.url, ANTHROPIC_API_KEY: 'sk-ant-upstream', GEMINI_BASE_URL: fake.url, GEMINI_API_KEY: 'gemini-upstream-key' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const claude = (upstreamModel: string, extra: { web_search?: number } = {}) =>
  createModel({ ...claudePrice, ...extra }, { provider: 'anthropic', upstreamModel, maxOutputTokens: 64_000 });
const gemini = (upstreamModel: string) => createModel(geminiPrice, { provider: 'google', upstreamModel, maxOutputTokens: 65_536 });

async function eventOf(requestId: string | null) {
  await gateway.settled();
  const { rows: [event] } = await admin().query(
    `select status, usage_source, input_tokens::int, cached_input_tokens::int, cache_write_tokens::int, output_tokens::int,
            reasoning_tokens::int, web_searches::int, charged::int
       from public.usage_events where request_id = $1`,
    [requestId],
  );
  return event;
}

const weatherTool = {
  type: 'function' as const, name: 'get_weather', description: 'The weather in a city.', strict: false,
  parameters: { type: 'object', properties: { location: { type: 'string' } }, required: ['location'], additionalProperties: false },
};

describe('POST /v1/responses for a Claude model', () => {
  it('non-streaming: instructions and input become Anthropic\'s system and messages; the answer a response object, billed from Anthropic\'s usage', async () => {
    const model = await claude('messages-cache');
    const customer = await createCustomer({ balance: 10_000_000 });
    const { data: response, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, instructions: 'Be brief.', input: 'Hi', max_output_tokens: 1024 })
      .withResponse();
    expect(response).toMatchObject({
      id: expect.stringMatching(/^resp_[0-9a-f]{48}$/), object: 'response', status: 'completed', model,
      output: [{ type: 'message', role: 'assistant', status: 'completed', content: [{ type: 'output_text', text: 'Hello! The cached context says hi.' }] }],
      // The Responses API counts cache reads and writes inside input_tokens.
      usage: { input_tokens: 4225, input_tokens_details: { cached_tokens: 3000 }, output_tokens: 14, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: 4239 },
    });
    expect(response.output_text).toBe('Hello! The cached context says hi.');
    const upstream = fake.requestsFor('messages-cache').at(-1)!;
    expect(upstream.path).toBe('/v1/messages');
    expect(upstream.headers['x-api-key']).toBe('sk-ant-upstream');
    expect(upstream.body).toEqual({ model: 'messages-cache', max_tokens: 1024, system: 'Be brief.', messages: [{ role: 'user', content: [{ type: 'text', text: 'Hi' }] }] });
    // 25 × 3 + 3000 × 0.3 + 1000 × 3.75 + 200 × 6 + 14 × 15 = 75 + 900 + 3750 + 1200 + 210.
    expect(await eventOf(raw.headers.get('x-request-id'))).toMatchObject({ status: 'completed', usage_source: 'provider', input_tokens: 25, cached_input_tokens: 3000, output_tokens: 14, charged: 6135 });
  });

  it('streaming: text and a tool call with streamed arguments, as Responses events ending in response.completed', async () => {
    const model = await claude('messages-tool-use');
    const customer = await createCustomer({ balance: 10_000_000 });
    const { data: stream, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'Weather in Paris?', tools: [weatherTool], parallel_tool_calls: false, max_output_tokens: 1024, stream: true })
      .withResponse();
    const types: string[] = [];
    let argumentDeltas = '';
    let completed: OpenAI.Responses.Response | undefined;
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.function_call_arguments.delta') argumentDeltas += event.delta;
      if (event.type === 'response.completed') completed = event.response;
    }
    expect(types.slice(0, 2)).toEqual(['response.created', 'response.in_progress']);
    expect(types).toContain('response.output_text.delta');
    expect(types.at(-1)).toBe('response.completed');
    expect(argumentDeltas).toBe('{"location": "Paris, France"}');
    expect(completed!.output).toMatchObject([
      { type: 'message', content: [{ type: 'output_text', text: "I'll check the weather." }] },
      { type: 'function_call', status: 'completed', call_id: 'toolu_01A09q90qw90lq917835lq9', name: 'get_weather', arguments: '{"location": "Paris, France"}' },
    ]);
    expect(completed!.usage).toMatchObject({ input_tokens: 410, output_tokens: 68 });
    const upstream = fake.requestsFor('messages-tool-use').at(-1)!.body;
    expect(upstream).toMatchObject({
      stream: true,
      tools: [{ name: 'get_weather', description: 'The weather in a city.', input_schema: weatherTool.parameters }],
      tool_choice: { type: 'auto', disable_parallel_tool_use: true },
    });
    // 410 × 3 + 68 × 15 = 1230 + 1020.
    expect(await eventOf(raw.headers.get('x-request-id'))).toMatchObject({ status: 'completed', usage_source: 'provider', charged: 2250 });
  });

  it('reasoning: effort turns thinking on; the thinking comes back as a reasoning item, and its signature goes back to Anthropic with it', async () => {
    const model = await claude('messages-thinking');
    const customer = await createCustomer({ balance: 10_000_000 });
    const client = gateway.openai(customer.apiKey);
    const first = await client.responses.create({
      model, input: 'What is 27 + 15?', reasoning: { effort: 'low', summary: 'auto' }, include: ['reasoning.encrypted_content'], store: false, max_output_tokens: 4096,
    });
    expect(fake.requestsFor('messages-thinking').at(-1)!.body).toMatchObject({ max_tokens: 4096, thinking: { type: 'enabled', budget_tokens: 2048 } });
    expect(first.output).toMatchObject([
      { type: 'reasoning', summary: [{ type: 'summary_text', text: 'Let me add 27 and 15: 42.' }], encrypted_content: expect.stringMatching(/^tollgate\.v1\.anthropic\./) },
      { type: 'message', content: [{ type: 'output_text', text: '27 + 15 = 42.' }] },
    ]);
    expect(first.usage).toMatchObject({ output_tokens: 310, output_tokens_details: { reasoning_tokens: 290 } });

    // The conversation continued statelessly, as Codex does: the output items go back as input.
    await client.responses.create({
      model, reasoning: { effort: 'low', summary: 'auto' }, store: false, max_output_tokens: 4096,
      input: [{ role: 'user', content: 'What is 27 + 15?' }, ...(first.output as OpenAI.Responses.ResponseInputItem[]), { role: 'user', content: 'And doubled?' }],
    });
    expect(fake.requestsFor('messages-thinking').at(-1)!.body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'What is 27 + 15?' }] },
      {
        role: 'assistant',
        content: [
          { type: 'thinking', thinking: 'Let me add 27 and 15: 42.', signature: 'EqQBCgIYAhIM1gbcDa9GJwZA2b3hGgxBdjrkzLoky3dl1pkiMOYds' },
          { type: 'text', text: '27 + 15 = 42.' },
        ],
      },
      { role: 'user', content: [{ type: 'text', text: 'And doubled?' }] },
    ]);
  });

  it('a tool loop continues with the function_call_output; Codex\'s namespace and custom tools are named so their calls come back as theirs', async () => {
    const model = await claude('messages-tool-use');
    const customer = await createCustomer({ balance: 10_000_000 });
    await gateway.openai(customer.apiKey).responses.create({
      model, max_output_tokens: 1024,
      input: [
        { role: 'developer', content: 'You are a coding agent.' },
        { role: 'user', content: 'Weather in Paris?' },
        { type: 'function_call', call_id: 'toolu_1', name: 'get_weather', arguments: '{"location":"Paris, France"}' },
        { type: 'function_call_output', call_id: 'toolu_1', output: '18°C, clear' },
      ],
      tools: [
        weatherTool,
        { type: 'custom', name: 'apply_patch', description: 'Edits files.', format: { type: 'grammar', syntax: 'lark', definition: 'start: /.+/' } },
        { type: 'namespace', name: 'multi_agent_v1', description: 'Sub-agents.', tools: [{ type: 'function', name: 'close_agent', parameters: { type: 'object', properties: {} } }] },
      ] as OpenAI.Responses.Tool[],
    });
    const upstream = fake.requestsFor('messages-tool-use').at(-1)!.body;
    expect(upstream.system).toBe('You are a coding agent.');
    expect(upstream.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'Weather in Paris?' }] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { location: 'Paris, France' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: '18°C, clear' }] },
    ]);
    expect((upstream.tools as Array<{ name: string; input_schema: unknown }>).map((tool) => tool.name)).toEqual(['get_weather', 'apply_patch', 'multi_agent_v1__close_agent']);
    expect((upstream.tools as Array<{ name: string; input_schema: unknown }>)[1]!.input_schema).toMatchObject({ properties: { input: { type: 'string' } }, required: ['input'] });
  });

  it('hosted web search becomes Anthropic\'s web_search tool, bounded by the hold; each search a web_search_call item, billed per search', async () => {
    const model = await claude('messages-web-search', { web_search: 10_000 });
    const customer = await createCustomer({ balance: 10_000_000 });
    const { data: response, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'When was PostgreSQL 18 released?', tools: [{ type: 'web_search' }], max_output_tokens: 1024 })
      .withResponse();
    expect(fake.requestsFor('messages-web-search').at(-1)!.body.tools).toEqual([{ type: 'web_search_20250305', name: 'web_search', max_uses: 10 }]);
    expect(response.output.map((item) => item.type)).toEqual(['message', 'web_search_call', 'message']);
    expect(response.output[1]).toMatchObject({ type: 'web_search_call', status: 'completed', action: { type: 'search', query: 'PostgreSQL 18 release date' } });
    expect(response.output_text).toBe("I'll search for that.PostgreSQL 18 was released on 25 September 2025.");
    // 6321 input × 3 + 58 output × 15 + 1 search × 10,000.
    expect(await eventOf(raw.headers.get('x-request-id'))).toMatchObject({ status: 'completed', web_searches: 1, charged: 29_833 });
  });

  it('what a stateless translation cannot carry is a clear 400 before any hold: previous_response_id, item references, other hosted tools', async () => {
    const model = await claude('messages-cache');
    const customer = await createCustomer({ balance: 10_000_000 });
    const client = gateway.openai(customer.apiKey);
    const before = fake.requests.length;
    await expect(client.responses.create({ model, input: 'Go on', previous_response_id: 'resp_abc' })).rejects.toMatchObject({
      status: 400, error: { code: 'invalid_request', param: 'previous_response_id', message: expect.stringContaining('send the whole conversation') },
    });
    await expect(client.responses.create({ model, input: [{ type: 'item_reference', id: 'msg_1' }] })).rejects.toMatchObject({ status: 400, error: { param: 'input' } });
    await expect(client.responses.create({ model, input: 'x', tools: [{ type: 'computer_use_preview', display_width: 1024, display_height: 768, environment: 'browser' }] })).rejects.toMatchObject({
      status: 400, error: { param: 'tools', message: expect.stringContaining("'computer_use_preview'") },
    });
    await expect(client.responses.create({ model, input: 'x', text: { format: { type: 'json_object' } } })).rejects.toMatchObject({ status: 400, error: { param: 'text' } });
    expect(fake.requests.length).toBe(before);
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(0);
  });

  it('a stream cut mid-answer ends with an error event; what was delivered is billed as failed', async () => {
    const upstreamModel = `messages-cut-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-tool-use', disconnectAfterEvents: 6, eventDelayMs: 5 });
    const model = await claude(upstreamModel);
    const customer = await createCustomer({ balance: 10_000_000 });
    const response = await fetch(`${gateway.url}/v1/responses`, {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, input: 'Weather in Paris?', max_output_tokens: 1024, stream: true }),
    });
    const text = await response.text();
    expect(text).toContain('event: response.output_text.delta');
    expect(text).toMatch(/event: error\ndata: \{"type":"error","code":"upstream_unavailable"/);
    expect(text).not.toContain('response.completed');
    expect(await eventOf(response.headers.get('x-request-id'))).toMatchObject({ status: 'failed', usage_source: 'tokenizer', input_tokens: 410 });
  });
});

describe('what Anthropic adds to a translated request', () => {
  it('a request with tools holds the system prompt Anthropic adds for them: the input bound covers the input Anthropic bills', async () => {
    const model = await claude('messages-tool-use');
    const customer = await createCustomer({ balance: 1_000_000 });
    const { response } = await gateway.openai(customer.apiKey).responses
      .create({ model, input: 'Weather in Paris?', tools: [weatherTool], max_output_tokens: 100 })
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

describe('POST /v1/responses for a Gemini model', () => {
  it('non-streaming: a function call as a function_call item; tools as Gemini function declarations with their JSON schema', async () => {
    const model = await gemini('generate-function-call');
    const customer = await createCustomer({ balance: 10_000_000 });
    const { data: response, response: raw } = await gateway.openai(customer.apiKey).responses
      .create({ model, instructions: 'Use tools.', input: 'Weather in Paris?', tools: [weatherTool], tool_choice: 'required', max_output_tokens: 512 })
      .withResponse();
    expect(response.output).toMatchObject([{ type: 'function_call', name: 'get_weather', arguments: '{"location":"Paris, France"}', call_id: expect.stringMatching(/^call_/) }]);
    const upstream = fake.requestsFor('generate-function-call').at(-1)!;
    expect(upstream.path).toBe('/v1beta/models/generate-function-call:generateContent');
    expect(upstream.body).toEqual({
      contents: [{ role: 'user', parts: [{ text: 'Weather in Paris?' }] }],
      systemInstruction: { parts: [{ text: 'Use tools.' }] },
      generationConfig: { maxOutputTokens: 512 },
      tools: [{ functionDeclarations: [{ name: 'get_weather', description: 'The weather in a city.', parametersJsonSchema: weatherTool.parameters }] }],
      toolConfig: { functionCallingConfig: { mode: 'ANY' } },
    });
    // 95 × 0.3 + 7 × 2.5 = 28.5 + 17.5.
    expect(await eventOf(raw.headers.get('x-request-id'))).toMatchObject({ status: 'completed', usage_source: 'provider', charged: 46 });
  });

  it('streaming: thoughts as a reasoning item, the call\'s thought signature kept for the next turn, where it goes back on the call', async () => {
    const model = await gemini('generate-thought-call');
    const customer = await createCustomer({ balance: 10_000_000 });
    const client = gateway.openai(customer.apiKey);
    const stream = await client.responses.create({
      model, input: 'Weather in Paris?', tools: [weatherTool], reasoning: { summary: 'auto' }, include: ['reasoning.encrypted_content'], store: false, stream: true,
    });
    let completed: OpenAI.Responses.Response | undefined;
    const types: string[] = [];
    for await (const event of stream) {
      types.push(event.type);
      if (event.type === 'response.completed') completed = event.response;
    }
    expect(types).toContain('response.reasoning_summary_text.delta');
    expect(fake.requestsFor('generate-thought-call').at(-1)!.body.generationConfig).toMatchObject({ thinkingConfig: { includeThoughts: true } });
    // The thoughts and the signature Gemini gave with the call make one reasoning item.
    const [state, call] = completed!.output as unknown as Array<Record<string, unknown>>;
    expect(state).toMatchObject({
      type: 'reasoning', summary: [{ type: 'summary_text', text: expect.stringContaining('Checking the weather') }], encrypted_content: expect.stringMatching(/^tollgate\.v1\.google\.CiQB/),
    });
    expect(call).toMatchObject({ type: 'function_call', name: 'get_weather', arguments: '{"location":"Paris, France"}' });
    // 80 × 0.3 + (9 + 45) × 2.5 = 24 + 135.
    expect(completed!.usage).toMatchObject({ input_tokens: 80, output_tokens: 54, output_tokens_details: { reasoning_tokens: 45 } });

    await client.responses.create({
      model, tools: [weatherTool], store: false,
      input: [
        { role: 'user', content: 'Weather in Paris?' },
        ...(completed!.output as OpenAI.Responses.ResponseInputItem[]),
        { type: 'function_call_output', call_id: String(call!.call_id), output: '18°C, clear' },
      ],
    });
    const signature = String(state!.encrypted_content).slice('tollgate.v1.google.'.length);
    expect(fake.requestsFor('generate-thought-call').at(-1)!.body.contents).toEqual([
      { role: 'user', parts: [{ text: 'Weather in Paris?' }] },
      { role: 'model', parts: [{ functionCall: { name: 'get_weather', args: { location: 'Paris, France' } }, thoughtSignature: signature }] },
      { role: 'user', parts: [{ functionResponse: { name: 'get_weather', response: { content: '18°C, clear' } } }] },
    ]);
    await gateway.settled();
    const { rows } = await admin().query('select charged::int from public.usage_events where account_id = $1 order by created_at', [customer.accountId]);
    expect(rows.map((row) => row.charged)).toEqual([159, 159]);
  });
});

describe('a tool\'s output of images and files, translated: carried to the model, or refused, never dropped', () => {
  // A function_call_output whose output is content parts, as the AI SDK sends a tool result of
  // type "content" and Codex an image a tool returned. Anthropic takes images and documents inside
  // a tool_result; Gemini takes inline data beside a functionResponse, so there each output's
  // attachments follow the tool results under its call id.
  const png = 'iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg==';
  const screenshotTool = { type: 'function' as const, name: 'screenshot', parameters: { type: 'object', properties: {} }, strict: false };
  const reportTool = { type: 'function' as const, name: 'fetch_report', parameters: { type: 'object', properties: {} }, strict: false };
  const pointer = (callId: string) => `[See "Attachments of call ${callId}" below.]`;
  const label = (callId: string) => ({ type: 'text', text: `Attachments of call ${callId}:` });

  it('Claude: images and files a tool returned go inside its tool_result, after its text; the hold counts them', async () => {
    const upstreamModel = `messages-tool-output-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-cache' });
    const model = await claude(upstreamModel);
    const customer = await createCustomer({ balance: 10_000_000 });
    const { response: raw } = await gateway.openai(customer.apiKey).responses.create({
      model, max_output_tokens: 200, tools: [screenshotTool, reportTool],
      input: [
        { role: 'user', content: 'What is on my screen, and what does the report say?' },
        { type: 'function_call', call_id: 'call_1', name: 'screenshot', arguments: '{}' },
        { type: 'function_call', call_id: 'call_2', name: 'fetch_report', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_1', output: [{ type: 'input_text', text: 'The desktop:' }, { type: 'input_image', image_url: `data:image/png;base64,${png}`, detail: 'auto' }] },
        { type: 'function_call_output', call_id: 'call_2', output: [{ type: 'input_file', file_url: 'https://example.com/report.pdf', filename: 'report.pdf' }] },
      ],
    }).withResponse();
    expect(fake.requestsFor(upstreamModel).at(-1)!.body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'What is on my screen, and what does the report say?' }] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'call_1', name: 'screenshot', input: {} }, { type: 'tool_use', id: 'call_2', name: 'fetch_report', input: {} }] },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 'call_1', content: [{ type: 'text', text: 'The desktop:' }, { type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } }] },
          { type: 'tool_result', tool_use_id: 'call_2', content: [{ type: 'document', source: { type: 'url', url: 'https://example.com/report.pdf' }, title: 'report.pdf' }] },
        ],
      },
    ]);
    await gateway.settled();
    const { rows: [event] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [raw.headers.get('x-request-id')]);
    // An image, and a file by URL (content of unknown size).
    expect(event.max_input_tokens).toBeGreaterThan(50_000 + 1_048_576);
  });

  it('Claude, with the AI SDK as client: a tool result of type content with an image reaches the model', async () => {
    const upstreamModel = `messages-tool-output-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'messages-cache' });
    const model = await claude(upstreamModel);
    const customer = await createCustomer({ balance: 10_000_000 });
    const openai = createOpenAI({ apiKey: customer.apiKey, baseURL: `${gateway.url}/v1` });
    const result = await generateText({
      model: openai(model),
      maxOutputTokens: 200,
      // Anthropic takes tool_use and tool_result blocks only in a request that defines tools.
      tools: { screenshot: tool({ description: 'A screenshot of the desktop.', inputSchema: jsonSchema({ type: 'object', properties: {} }) }) },
      messages: [
        { role: 'user', content: 'What is on my screen?' },
        { role: 'assistant', content: [{ type: 'tool-call', toolCallId: 'call_1', toolName: 'screenshot', input: {} }] },
        { role: 'tool', content: [{ type: 'tool-result', toolCallId: 'call_1', toolName: 'screenshot', output: { type: 'content', value: [{ type: 'image-data', data: png, mediaType: 'image/png' }] } }] },
      ],
    });
    expect(result.text).toBe('Hello! The cached context says hi.');
    expect(fake.requestsFor(upstreamModel).at(-1)!.body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'What is on my screen?' }] },
      { role: 'assistant', content: [{ type: 'tool_use', id: 'call_1', name: 'screenshot', input: {} }] },
      {
        role: 'user',
        content: [
          { type: 'tool_result', tool_use_id: 'call_1', content: [{ type: 'image', source: { type: 'base64', media_type: 'image/png', data: png } }] },
        ],
      },
    ]);
  });

  it('Gemini: an image a tool returned goes as inline data beside the functionResponse, under its call id', async () => {
    const upstreamModel = `generate-tool-output-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'generate-function-call' });
    const model = await gemini(upstreamModel);
    const customer = await createCustomer({ balance: 10_000_000 });
    await gateway.openai(customer.apiKey).responses.create({
      model, max_output_tokens: 200, tools: [screenshotTool],
      input: [
        { role: 'user', content: 'What is on my screen?' },
        { type: 'function_call', call_id: 'call_1', name: 'screenshot', arguments: '{}' },
        { type: 'function_call_output', call_id: 'call_1', output: [{ type: 'input_image', image_url: `data:image/png;base64,${png}`, detail: 'auto' }] },
      ],
    });
    expect(fake.requestsFor(upstreamModel).at(-1)!.body.contents).toEqual([
      { role: 'user', parts: [{ text: 'What is on my screen?' }] },
      { role: 'model', parts: [{ functionCall: { name: 'screenshot', args: {} } }] },
      { role: 'user', parts: [{ functionResponse: { name: 'screenshot', response: { content: pointer('call_1') } } }, { text: label('call_1').text }, { inlineData: { mimeType: 'image/png', data: png } }] },
    ]);
  });

  it('what a translation cannot carry in a tool\'s output is a 400 in OpenAI\'s shape before any hold, naming the item: nothing sent, nothing written', async () => {
    const [claudeModel, geminiModel] = [await claude('messages-cache'), await gemini('generate-function-call')];
    const customer = await createCustomer({ balance: 10_000_000 });
    const client = gateway.openai(customer.apiKey);
    const before = fake.requests.length;
    const withOutput = (output: unknown, type = 'function_call_output') => [
      { role: 'user', content: 'Look.' },
      { type: type === 'function_call_output' ? 'function_call' : 'custom_tool_call', call_id: 'call_9', name: 'screenshot', ...(type === 'function_call_output' ? { arguments: '{}' } : { input: '' }) },
      { type, call_id: 'call_9', output },
    ] as OpenAI.Responses.ResponseInputItem[];
    const refusals: Array<[string, unknown, string, RegExp]> = [
      // Stored with OpenAI: no other provider can read it.
      [claudeModel, [{ type: 'input_image', file_id: 'file-abc' }], 'function_call_output', /function_call_output call_9.*file_id/],
      [claudeModel, [{ type: 'input_file', file_id: 'file-abc' }], 'custom_tool_call_output', /custom_tool_call_output call_9.*file_id/],
      // A part of a type the translation does not know.
      [claudeModel, [{ type: 'input_audio', input_audio: { data: 'AAAA', format: 'wav' } }], 'function_call_output', /function_call_output call_9.*'input_audio'/],
      // Gemini reads no image by URL but from its own Files API.
      [geminiModel, [{ type: 'input_image', image_url: 'https://example.com/chart.png' }], 'function_call_output', /data: URLs/],
    ];
    for (const [model, output, type, message] of refusals) {
      await expect(client.responses.create({ model, max_output_tokens: 100, input: withOutput(output, type) })).rejects.toMatchObject({
        status: 400, error: { code: 'invalid_request', param: 'input', message: expect.stringMatching(message) },
      });
    }
    expect(fake.requests.length).toBe(before);
    await gateway.settled();
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(0);
  });
});

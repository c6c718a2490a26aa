import { ApiError, GoogleGenAI, ServiceTier } from '@google/genai';
import { getEncoding } from 'js-tiktoken';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { remoteContentTokenBound } from '../../lib/metering/prompt-pieces.ts';
import { readFixture, startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;

// Gemini 2.5 Flash-like prices, micro-USD per 1M tokens; audio input dearer than text.
const price = { input: 300_000, cached_input: 30_000, output: 2_500_000, audio: 1_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ GEMINI_BASE_URL: fake.url, GEMINI_API_KEY: 'gemini-upstream-key' });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const genai = (apiKey: string) => new GoogleGenAI({ apiKey, httpOptions: { baseUrl: gateway.url } });

async function gemini(upstreamModel: string) {
  return createModel(price, { provider: 'google', upstreamModel, maxOutputTokens: 65_536 });
}

async function eventsOf(accountId: string) {
  const { rows } = await admin().query('select * from public.usage_events where account_id = $1 order by created_at', [accountId]);
  return rows;
}

describe('/v1beta/models/{model}:generateContent with @google/genai', () => {
  it('non-streaming: cached content and thoughts billed in their buckets (thoughts are not inside candidates)', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await genai(customer.apiKey).models.generateContent({ model, contents: 'What is the answer?' });
    expect(response.text).toBe('The answer is 42.');
    const upstream = fake.requestsFor('generate-cached-thoughts').at(-1)!;
    expect(upstream.headers['x-goog-api-key']).toBe('gemini-upstream-key');
    expect(upstream.path).toBe('/v1beta/models/generate-cached-thoughts:generateContent');
    await gateway.settled();
    // (1200 − 1000) × 0.3 + 1000 × 0.03 + 12 × 2.5 + 140 × 2.5 = 60 + 30 + 30 + 350
    expect((await eventsOf(customer.accountId))[0]).toMatchObject({
      input_tokens: '200', cached_input_tokens: '1000', output_tokens: '12', reasoning_tokens: '140', amount: '470', usage_source: 'provider',
    });
  });

  it('streaming (SSE): forwarded as is; the last running usage counts once', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = await genai(customer.apiKey).models.generateContentStream({ model, contents: 'What is the answer?' });
    let text = '';
    for await (const chunk of stream) text += chunk.text ?? '';
    expect(text).toBe('The answer is 42.');
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.path).toBe('/v1beta/models/generate-cached-thoughts:streamGenerateContent?alt=sse');

    const raw = await fetch(`${gateway.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'What is the answer?' }] }] }),
    });
    expect(await raw.text()).toBe(readFixture('generate-cached-thoughts.chunks.txt', 'google'));
    await gateway.settled();
    const events = await eventsOf(customer.accountId);
    expect(events.map((event) => event.amount)).toEqual(['470', '470']);
  });

  it('function calls, streamed and not', async () => {
    const model = await gemini('generate-function-call');
    const customer = await createCustomer({ balance: 1_000_000 });
    const config = { tools: [{ functionDeclarations: [{ name: 'get_weather', parametersJsonSchema: { type: 'object', properties: { location: { type: 'string' } } } }] }] };
    const client = genai(customer.apiKey);
    const plain = await client.models.generateContent({ model, contents: 'Weather in Paris?', config });
    expect(plain.functionCalls?.[0]).toMatchObject({ name: 'get_weather', args: { location: 'Paris, France' } });
    const stream = await client.models.generateContentStream({ model, contents: 'Weather in Paris?', config });
    const calls = [];
    for await (const chunk of stream) calls.push(...(chunk.functionCalls ?? []));
    expect(calls).toMatchObject([{ name: 'get_weather', args: { location: 'Paris, France' } }]);
    await gateway.settled();
    // 95 × 0.3 + 7 × 2.5 = 28.5 + 17.5
    expect((await eventsOf(customer.accountId)).map((event) => event.amount)).toEqual(['46', '46']);
  });

  it('image and audio input, partly cached, and tool-use prompt tokens: no token in two buckets', async () => {
    const model = await gemini('generate-image-audio');
    const customer = await createCustomer({ balance: 1_000_000 });
    await genai(customer.apiKey).models.generateContent({
      model,
      contents: [{ role: 'user', parts: [{ text: 'What is this?' }, { inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } }, { inlineData: { mimeType: 'audio/wav', data: 'UklGRg==' } }] }],
    });
    await gateway.settled();
    // prompt 2100 = text 300 + image 1290 + audio 510; cached 600 = text 100 + image 500; tool-use prompt 50.
    // image 790, audio 510, cached 600, input 2100 − 600 − 790 − 510 + 50 = 250, output 6:
    // 250 × 0.3 + 600 × 0.03 + 790 × 0.3 + 510 × 1 + 6 × 2.5 = 75 + 18 + 237 + 510 + 15
    expect((await eventsOf(customer.accountId))[0]).toMatchObject({
      input_tokens: '250', cached_input_tokens: '600', image_tokens: '790', audio_tokens: '510', output_tokens: '6', amount: '855',
    });
  });

  it('client abort: the prompt Gemini reported plus the delivered output, hold released', async () => {
    const upstreamModel = `gemini-long-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture: 'generate-long', eventDelayMs: 40 });
    const model = await gemini(upstreamModel);
    const customer = await createCustomer({ balance: 1_000_000 });
    const controller = new AbortController();
    const stream = await genai(customer.apiKey).models.generateContentStream({ model, contents: 'Count', config: { abortSignal: controller.signal } });
    let chunks = 0;
    await expect(async () => {
      for await (const _chunk of stream) {
        chunks += 1;
        if (chunks === 5) controller.abort();
      }
    }).rejects.toThrow();
    await expect.poll(() => fake.requestsFor(upstreamModel)[0]?.clientClosed, { timeout: 5000 }).toBe(true);
    await gateway.settled();
    const [event] = await eventsOf(customer.accountId);
    const encoding = getEncoding('cl100k_base');
    const words = Array.from({ length: 80 }, (_, index) => ` word${index + 1}`);
    expect(event).toMatchObject({ status: 'aborted', usage_source: 'tokenizer', input_tokens: '30' });
    expect(Number(event.output_tokens)).toBeGreaterThanOrEqual(encoding.encode(words.slice(0, 5).join('')).length);
    expect(Number(event.output_tokens)).toBeLessThan(encoding.encode(words.join('')).length);
    const { rows: [account] } = await admin().query('select held from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe('0');
  });

  it('errors come back in Google\'s shape', async () => {
    const customer = await createCustomer({ balance: 1_000_000 });
    const unknown = await fetch(`${gateway.url}/v1beta/models/no-such-gemini:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }] }),
    });
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({ error: { code: 404, status: 'NOT_FOUND', reason: 'model_not_found' } });
    const bad = await fetch(`${gateway.url}/v1beta/models/gemini-2.5-flash:generateContent?key=${customer.apiKey}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ contents: 'not a list' }),
    });
    expect(bad.status).toBe(400);
    expect(await bad.json()).toMatchObject({ error: { code: 400, status: 'INVALID_ARGUMENT' } });
    const noSse = await fetch(`${gateway.url}/v1beta/models/gemini-2.5-flash:streamGenerateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }] }),
    });
    expect(noSse.status).toBe(400);
    expect(await noSse.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', message: expect.stringContaining('alt=sse') } });
    const grounded = await fetch(`${gateway.url}/v1beta/models/gemini-2.5-flash:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }], tools: [{ googleSearch: {} }] }),
    });
    // Google Search grounding is priced per search; gemini-2.5-flash here has no such price.
    expect(grounded.status).toBe(400);
    expect(await grounded.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', reason: 'tool_not_priced' } });
    const maps = await fetch(`${gateway.url}/v1beta/models/gemini-2.5-flash:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }], tools: [{ googleMaps: {} }] }),
    });
    expect(maps.status).toBe(400);
    expect(await maps.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', reason: 'unsupported_parameter' } });
    for (const responseModalities of [['TEXT', 'IMAGE'], ['AUDIO']]) {
      const unpriced = await fetch(`${gateway.url}/v1beta/models/gemini-2.5-flash:generateContent`, {
        method: 'POST',
        headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }], generationConfig: { responseModalities } }),
      });
      expect(unpriced.status).toBe(400);
      expect(await unpriced.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', reason: 'unsupported_parameter' } });
    }
    const badPath = await fetch(`${gateway.url}/v1beta/models/%E0%A4%A:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: '{}',
    });
    expect(badPath.status).toBe(404);
    expect(await badPath.json()).toMatchObject({ error: { code: 404, status: 'NOT_FOUND' } });
    expect(await eventsOf(customer.accountId)).toEqual([]);
  });
});

describe('Google Search grounding', () => {
  // $0.014 per search query ($14 per 1k), as Google bills grounding on Gemini 3.
  const grounded = () => createModel({ ...price, web_search: 14_000 }, { provider: 'google', upstreamModel: 'generate-grounded', maxOutputTokens: 65_536 });
  // (12 prompt + 1098 tool-use prompt) × 0.3 + (16 output + 88 thoughts) × 2.5 + 2 searches × 14,000 = 333 + 260 + 28,000.
  const charged = 28_593;

  async function searchEvent(accountId: string) {
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select status, usage_source, input_tokens::int, web_searches::int, charged::int from public.usage_events where account_id = $1',
      [accountId],
    );
    return event;
  }

  it('non-streaming: each of groundingMetadata.webSearchQueries is billed per search', async () => {
    const model = await grounded();
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await genai(customer.apiKey).models.generateContent({
      model, contents: 'When was PostgreSQL 18 released?', config: { tools: [{ googleSearch: {} }] },
    });
    expect(response.candidates?.[0]?.groundingMetadata?.webSearchQueries).toHaveLength(2);
    expect(fake.requestsFor('generate-grounded').at(-1)!.body.tools).toEqual([{ googleSearch: {} }]);
    expect(await searchEvent(customer.accountId)).toEqual({ status: 'completed', usage_source: 'provider', input_tokens: 1110, web_searches: 2, charged });
  });

  it("holds each search's results as input, as the other formats do: the 1,098 tool-use prompt tokens are within the hold", async () => {
    const model = await grounded();
    const customer = await createCustomer({ balance: 1_000_000 });
    await genai(customer.apiKey).models.generateContent({
      model, contents: 'When was PostgreSQL 18 released?', config: { tools: [{ googleSearch: {} }], maxOutputTokens: 200 },
    });
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select max_input_tokens::int, input_tokens::int, hold::int, charged::int from public.usage_events where account_id = $1',
      [customer.accountId],
    );
    // Ten searches held (no bound of the request's own), with 10,000 input tokens for the results of each.
    expect(event.max_input_tokens).toBeGreaterThanOrEqual(100_000);
    expect(event.input_tokens).toBe(1110);
    expect(event.hold).toBeGreaterThanOrEqual(event.charged);
  });

  it('streaming: the searches the last chunk reports are billed once', async () => {
    const model = await grounded();
    const customer = await createCustomer({ balance: 1_000_000 });
    const stream = await genai(customer.apiKey).models.generateContentStream({
      model, contents: 'When was PostgreSQL 18 released?', config: { tools: [{ googleSearch: {} }] },
    });
    let text = '';
    for await (const chunk of stream) text += chunk.text ?? '';
    expect(text).toBe('PostgreSQL 18 was released on 25 September 2025.');
    expect(await searchEvent(customer.accountId)).toEqual({ status: 'completed', usage_source: 'provider', input_tokens: 1110, web_searches: 2, charged });
  });
});


describe('service tiers', () => {
  it('Priority and Flex, billed by Google at other rates than the model\'s, are refused from the SDK and in every spelling; the standard tier passes as sent', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = genai(customer.apiKey);
    const sent = fake.requests.length;
    for (const serviceTier of [ServiceTier.PRIORITY, ServiceTier.FLEX]) {
      const error = await client.models.generateContent({ model, contents: 'What is the answer?', config: { serviceTier } }).then(() => null, (caught: unknown) => caught);
      expect(error, serviceTier).toBeInstanceOf(ApiError);
      expect((error as ApiError).status).toBe(400);
      expect(JSON.parse((error as ApiError).message)).toMatchObject({
        error: { status: 'INVALID_ARGUMENT', reason: 'unsupported_parameter', message: expect.stringContaining(`serviceTier "${serviceTier}" is not available`) },
      });
    }
    for (const fields of [{ service_tier: 'SERVICE_TIER_PRIORITY' }, { serviceTier: 'Priority' }, { service_tier: 'flex' }, { serviceTier: 3 }]) {
      const response = await fetch(`${gateway.url}/v1beta/models/${model}:generateContent`, {
        method: 'POST',
        headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ contents: [{ parts: [{ text: 'x' }] }], ...fields }),
      });
      expect(response.status, JSON.stringify(fields)).toBe(400);
      expect(await response.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', reason: 'unsupported_parameter' } });
    }
    expect(fake.requests.length).toBe(sent);
    expect(await eventsOf(customer.accountId)).toEqual([]);

    for (const serviceTier of [ServiceTier.STANDARD, ServiceTier.UNSPECIFIED]) {
      const response = await client.models.generateContent({ model, contents: 'What is the answer?', config: { serviceTier } });
      expect(response.text).toBeTruthy();
      expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toMatchObject({ serviceTier });
    }
  });
});

describe('field names in snake_case, which Google takes as well as camelCase', () => {
  const post = (model: string, apiKey: string, body: unknown) =>
    fetch(`${gateway.url}/v1beta/models/${model}:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': apiKey, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  const contents = [{ role: 'user', parts: [{ text: 'What is the answer?' }] }];

  async function holdOf(requestId: string | null) {
    await gateway.settled();
    const { rows: [event] } = await admin().query(
      'select max_input_tokens::int, max_output_tokens::int, choices, output_capped from public.usage_events where request_id = $1',
      [requestId],
    );
    return event;
  }

  it('snake_case tools and response modalities are refused like their camelCase names, before anything is sent or held', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const sent = fake.requests.length;
    const refusals: [Record<string, unknown>, string][] = [
      [{ tools: [{ google_search: {} }] }, 'tool_not_priced'],
      [{ tools: [{ google_search_retrieval: { dynamic_retrieval_config: { mode: 'MODE_DYNAMIC' } } }] }, 'unsupported_parameter'],
      [{ tools: [{ google_maps: {} }] }, 'unsupported_parameter'],
      [{ tools: [{ enterprise_web_search: {} }] }, 'unsupported_parameter'],
      [{ tools: [{ mcp_servers: [{ name: 'files', streamable_http_transport: { url: 'https://mcp.example.test' } }] }] }, 'unsupported_parameter'],
      [{ tools: [{ mcpServers: [{ name: 'files', streamableHttpTransport: { url: 'https://mcp.example.test' } }] }] }, 'unsupported_parameter'],
      [{ generation_config: { response_modalities: ['TEXT', 'IMAGE'] } }, 'unsupported_parameter'],
      [{ generationConfig: { response_modalities: ['AUDIO'] } }, 'unsupported_parameter'],
    ];
    for (const [fields, reason] of refusals) {
      const response = await post(model, customer.apiKey, { contents, ...fields });
      expect(response.status, JSON.stringify(fields)).toBe(400);
      expect(await response.json()).toMatchObject({ error: { status: 'INVALID_ARGUMENT', reason } });
    }
    expect(fake.requests.length).toBe(sent);
    expect(await eventsOf(customer.accountId)).toEqual([]);
  });

  it('generation_config: the output cap and candidate count are held, and sent on once, in camelCase', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await post(model, customer.apiKey, {
      contents,
      generation_config: { candidate_count: 2, max_output_tokens: 300, temperature: 0.5, thinking_config: { thinking_budget: 0 } },
    });
    expect(response.status).toBe(200);
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toEqual({
      contents,
      generationConfig: { candidateCount: 2, maxOutputTokens: 300, temperature: 0.5, thinkingConfig: { thinking_budget: 0 } },
    });
    expect(await holdOf(response.headers.get('x-request-id'))).toMatchObject({ max_output_tokens: 300, choices: 2, output_capped: false });
  });

  it('the output cap the gateway adds goes into the one generationConfig, beside what generation_config held', async () => {
    const model = await gemini('generate-cached-thoughts');
    // Affords a few thousand output tokens of the model's 65,536.
    const customer = await createCustomer({ balance: 10_000 });
    const response = await post(model, customer.apiKey, { contents, generation_config: { temperature: 0.5 } });
    expect(response.status).toBe(200);
    const cap = Number(response.headers.get('x-tollgate-max-tokens'));
    expect(cap).toBeGreaterThan(0);
    expect(cap).toBeLessThan(65_536);
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toEqual({ contents, generationConfig: { temperature: 0.5, maxOutputTokens: cap } });
  });

  it('system_instruction and inline_data count in the input bound', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await post(model, customer.apiKey, {
      system_instruction: { parts: [{ text: 'x'.repeat(100_000) }] },
      contents: [{ role: 'user', parts: [{ text: 'What is this?' }, { inline_data: { mime_type: 'image/png', data: 'iVBORw0KGgo=' } }] }],
      generation_config: { max_output_tokens: 100 },
    });
    expect(response.status).toBe(200);
    // 100,000 + 13 bytes of text, an image at 50,000, (1 + 1) × 8 of framing.
    expect(await holdOf(response.headers.get('x-request-id'))).toMatchObject({ max_input_tokens: 150_029 });
  });

  it('user data keeps its names: function parameters, arguments and responses, response schemas', async () => {
    const model = await gemini('generate-function-call');
    const customer = await createCustomer({ balance: 1_000_000 });
    const parameters = { type: 'OBJECT', properties: { city_name: { type: 'STRING' } }, required: ['city_name'] };
    const responseSchema = { type: 'OBJECT', properties: { first_name: { type: 'STRING' } }, property_ordering: ['first_name'] };
    const response = await post(model, customer.apiKey, {
      contents: [
        { role: 'user', parts: [{ text: 'Weather in Paris?' }] },
        { role: 'model', parts: [{ function_call: { name: 'get_weather', args: { city_name: 'Paris' } } }] },
        { role: 'user', parts: [{ function_response: { name: 'get_weather', response: { temp_c: 21, wind_speed: { max_kmh: 30 } } } }] },
      ],
      tools: [{ function_declarations: [{ name: 'get_weather', parameters }] }],
      generation_config: { response_mime_type: 'application/json', response_schema: responseSchema },
    });
    expect(response.status).toBe(200);
    expect(fake.requestsFor('generate-function-call').at(-1)!.body).toEqual({
      contents: [
        { role: 'user', parts: [{ text: 'Weather in Paris?' }] },
        { role: 'model', parts: [{ functionCall: { name: 'get_weather', args: { city_name: 'Paris' } } }] },
        { role: 'user', parts: [{ functionResponse: { name: 'get_weather', response: { temp_c: 21, wind_speed: { max_kmh: 30 } } } }] },
      ],
      tools: [{ functionDeclarations: [{ name: 'get_weather', parameters }] }],
      generationConfig: { responseMimeType: 'application/json', responseSchema },
    });
  });

  it('a field given in both spellings is a 400 that names it; nothing is sent, held or written', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 1_000_000 });
    const sent = fake.requests.length;
    const twice: [Record<string, unknown>, string[]][] = [
      [{ contents, generation_config: { temperature: 1 }, generationConfig: { maxOutputTokens: 5 } }, ['generation_config', 'generationConfig']],
      [{ contents, generationConfig: { maxOutputTokens: 5, max_output_tokens: 6 } }, ['maxOutputTokens', 'max_output_tokens']],
      [{ contents: [{ parts: [{ inline_data: { data: 'AA==' }, inlineData: { data: 'AA==' } }] }] }, ['inline_data', 'inlineData']],
    ];
    for (const [body, names] of twice) {
      const response = await post(model, customer.apiKey, body);
      expect(response.status).toBe(400);
      const { error } = await response.json();
      expect(error).toMatchObject({ code: 400, status: 'INVALID_ARGUMENT', reason: 'invalid_request' });
      for (const name of names) expect(error.message).toContain(name);
    }
    const stream = await fetch(`${gateway.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents, system_instruction: { parts: [] }, systemInstruction: { parts: [] } }),
    });
    expect(stream.status).toBe(400);
    expect(fake.requests.length).toBe(sent);
    expect(await eventsOf(customer.accountId)).toEqual([]);
  });
});

describe('content of unknown size is held at the largest context window served', () => {
  const post = (model: string, apiKey: string, body: unknown) =>
    fetch(`${gateway.url}/v1beta/models/${model}:generateContent`, {
      method: 'POST',
      headers: { 'x-goog-api-key': apiKey, 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });

  async function maxInputTokens(accountId: string) {
    await gateway.settled();
    const { rows } = await admin().query('select max_input_tokens::int from public.usage_events where account_id = $1 order by created_at', [accountId]);
    return rows.map((row) => row.max_input_tokens);
  }

  it('a fileData URI (Files API, YouTube), fetched by Google, in either spelling', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 10_000_000 });
    const uri = 'https://www.youtube.com/watch?v=9hE5-98ZeCg';
    for (const part of [{ fileData: { mimeType: 'video/mp4', fileUri: uri } }, { file_data: { mime_type: 'video/mp4', file_uri: uri } }]) {
      const response = await post(model, customer.apiKey, { contents: [{ role: 'user', parts: [part, { text: 'Summarize.' }] }], generationConfig: { maxOutputTokens: 50 } });
      expect(response.status).toBe(200);
    }
    // The bound of unknown content + 10 bytes of text + 16 of framing.
    expect(await maxInputTokens(customer.accountId)).toEqual([remoteContentTokenBound + 26, remoteContentTokenBound + 26]);
  });

  it('cachedContent, kept by Google and added to the prompt there, in either spelling', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 10_000_000 });
    for (const cache of [{ cachedContent: 'cachedContents/abc123' }, { cached_content: 'cachedContents/abc123' }]) {
      const response = await post(model, customer.apiKey, { ...cache, contents: [{ role: 'user', parts: [{ text: 'Summarize.' }] }], generationConfig: { maxOutputTokens: 50 } });
      expect(response.status).toBe(200);
    }
    expect(await maxInputTokens(customer.accountId)).toEqual([remoteContentTokenBound + 26, remoteContentTokenBound + 26]);
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toMatchObject({ cachedContent: 'cachedContents/abc123' });
  });

  it('a continuation token, whose generation so far Google puts back in the prompt, from the SDK and in either spelling', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 10_000_000 });
    const resumed = await genai(customer.apiKey).models.generateContent({
      model, contents: 'Summarize.', config: { continuationToken: 'Q09OVElOVUU=', automaticContinuation: false, maxOutputTokens: 50 },
    });
    expect(resumed.text).toBeTruthy();
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body).toMatchObject({ continuationToken: 'Q09OVElOVUU=' });
    const response = await post(model, customer.apiKey, { continuation_token: 'Q09OVElOVUU=', contents: [{ role: 'user', parts: [{ text: 'Summarize.' }] }], generationConfig: { maxOutputTokens: 50 } });
    expect(response.status).toBe(200);
    expect(await maxInputTokens(customer.accountId)).toEqual([remoteContentTokenBound + 26, remoteContentTokenBound + 26]);
  });

  it('the URL context tool, which reads the pages the prompt names into the input, in either spelling', async () => {
    const model = await gemini('generate-cached-thoughts');
    const customer = await createCustomer({ balance: 10_000_000 });
    const text = 'Summarize https://www.postgresql.org/about/news/ and https://redis.io/blog/.';
    for (const tools of [[{ urlContext: {} }], [{ url_context: {} }]]) {
      const response = await post(model, customer.apiKey, { contents: [{ role: 'user', parts: [{ text }] }], tools, generationConfig: { maxOutputTokens: 50 } });
      expect(response.status).toBe(200);
    }
    const held = await maxInputTokens(customer.accountId);
    expect(held.map((tokens: number) => tokens >= remoteContentTokenBound && tokens < remoteContentTokenBound + 200)).toEqual([true, true]);
    expect(fake.requestsFor('generate-cached-thoughts').at(-1)!.body.tools).toEqual([{ urlContext: {} }]);
  });
});

describe('a stream cut before its final usage', () => {
  async function cutStream(fixture: string) {
    const upstreamModel = `${fixture}-cut-${crypto.randomUUID()}`;
    fake.scenarios.set(upstreamModel, { fixture, disconnectAfterEvents: 1, eventDelayMs: 20 });
    const model = await gemini(upstreamModel);
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await fetch(`${gateway.url}/v1beta/models/${model}:streamGenerateContent?alt=sse`, {
      method: 'POST',
      headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' },
      body: JSON.stringify({ contents: [{ role: 'user', parts: [{ text: 'What is the answer?' }] }] }),
    });
    expect(response.status).toBe(200);
    await response.text();
    await gateway.settled();
    const [event] = await eventsOf(customer.accountId);
    return event;
  }

  it('bills the thoughts Google already reported in its running usageMetadata, with the prompt and the delivered output', async () => {
    // The first chunk: prompt 1200 (1000 cached), thoughts 140, text "The answer".
    const event = await cutStream('generate-cached-thoughts');
    const output = getEncoding('cl100k_base').encode('The answer').length;
    expect(event).toMatchObject({
      status: 'failed', usage_source: 'tokenizer', input_tokens: '200', cached_input_tokens: '1000', reasoning_tokens: '140', output_tokens: String(output),
    });
  });

  it('thought text those thoughts already count is not billed again as output', async () => {
    // The first chunk: a thought summary, prompt 80, thoughts 45.
    const event = await cutStream('generate-thought-call');
    expect(event).toMatchObject({ status: 'failed', usage_source: 'provider', input_tokens: '80', reasoning_tokens: '45', output_tokens: '0' });
  });
});

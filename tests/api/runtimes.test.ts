import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEdgeRuntime } from '../support/edge-runtime.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { admin, createCustomer, createModel, stack, type Customer } from '../support/supabase.ts';

// Both deploy targets serve the same routes and bill them the same: every case
// below goes through the Edge function (the bundle of api/index.ts, inside
// Vercel's edge-runtime VM) and through the Node.js function (api/node.ts's
// handlers, on Node), and each must answer alike and be charged alike.

type Dispatch = (path: string, init: RequestInit) => Promise<Response>;

let fake: FakeUpstream;
let edge: { dispatch: Dispatch; close: () => Promise<void> };
let node: { dispatch: Dispatch; close: () => Promise<void> };
const savedEnvironment = { ...process.env };

beforeAll(async () => {
  fake = await startFakeUpstream();
  const environment = {
    SUPABASE_URL: stack.supabaseUrl,
    SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
    OPENAI_BASE_URL: `${fake.url}/v1`,
    ANTHROPIC_BASE_URL: fake.url,
    GEMINI_BASE_URL: fake.url,
  };

  const runtime = await startEdgeRuntime(environment);
  edge = {
    dispatch: async (path, init) => {
      const response = await runtime.dispatchFetch(`https://gateway.example${path}`, init);
      const text = await response.text();
      await response.waitUntil();
      return new Response(text, { status: response.status, headers: response.headers });
    },
    close: async () => {},
  };

  // The Node.js entry reads its environment from process.env, as on Vercel.
  Object.assign(process.env, environment, { TOLLGATE_RUNTIME: 'node' });
  const entry = await import('../../api/node.ts');
  const byMethod: Record<string, (request: Request) => Response | Promise<Response>> = { GET: entry.GET, POST: entry.POST, OPTIONS: entry.OPTIONS };
  const server: ServerType = await new Promise((resolve) => {
    const started = serve({ fetch: (request: Request) => byMethod[request.method]!(request), port: 0, hostname: '127.0.0.1' }, () => resolve(started));
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  node = {
    dispatch: async (path, init) => {
      const response = await fetch(`${url}${path}`, init);
      return new Response(await response.text(), { status: response.status, headers: response.headers });
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
});

afterAll(async () => {
  await node?.close();
  await edge?.close();
  await fake.close();
  for (const name of Object.keys(process.env)) if (!(name in savedEnvironment)) delete process.env[name];
  Object.assign(process.env, savedEnvironment);
});

interface Case {
  name: string;
  path: (model: string) => string;
  body: (model: string) => unknown;
  headers?: Record<string, string>;
  provider: 'openai' | 'anthropic' | 'google';
  upstreamModel: string;
  /** A charged request: its usage row must be completed, charged alike on both runtimes. */
  charged: boolean;
  status?: number;
}

const chat = (stream: boolean) => (model: string) => ({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50, stream });

const cases: Case[] = [
  { name: 'chat completions', path: () => '/v1/chat/completions', body: chat(false), provider: 'openai', upstreamModel: 'chat-basic', charged: true },
  { name: 'chat completions, streamed', path: () => '/v1/chat/completions', body: chat(true), provider: 'openai', upstreamModel: 'chat-basic', charged: true },
  { name: 'chat completions for a Claude model', path: () => '/v1/chat/completions', body: chat(true), provider: 'anthropic', upstreamModel: 'messages-cache', charged: true },
  {
    name: 'Anthropic messages, streamed', path: () => '/v1/messages', provider: 'anthropic', upstreamModel: 'messages-cache', charged: true,
    body: (model) => ({ model, max_tokens: 100, stream: true, messages: [{ role: 'user', content: 'Hi' }] }), headers: { 'anthropic-version': '2023-06-01' },
  },
  { name: 'Responses API', path: () => '/v1/responses', provider: 'openai', upstreamModel: 'responses-basic', charged: true, body: (model) => ({ model, input: 'Say hello' }) },
  { name: 'Responses API, streamed', path: () => '/v1/responses', provider: 'openai', upstreamModel: 'responses-basic', charged: true, body: (model) => ({ model, input: 'Say hello', stream: true }) },
  { name: 'Responses API for a Claude model', path: () => '/v1/responses', provider: 'anthropic', upstreamModel: 'messages-cache', charged: true, body: (model) => ({ model, input: 'Hi', max_output_tokens: 100, stream: true }) },
  {
    name: 'Gemini generateContent', path: (model) => `/v1beta/models/${model}:generateContent`, provider: 'google', upstreamModel: 'generate-cached-thoughts', charged: true,
    body: () => ({ contents: [{ role: 'user', parts: [{ text: 'Hi' }] }] }),
  },
  {
    name: 'Gemini streamGenerateContent', path: (model) => `/v1beta/models/${model}:streamGenerateContent?alt=sse`, provider: 'google', upstreamModel: 'generate-cached-thoughts', charged: true,
    body: () => ({ contents: [{ role: 'user', parts: [{ text: 'Hi' }] }] }),
  },
  { name: 'embeddings', path: () => '/v1/embeddings', provider: 'openai', upstreamModel: 'embeddings', charged: true, body: (model) => ({ model, input: 'hello' }) },
  { name: 'bad JSON', path: () => '/v1/chat/completions', provider: 'openai', upstreamModel: 'chat-basic', charged: false, status: 400, body: () => '{"model":' },
];

async function send(dispatch: Dispatch, customer: Customer, kase: Case, model: string) {
  const body = kase.body(model);
  const response = await dispatch(kase.path(model), {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json', ...kase.headers },
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
  return { status: response.status, text: await response.text(), requestId: response.headers.get('x-request-id') };
}

async function usageOf(requestId: string | null) {
  const { rows } = await admin().query('select status, charged::int, usage_source from public.usage_events where request_id = $1', [requestId]);
  return rows[0];
}

describe('the Edge and the Node.js functions', () => {
  it('serve every route and charge every request alike', { timeout: 120_000 }, async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    for (const kase of cases) {
      const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { provider: kase.provider, upstreamModel: kase.upstreamModel, maxOutputTokens: 1000 });
      const results = [];
      for (const [name, target] of [['edge', edge], ['node', node]] as const) {
        const result = await send(target.dispatch, customer, kase, model);
        expect(result.status, `${kase.name} on ${name}: ${result.text.slice(0, 200)}`).toBe(kase.status ?? 200);
        if (kase.charged) {
          await expect.poll(() => usageOf(result.requestId), { timeout: 10_000 }).toMatchObject({ status: 'completed' });
        }
        results.push({ text: result.text, usage: kase.charged ? await usageOf(result.requestId) : null });
      }
      const [onEdge, onNode] = results;
      expect(onNode!.usage, kase.name).toEqual(onEdge!.usage);
      if (kase.charged) expect(onEdge!.usage.charged, kase.name).toBeGreaterThan(0);
      // Same answer, but for the ids and times each response mints.
      const normalize = (text: string) => text.replace(/"(id|created_at|created|response_id|item_id|responseId)":\s*("[^"]*"|\d+)/g, '"$1":_').replace(/(msg|resp|rs|fc|chatcmpl|call)_[A-Za-z0-9]+/g, '$1_');
      expect(normalize(onNode!.text), kase.name).toBe(normalize(onEdge!.text));
    }
  });

  it('only the function TOLLGATE_RUNTIME selects serves: the other answers 404', async () => {
    process.env.TOLLGATE_RUNTIME = 'edge';
    try {
      const response = await node.dispatch('/health', { method: 'GET' });
      expect(response.status).toBe(404);
      expect(await response.json()).toMatchObject({ error: { message: expect.stringContaining('edge function') } });
    } finally {
      process.env.TOLLGATE_RUNTIME = 'node';
    }
    expect((await node.dispatch('/health', { method: 'GET' })).status).toBe(200);
    expect((await edge.dispatch('/health', { method: 'GET' })).status).toBe(200);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from './support/fake-upstream.ts';
import { startGateway, type Gateway } from './support/gateway.ts';
import { createCustomer, createModel, type Customer } from './support/supabase.ts';

// Random requests, reproducible (a fixed seed), thrown at every route: whatever
// comes back, it is never a 500 and always JSON in the caller's shape.
let fake: FakeUpstream;
let gateway: Gateway;
let customer: Customer;
let models: string[];

function generator(seed: number) {
  let state = seed;
  const next = () => {
    state = (state * 1_103_515_245 + 12_345) % 2 ** 31;
    return state / 2 ** 31;
  };
  const pick = <T>(items: readonly T[]): T => items[Math.floor(next() * items.length)]!;
  const value = (depth: number): unknown => {
    const kind = pick(depth > 3 ? ['null', 'number', 'string', 'bool'] : ['null', 'number', 'string', 'bool', 'array', 'object', 'object']);
    switch (kind) {
      case 'null': return null;
      case 'number': return pick([0, -1, 1.5, 1e308, -1e12, 42, Number.MAX_SAFE_INTEGER]);
      case 'string': return pick(['', 'user', 'assistant', 'system', 'tool', 'x'.repeat(300), '😀', '%E0', 'data:image/png;base64,AAAA', 'text', 'image_url']);
      case 'bool': return next() < 0.5;
      case 'array': return Array.from({ length: Math.floor(next() * 4) }, () => value(depth + 1));
      default: {
        const keys = ['model', 'messages', 'role', 'content', 'type', 'text', 'max_tokens', 'stream', 'n', 'tools', 'input', 'contents', 'parts', 'generationConfig', 'maxOutputTokens', 'system', 'stream_options', 'image_url', 'url', 'tool_calls', 'function',
          'instructions', 'call_id', 'arguments', 'output', 'summary', 'encrypted_content', 'name', 'namespace', 'reasoning', 'effort', 'previous_response_id'];
        return Object.fromEntries(Array.from({ length: Math.floor(next() * 5) }, () => [pick(keys), value(depth + 1)]));
      }
    }
  };
  const body = (): string => {
    const roll = next();
    if (roll < 0.1) return pick(['', '{', 'null', '[]', '"x"', '{"model":', '\u0000']);
    const object = (value(0) ?? {}) as Record<string, unknown>;
    if (typeof object === 'object' && !Array.isArray(object) && next() < 0.7) object.model = pick(models);
    if (typeof object === 'object' && !Array.isArray(object) && next() < 0.5) {
      object.messages = [{ role: pick(['user', 'system', 'assistant', 'tool', 'wizard']), content: value(2) }];
      object.contents = [{ role: 'user', parts: [{ text: 'hi' }, value(3)] }];
      object.max_tokens = pick([1, 5, 0, -3, 1.5, '10']);
      object.input = [pick([{ role: 'user', content: value(2) }, { type: pick(['function_call', 'function_call_output', 'reasoning', 'custom_tool_call', 'message', 'x']), ...(value(2) as object) }])];
    }
    return JSON.stringify(object);
  };
  return { pick, body };
}

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url, STRIPE_WEBHOOK_SECRET: 'whsec_x' });
  customer = await createCustomer({ balance: 5_000_000 });
  models = [
    await createModel({ input: 1, output: 1 }, { upstreamModel: 'chat-basic' }),
    await createModel({ input: 1, output: 1 }, { provider: 'anthropic', upstreamModel: 'messages-cache' }),
    await createModel({ input: 1, output: 1 }, { provider: 'google', upstreamModel: 'generate-cached-thoughts' }),
    'no-such-model',
    'unpriced-preview',
  ];
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

describe('no client input gives a 500', () => {
  it('600 random requests across every route', async () => {
    const random = generator(20261123);
    const routes = [
      '/v1/chat/completions', '/v1/embeddings', '/v1/messages', '/v1/responses', '/v1/responses', '/webhooks/stripe', '/v1/credits', '/v1/models',
      `/v1beta/models/${models[2]}:generateContent`, `/v1beta/models/${models[2]}:streamGenerateContent?alt=sse`, '/v1beta/models/x:nothing', '/v1/unknown',
    ];
    const statuses = new Map<number, number>();
    for (let round = 0; round < 600; round++) {
      const path = random.pick(routes);
      const auth = random.pick([`Bearer ${customer.apiKey}`, 'Bearer tg_AAAAAAAAAAAAAAAAAAAAAAAA', '', 'Basic abc']);
      const response = await fetch(`${gateway.url}${path}`, {
        method: path.endsWith('credits') || path.endsWith('models') ? random.pick(['GET', 'POST']) : 'POST',
        headers: { authorization: auth, 'x-api-key': customer.apiKey, 'content-type': 'application/json', 'stripe-signature': 't=1,v1=00' },
        body: path.endsWith('credits') || path.endsWith('models') ? undefined : random.body(),
      });
      const text = await response.text();
      statuses.set(response.status, (statuses.get(response.status) ?? 0) + 1);
      expect(response.status, `${path}: ${text.slice(0, 300)}`).not.toBe(500);
      if (response.status >= 400 && !response.headers.get('content-type')?.includes('event-stream')) {
        expect(() => JSON.parse(text), `${path}: ${text.slice(0, 200)}`).not.toThrow();
      }
    }
    await gateway.settled();
    // The mix reached past validation too, not just the first check.
    expect([...statuses.keys()].filter((status) => status < 300).length).toBeGreaterThan(0);
    expect([...statuses.keys()].filter((status) => status >= 400 && status < 500).length).toBeGreaterThanOrEqual(3);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../lib/billing/ledger.ts';
import { startFakeUpstream, type FakeUpstream } from './support/fake-upstream.ts';
import { startGateway, type Gateway } from './support/gateway.ts';
import { admin, createCustomer, createModel, type Customer } from './support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;
let customer: Customer;
let model: string;

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, MAX_BODY_BYTES: '20000', TOPUP_URL: 'https://buy.stripe.com/test_tollgate' });
  customer = await createCustomer({ balance: 1_000_000 });
  model = await createModel({ input: 1_000_000, output: 1_000_000 }, { upstreamModel: 'chat-basic', maxOutputTokens: 1000 });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

async function writes(accountId: string) {
  const { rows: [row] } = await admin().query(
    `select (select count(*) from public.usage_events where account_id = $1)::int as usage_events,
            (select count(*) from public.credit_ledger where account_id = $1)::int as ledger_rows,
            (select balance from public.accounts where id = $1) as balance,
            (select held from public.accounts where id = $1) as held`,
    [accountId],
  );
  return row;
}

function post(body: string | object, headers: Record<string, string | undefined> = {}) {
  return fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: Object.fromEntries(
      Object.entries({ authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json', ...headers }).filter(([, value]) => value !== undefined),
    ) as Record<string, string>,
    body: typeof body === 'string' ? body : JSON.stringify(body),
  });
}

/** The body sent in pieces, with no Content-Length (chunked), as a client streaming its upload does. */
function postStreamed(body: object) {
  const bytes = new TextEncoder().encode(JSON.stringify(body));
  const stream = new ReadableStream<Uint8Array>({
    start(controller) {
      for (let offset = 0; offset < bytes.length; offset += 4096) controller.enqueue(bytes.subarray(offset, offset + 4096));
      controller.close();
    },
  });
  return fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: stream,
    duplex: 'half',
  } as RequestInit);
}

const messages = [{ role: 'user', content: 'Hi' }];

describe('bad input: a clear 4xx in OpenAI\'s shape, and nothing written', () => {
  const cases: Array<[string, () => Promise<Response>, number, string, string | null]> = [
    ['invalid JSON', () => post('{"model": '), 400, 'invalid_json', null],
    ['a body that is not an object', () => post('[1,2]'), 400, 'invalid_request', null],
    ['messages of the wrong type', () => post({ model, messages: 'hello' }), 400, 'invalid_request', 'messages'],
    ['a message without a role', () => post({ model, messages: [{ content: 'x' }] }), 400, 'invalid_request', 'messages.0.role'],
    ['a missing model', () => post({ messages }), 400, 'invalid_model', 'model'],
    ['a model of the wrong type', () => post({ model: 42, messages }), 400, 'invalid_model', 'model'],
    ['an unknown model', () => post({ model: 'no-such-model', messages }), 404, 'model_not_found', 'model'],
    ['an unpriced model', () => post({ model: 'unpriced-preview', messages }), 404, 'model_not_priced', 'model'],
    ['a body over the limit', () => post({ model, messages: [{ role: 'user', content: 'x'.repeat(30_000) }] }), 413, 'request_too_large', null],
    ['a body over the limit sent without a length', () => postStreamed({ model, messages: [{ role: 'user', content: 'x'.repeat(30_000) }] }), 413, 'request_too_large', null],
    ['no key', () => post({ model, messages }, { authorization: undefined }), 401, 'missing_api_key', null],
    ['a malformed key', () => post({ model, messages }, { authorization: 'Bearer sk-not-ours' }), 401, 'invalid_api_key', null],
    ['an unknown key', () => post({ model, messages }, { authorization: 'Bearer tg_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }), 401, 'invalid_api_key', null],
    ['a negative max_tokens', () => post({ model, messages, max_tokens: -5 }), 400, 'invalid_max_tokens', 'max_tokens'],
    ['a fractional max_tokens', () => post({ model, messages, max_tokens: 1.5 }), 400, 'invalid_max_tokens', 'max_tokens'],
    ['an absurd max_tokens', () => post({ model, messages, max_tokens: 1e12 }), 400, 'invalid_max_tokens', 'max_tokens'],
    ['max_tokens above the model\'s limit', () => post({ model, messages, max_completion_tokens: 1001 }), 400, 'invalid_max_tokens', 'max_tokens'],
    ['n out of range', () => post({ model, messages, n: 0 }), 400, 'invalid_request', 'n'],
    ['stream of the wrong type', () => post({ model, messages, stream: 'yes' }), 400, 'invalid_request', 'stream'],
    ['priority processing', () => post({ model, messages, service_tier: 'priority' }), 400, 'unsupported_parameter', 'service_tier'],
    ['web search', () => post({ model, messages, web_search_options: {} }), 400, 'unsupported_parameter', 'web_search_options'],
    ['audio output', () => post({ model, messages, modalities: ['text', 'audio'], audio: { voice: 'alloy', format: 'wav' } }), 400, 'unsupported_parameter', 'modalities'],
    ['audio output settings alone', () => post({ model, messages, audio: { voice: 'alloy', format: 'wav' } }), 400, 'unsupported_parameter', 'audio'],
    ['a NUL in the model name', () => post({ model: 'gpt\u0000x', messages }), 404, 'model_not_found', 'model'],
    ['a forwarded address that is not one', () => post({ model: 'no-such-model', messages }, { 'x-forwarded-for': 'beef' }), 404, 'model_not_found', 'model'],
  ];

  it.each(cases)('%s', async (_name, send, status, code, param) => {
    const before = await writes(customer.accountId);
    const upstreamCalls = fake.requests.length;
    const response = await send();
    expect(response.status).toBe(status);
    expect(response.headers.get('x-request-id')).toMatch(/^[0-9a-f-]{36}$/);
    const body = await response.json();
    expect(body).toEqual({ error: { message: expect.any(String), type: expect.any(String), code, param } });
    expect(body.error.message.length).toBeGreaterThan(10);
    await gateway.settled();
    expect(await writes(customer.accountId)).toEqual(before);
    expect(fake.requests.length).toBe(upstreamCalls);
  });

  it('a revoked key and an expired key', async () => {
    const other = await createCustomer({ balance: 1_000_000 });
    const keys = createApiKeyManager(other.client);
    const expiring = await keys.createApiKey('short-lived', new Date(Date.now() + 60_000));
    await admin().query(`update public.api_keys set expires_at = now() - interval '1 minute' where id = $1`, [expiring.id]);
    await keys.revokeApiKey(other.apiKeyId);
    const before = await writes(other.accountId);

    const revoked = await post({ model, messages }, { authorization: `Bearer ${other.apiKey}` });
    expect(revoked.status).toBe(401);
    expect(await revoked.json()).toMatchObject({ error: { code: 'api_key_revoked', type: 'authentication_error' } });
    const expired = await post({ model, messages }, { authorization: `Bearer ${expiring.key}` });
    expect(expired.status).toBe(401);
    expect(await expired.json()).toMatchObject({ error: { code: 'api_key_expired' } });
    expect(await writes(other.accountId)).toEqual(before);
  });

  it('a body within the limit sent without a length is read and served', async () => {
    const response = await postStreamed({ model, messages: [{ role: 'user', content: 'y'.repeat(10_000) }] });
    expect(response.status).toBe(200);
    expect(await response.json()).toMatchObject({ object: 'chat.completion' });
    expect(fake.requests.at(-1)?.body).toMatchObject({ messages: [{ role: 'user', content: 'y'.repeat(10_000) }] });
  });

  it('unknown routes answer 404 in OpenAI\'s shape', async () => {
    const response = await fetch(`${gateway.url}/v1/nothing`);
    expect(response.status).toBe(404);
    expect(await response.json()).toMatchObject({ error: { code: 'not_found' } });
    expect(response.headers.get('x-request-id')).toBeTruthy();
  });
});

describe('insufficient credits', () => {
  it('402 with the amount available and a top-up URL carrying the account', async () => {
    const poor = await createCustomer({ balance: 100 });
    const before = await writes(poor.accountId);
    const response = await post({ model, messages, max_tokens: 500 }, { authorization: `Bearer ${poor.apiKey}` });
    expect(response.status).toBe(402);
    const body = await response.json();
    // The cheapest active pack's Payment Link, or TOPUP_URL when no pack has one, carrying the account.
    expect(body).toMatchObject({ error: { code: 'insufficient_credits', type: 'insufficient_credits', available: 100, top_up_url: expect.stringContaining(`client_reference_id=${poor.accountId}`) } });
    expect(body.error.message).toContain(body.error.top_up_url);
    expect(await writes(poor.accountId)).toEqual(before);
  });

  it('with no max_tokens, caps the output to what the balance affords and says so', async () => {
    // Input bound: "user" + "Hi" = 6 bytes + 3 + 3 = 12 tokens at 1 micro each; 100 micro-units leave 88 output tokens.
    const poor = await createCustomer({ balance: 100 });
    const response = await post({ model, messages }, { authorization: `Bearer ${poor.apiKey}` });
    expect(response.status).toBe(200);
    expect(response.headers.get('x-tollgate-max-tokens')).toBe('88');
    expect(fake.requestsFor('chat-basic').at(-1)!.body.max_completion_tokens).toBe(88);
    await gateway.settled();
    // The upstream reported 19 + 9 tokens: 28 micro-units.
    expect(await writes(poor.accountId)).toMatchObject({ balance: '72', held: '0' });
  });

  it('a cap it adds goes without a prediction, which OpenAI refuses max_completion_tokens beside: the request is served; a prediction with no cap added passes as sent', async () => {
    const prediction = { type: 'content', content: 'Hello! How can I help you today?' };
    const poor = await createCustomer({ balance: 100 });
    const capped = await post({ model, messages, prediction }, { authorization: `Bearer ${poor.apiKey}` });
    expect(capped.status).toBe(200);
    expect(capped.headers.get('x-tollgate-max-tokens')).toBe('88');
    const sent = fake.requestsFor('chat-basic').at(-1)!.body;
    expect(sent.max_completion_tokens).toBe(88);
    expect(sent).not.toHaveProperty('prediction');

    const rich = await createCustomer({ balance: 100_000_000 });
    const served = await post({ model, messages, prediction }, { authorization: `Bearer ${rich.apiKey}` });
    expect(served.status).toBe(200);
    expect(served.headers.get('x-tollgate-max-tokens')).toBeNull();
    const body = fake.requestsFor('chat-basic').at(-1)!.body;
    expect(body.prediction).toEqual(prediction);
    expect(body).not.toHaveProperty('max_completion_tokens');
    expect(body).not.toHaveProperty('max_tokens');
  });
});

describe('the request path', () => {
  it('makes one database round trip before the upstream call for a new key, none for a warm one, and settles in one call after', async () => {
    const fresh = await createCustomer({ balance: 100_000_000 });
    const paths = (events: typeof gateway.events) => events.map((event) => (event.kind === 'upstream' ? 'upstream' : new URL(event.url).pathname));
    for (const [index, stream] of [false, true, false].entries()) {
      const mark = gateway.events.length;
      const response = await post({ model, messages, stream }, { authorization: `Bearer ${fresh.apiKey}` });
      await response.text();
      await gateway.settled();
      const events = paths(gateway.events.slice(mark));
      // The first request: authorize, then upstream. After it the key is warm on
      // this instance: the upstream call is sent together with authorize.
      if (index === 0) expect(events.slice(0, 2)).toEqual(['/rest/v1/rpc/authorize_request', 'upstream']);
      else expect(events.slice(0, 2).sort()).toEqual(['/rest/v1/rpc/authorize_request', 'upstream']);
      // Settlement comes after, through waitUntil, in one batch call.
      expect(events.slice(2)).toEqual(['/rest/v1/rpc/settle_requests']);
    }
  });

  it('serves /health without touching the database', async () => {
    const mark = gateway.events.length;
    const response = await fetch(`${gateway.url}/health`);
    expect(await response.json()).toEqual({ status: 'ok' });
    expect(gateway.events.length).toBe(mark);
  });
});

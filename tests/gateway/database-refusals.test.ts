import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { createCustomer, createModel } from '../support/supabase.ts';

// The database refusing a call is the client's error only when it refuses the
// client's input itself (SQLSTATE class 22). A refusal of our own making (a
// function missing from PostgREST's schema cache after a deploy, a read-only
// standby) is an outage: 503 billing_unavailable, as the client's retry logic expects.

let fake: FakeUpstream;
let gateway: Gateway;
/** What PostgREST answers for the authorization functions, instead of calling them. */
let refusal: { status: number; body: Record<string, unknown> } | undefined;

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url }, {
    databaseFetch: async (input, init) => {
      if (refusal && /\/rpc\/authorize_(request|uncharged_call)$/.test(String(input))) {
        return new Response(JSON.stringify(refusal.body), { status: refusal.status, headers: { 'content-type': 'application/json' } });
      }
      return fetch(input, init);
    },
  });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

describe('a refusal from the database', () => {
  it.each([
    ['a function missing from the schema cache', 404, { code: 'PGRST202', message: 'Could not find the function public.authorize_request in the schema cache' }, 503, 'billing_unavailable'],
    ['a read-only standby', 405, { code: '25006', message: 'cannot execute UPDATE in a read-only transaction' }, 503, 'billing_unavailable'],
    ['the input itself (class 22)', 400, { code: '22P02', message: 'invalid input syntax for type inet' }, 400, 'invalid_request'],
  ])('%s: %i %s', async (_name, status, body, expected, code) => {
    refusal = { status, body };
    try {
      const model = await createModel({ input: 1_000_000, output: 1_000_000 }, { upstreamModel: 'chat-basic' });
      const claude = await createModel({ input: 1_000_000, output: 1_000_000 }, { provider: 'anthropic', upstreamModel: 'messages-cache' });
      const customer = await createCustomer({ balance: 1_000_000 });
      const chat = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
      });
      const counted = await fetch(`${gateway.url}/v1/messages/count_tokens`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model: claude, messages: [{ role: 'user', content: 'hi' }] }),
      });
      expect([chat.status, ((await chat.json()) as { error: { code: string } }).error.code]).toEqual([expected, code]);
      expect([counted.status, ((await counted.json()) as { error: { code: string } }).error.code]).toEqual([expected, code]);
    } finally {
      refusal = undefined;
    }
  });
});

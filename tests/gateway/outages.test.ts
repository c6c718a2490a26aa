import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { startPrivateStack, type PrivateCustomer, type PrivateStack } from '../support/private-stack.ts';
import { checkoutSession, signature, stripeEvent } from '../support/stripe-events.ts';

// Real processes stopped, paused and restarted under a gateway that is
// answering: PostgREST killed, PostgreSQL restarted, stopped and frozen, Redis
// stopped. On a stack of this file's own, so the rest of the suite is unaffected.

const run = promisify(execFile);
const cronSecret = 'outage-test-cron-secret';
const webhookSecret = 'whsec_outage_test';
const price = { input: 1_000_000, output: 4_000_000 };

let privateStack: PrivateStack;
let upstash: LocalUpstash;
let fake: FakeUpstream;
let gateway: Gateway;

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

beforeAll(async () => {
  [privateStack, upstash, fake] = await Promise.all([startPrivateStack(), startLocalUpstash(), startFakeUpstream()]);
  // The upstream streams slowly enough for an outage to start in the middle.
  fake.scenarios.set('chat-long', { fixture: 'chat-long', eventDelayMs: 15 });
  gateway = await startGateway(
    {
      OPENAI_BASE_URL: `${fake.url}/v1`,
      ANTHROPIC_BASE_URL: fake.url,
      GEMINI_BASE_URL: fake.url,
      UPSTASH_REDIS_REST_URL: upstash.url,
      UPSTASH_REDIS_REST_TOKEN: upstash.token,
      CRON_SECRET: cronSecret,
      STRIPE_WEBHOOK_SECRET: webhookSecret,
      DATABASE_TIMEOUT_MS: '1000',
    },
    { supabase: privateStack.stack },
  );
}, 120_000);

afterAll(async () => {
  await gateway?.close();
  await fake?.close();
  await upstash?.stop();
  await privateStack?.stop();
});

afterEach(async () => {
  expect(await privateStack.invariantViolations()).toEqual([]);
});

/** Starts a streamed chat request and resolves once its first event arrived; `rest` resolves with the whole text. */
async function startStream(customer: PrivateCustomer, model: string) {
  const response = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Count' }], stream: true }),
  });
  expect(response.status).toBe(200);
  const reader = response.body!.getReader();
  const decoder = new TextDecoder();
  let text = decoder.decode((await reader.read()).value);
  const rest = (async () => {
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) text += decoder.decode(chunk.value);
    return text;
  })();
  return { requestId: response.headers.get('x-request-id')!, rest };
}

/** The request's row and its usage ledger rows: what it was charged, and how many times. */
async function bill(requestId: string) {
  const { rows: [event] } = await privateStack.admin.query(
    'select status, usage_source, amount::int, charged::int, hold_expired_at from public.usage_events where request_id = $1',
    [requestId],
  );
  const { rows: ledger } = await privateStack.admin.query(
    `select amount::int from public.credit_ledger where reason = 'usage' and reference = $1`,
    [requestId],
  );
  return { event, ledger: ledger.map((row) => row.amount as number) };
}

async function waitForPostgrest() {
  for (let attempt = 0; attempt < 200; attempt++) {
    const response = await fetch(`${privateStack.stack.supabaseUrl}/rest/v1/model_prices?limit=1`, {
      headers: { apikey: privateStack.stack.serviceRoleKey },
    }).catch(() => undefined);
    if (response?.status === 200) return;
    await sleep(100);
  }
  throw new Error('PostgREST did not come back');
}

const drain = () =>
  fetch(`${gateway.url}/internal/settlements/drain`, { headers: { authorization: `Bearer ${cronSecret}` } });

describe('no bill is lost to an outage', () => {
  it('PostgREST killed for 5 s during a streamed request: settled by the retries once it returns, once', async () => {
    const model = await privateStack.createModel(price, { upstreamModel: 'chat-long' });
    const customer = await privateStack.createCustomer(10_000_000);
    const { requestId, rest } = await startStream(customer, model);
    await privateStack.stack.processes.killPostgrest();
    const downAt = Date.now();
    expect(await rest).toContain('[DONE]');
    await sleep(5_000 - (Date.now() - downAt));
    await privateStack.stack.processes.startPostgrest();
    await gateway.settled();

    const { event, ledger } = await bill(requestId);
    expect(event).toMatchObject({ status: 'completed', usage_source: 'provider' });
    expect(event.amount).toBeGreaterThan(0);
    expect(ledger).toEqual([-event.amount]);
    expect(gateway.logs.filter((entry) => entry.requestId === requestId && entry.event === 'settlement_queued')).toEqual([]);
  });

  it('PostgREST killed for 60 s: the settlement outlives the retries in the outbox, and the drain charges it once', { timeout: 120_000 }, async () => {
    const model = await privateStack.createModel(price, { upstreamModel: 'chat-long' });
    const customer = await privateStack.createCustomer(10_000_000);
    const { requestId, rest } = await startStream(customer, model);
    await privateStack.stack.processes.killPostgrest();
    const downAt = Date.now();
    await rest;
    // The retries give up after SETTLE_RETRY_WINDOW_MS (25 s) and leave it in the outbox.
    await gateway.settled();
    expect(gateway.logs.filter((entry) => entry.requestId === requestId).map((entry) => entry.event)).toEqual(['settlement_queued']);
    // A drain while the database is still away changes nothing.
    const early = await drain();
    expect(early.status).toBe(503);
    expect(early.headers.get('retry-after')).toBe('5');

    await sleep(60_000 - (Date.now() - downAt));
    await privateStack.stack.processes.startPostgrest();
    await waitForPostgrest();
    expect(await (await drain()).json()).toMatchObject({ status: 'drained', settled: 1, pending: 0, setAside: 0 });
    expect(await (await drain()).json()).toMatchObject({ status: 'drained', settled: 0, replayed: 0, pending: 0 });

    const { event, ledger } = await bill(requestId);
    expect(event).toMatchObject({ status: 'completed', usage_source: 'provider', hold_expired_at: null });
    expect(event.amount).toBeGreaterThan(0);
    expect(ledger).toEqual([-event.amount]);
  });

  it('what the outbox keeps is settled as soon as the database answers the instance again, without waiting for the scheduled drain', { timeout: 90_000 }, async () => {
    // Retries give up after 3 s here, so the settlements reach the outbox quickly.
    const quick = await startGateway(
      { OPENAI_BASE_URL: `${fake.url}/v1`, UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token, DATABASE_TIMEOUT_MS: '1000', SETTLE_RETRY_WINDOW_MS: '3000' },
      { supabase: privateStack.stack },
    );
    try {
      const model = await privateStack.createModel(price, { upstreamModel: 'chat-long' });
      const short = await privateStack.createModel(price, { upstreamModel: 'chat-basic' });
      const customer = await privateStack.createCustomer(10_000_000);
      // A key that may have two requests in flight: its queued settlements' holds would count as two.
      await privateStack.admin.query('update public.api_keys set max_concurrent = 2 where id = $1', [customer.apiKeyId]);
      const ask = (stream: boolean) =>
        fetch(`${quick.url}/v1/chat/completions`, {
          method: 'POST',
          headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
          body: JSON.stringify({ model: stream ? model : short, messages: [{ role: 'user', content: 'Count' }], stream }),
        }).then(async (response) => ({ status: response.status, requestId: response.headers.get('x-request-id')!, text: await response.text() }));
      const streams = [ask(true), ask(true)];
      await sleep(300);
      await privateStack.stack.processes.killPostgrest();
      const served = await Promise.all(streams);
      await quick.settled();
      expect(served.map((answer) => answer.status)).toEqual([200, 200]);
      expect(quick.logs.filter((entry) => entry.event === 'settlement_queued')).toHaveLength(2);

      await privateStack.stack.processes.startPostgrest();
      await waitForPostgrest();
      // The first answer from the database starts the drain; nothing else calls it.
      await ask(false);
      await quick.settled();
      expect(quick.logs.filter((entry) => entry.event === 'settlement_outbox_caught_up')).toEqual([expect.objectContaining({ status: 'drained', settled: 2, pending: 0 })]);
      for (const { requestId } of served) {
        const { event, ledger } = await bill(requestId);
        expect(event).toMatchObject({ status: 'completed', usage_source: 'provider' });
        expect(ledger).toEqual([-event.amount]);
      }
      // Nothing in flight counts against the key any more.
      expect((await ask(false)).status).toBe(200);
    } finally {
      await quick.close();
    }
  });

  it('PostgreSQL restarted during a streamed request: charged once', async () => {
    const model = await privateStack.createModel(price, { upstreamModel: 'chat-long' });
    const customer = await privateStack.createCustomer(10_000_000);
    const { requestId, rest } = await startStream(customer, model);
    await privateStack.stack.processes.restartPostgres();
    await rest;
    await gateway.settled();
    const { event, ledger } = await bill(requestId);
    expect(event).toMatchObject({ status: 'completed', usage_source: 'provider' });
    expect(ledger).toEqual([-event.amount]);
  });

  it('PostgreSQL and Redis both down: the log line carries the bill, and the replay command charges it exactly once', { timeout: 90_000 }, async () => {
    const redisToFail = await startLocalUpstash();
    const shortRetries = await startGateway(
      {
        OPENAI_BASE_URL: `${fake.url}/v1`,
        UPSTASH_REDIS_REST_URL: redisToFail.url,
        UPSTASH_REDIS_REST_TOKEN: redisToFail.token,
        DATABASE_TIMEOUT_MS: '1000',
        SETTLE_RETRY_WINDOW_MS: '2000',
      },
      { supabase: privateStack.stack },
    );
    const logDir = await mkdtemp(join(tmpdir(), 'tollgate-replay-'));
    try {
      const model = await privateStack.createModel(price, { upstreamModel: 'chat-basic' });
      const customer = await privateStack.createCustomer(10_000_000);
      await redisToFail.stopRedis();
      await privateStack.stack.processes.stopPostgres();
      const response = await fetch(`${shortRetries.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }] }),
      });
      // Authorize cannot run: refused before anything is sent.
      expect(response.status).toBe(503);
      expect(await response.json()).toMatchObject({ error: { code: 'billing_unavailable' } });
      await privateStack.stack.processes.startPostgres();
      await waitForPostgrest();

      // Authorized now, then both go away while it is answered.
      const started = await fetch(`${shortRetries.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: await privateStack.createModel(price, { upstreamModel: 'chat-long' }), messages: [{ role: 'user', content: 'Count' }], stream: true }),
      });
      const requestId = started.headers.get('x-request-id')!;
      await privateStack.stack.processes.stopPostgres();
      await started.text();
      await shortRetries.settled();
      const lines = shortRetries.logs.filter((entry) => entry.requestId === requestId && entry.event === 'settlement_unrecorded');
      expect(lines).toHaveLength(1);
      expect(lines[0]!.settlement).toMatchObject({ request_id: requestId, outcome: 'completed', usage_source: 'provider', usage: { input: expect.any(Number), output: expect.any(Number) } });

      // As a log platform keeps them: a prefix per line, other lines around.
      const logFile = join(logDir, 'gateway.log');
      await writeFile(logFile, shortRetries.logs.map((entry) => `2026-11-27T12:00:00Z api/index ${JSON.stringify(entry)}`).join('\n') + '\nnot json\n');
      await privateStack.stack.processes.startPostgres();
      await waitForPostgrest();
      const environment = { ...process.env, SUPABASE_URL: privateStack.stack.supabaseUrl, SUPABASE_SERVICE_ROLE_KEY: privateStack.stack.serviceRoleKey };
      // (The hold given back for the first call may be in the log too, when the database
      // stayed away past its retries: the replay settles that as well.)
      const first = await run('npx', ['tsx', 'scripts/replay-settlements.ts', logFile], { env: environment });
      expect(first.stdout).toMatch(new RegExp(`${requestId}: settled \\(completed, charged \\d+\\)`));
      expect(first.stdout).toMatch(/already settled 0, refused 0/);
      const second = await run('npx', ['tsx', 'scripts/replay-settlements.ts', logFile], { env: environment });
      expect(second.stdout).toMatch(new RegExp(`${requestId}: already settled \\(completed, charged \\d+\\)`));
      expect(second.stdout).toMatch(/\nsettled 0, already settled \d, refused 0/);

      const { event, ledger } = await bill(requestId);
      expect(event).toMatchObject({ status: 'completed', usage_source: 'provider' });
      expect(ledger).toEqual([-event.amount]);
    } finally {
      await shortRetries.close();
      await redisToFail.stop();
      await rm(logDir, { recursive: true, force: true });
    }
  });
});

describe('a stalled database', () => {
  it('every route answers 503 within its deadline, and a request its client abandoned never reaches the upstream', { timeout: 90_000 }, async () => {
    const model = await privateStack.createModel(price, { upstreamModel: 'chat-basic' });
    const claude = await privateStack.createModel(price, { provider: 'anthropic', upstreamModel: 'messages-cache' });
    const gemini = await privateStack.createModel(price, { provider: 'google', upstreamModel: 'generate-cached-thoughts', maxOutputTokens: 8192 });
    const customer = await privateStack.createCustomer(10_000_000);
    const upstreamBefore = fake.requests.length;
    const event = JSON.stringify(stripeEvent('checkout.session.completed', checkoutSession({ clientReferenceId: customer.accountId, paymentLink: 'plink_stalled', amount: 1000 })));
    const bearer = { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' };
    const calls: Array<[string, string, RequestInit, (body: unknown) => void]> = [
      ['chat', '/v1/chat/completions', { method: 'POST', headers: bearer, body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }) },
        (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable', type: 'server_error' } })],
      ['chat stream', '/v1/chat/completions', { method: 'POST', headers: bearer, body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], stream: true }) },
        (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable' } })],
      ['embeddings', '/v1/embeddings', { method: 'POST', headers: bearer, body: JSON.stringify({ model, input: 'hi' }) },
        (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable' } })],
      ['messages', '/v1/messages', { method: 'POST', headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' }, body: JSON.stringify({ model: claude, max_tokens: 10, messages: [{ role: 'user', content: 'hi' }] }) },
        (body) => expect(body).toMatchObject({ type: 'error', error: { type: 'api_error', code: 'billing_unavailable' } })],
      ['gemini', `/v1beta/models/${gemini}:generateContent`, { method: 'POST', headers: { 'x-goog-api-key': customer.apiKey, 'content-type': 'application/json' }, body: JSON.stringify({ contents: [{ parts: [{ text: 'hi' }] }] }) },
        (body) => expect(body).toMatchObject({ error: { code: 503, status: 'UNAVAILABLE', reason: 'billing_unavailable' } })],
      ['credits', '/v1/credits', { headers: bearer }, (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable' } })],
      ['models', '/v1/models', { headers: bearer }, (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable' } })],
      ['stripe webhook', '/webhooks/stripe', { method: 'POST', headers: { 'content-type': 'application/json', 'stripe-signature': signature(event, webhookSecret) }, body: event },
        (body) => expect(body).toMatchObject({ error: { code: 'billing_unavailable' } })],
    ];

    privateStack.stack.processes.pausePostgres();
    try {
      // A client that gives up while authorize hangs.
      const abandoned = new AbortController();
      const abandonedCall = fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST', headers: bearer, signal: abandoned.signal, body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }] }),
      }).catch((error: unknown) => error);
      setTimeout(() => abandoned.abort(), 200);

      const results = await Promise.all(
        calls.map(async ([name, path, init, check]) => {
          const started = performance.now();
          const response = await fetch(`${gateway.url}${path}`, init);
          const body = await response.json();
          return { name, status: response.status, retryAfter: response.headers.get('retry-after'), elapsed: performance.now() - started, body, check };
        }),
      );
      for (const result of results) {
        expect({ name: result.name, status: result.status, retryAfter: result.retryAfter }).toEqual({ name: result.name, status: 503, retryAfter: '5' });
        // DATABASE_TIMEOUT_MS is 1,000 ms; answering takes a little more.
        expect(result.elapsed, result.name).toBeLessThan(2_500);
        result.check(result.body);
      }
      expect(await abandonedCall).toBeInstanceOf(Error);
      // Frozen a while longer: the gateway's late arrivals must not send anything either.
      await sleep(3_000);
    } finally {
      privateStack.stack.processes.resumePostgres();
    }
    await gateway.settled();
    expect(fake.requests.length).toBe(upstreamBefore);
    // Authorizations that PostgreSQL ran after it woke were given back: nothing held, nothing charged.
    const { rows: [usage] } = await privateStack.admin.query(
      `select (select held::int from public.accounts where id = $1) as held,
              count(*) filter (where status = 'held')::int as open, coalesce(sum(charged), 0)::int as charged
         from public.usage_events where account_id = $1`,
      [customer.accountId],
    );
    expect(usage).toEqual({ held: 0, open: 0, charged: 0 });
  });

  it("a warm key whose authorization fails is cold: while the database is away its requests reach the upstream only on holds taken ahead, and one more", { timeout: 90_000 }, async () => {
    const model = await privateStack.createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await privateStack.createCustomer(100_000_000);
    const ask = () =>
      fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 20 }),
      }).then(async (response) => (await response.text(), response.status));
    // Warm on this instance: authorized, with headroom.
    for (let i = 0; i < 3; i++) expect(await ask()).toBe(200);
    await gateway.settled();
    const before = fake.requests.length;
    const statuses: number[] = [];
    privateStack.stack.processes.pausePostgres();
    try {
      for (let i = 0; i < 6; i++) statuses.push(await ask());
      // Cold by now: however many come at once, none is sent before its hold.
      const sentBeforeBurst = fake.requests.length;
      statuses.push(...(await Promise.all(Array.from({ length: 16 }, ask))));
      expect(fake.requests.length).toBe(sentBeforeBurst);
    } finally {
      privateStack.stack.processes.resumePostgres();
    }
    await gateway.settled();
    // Served: requests that adopted a hold taken ahead (paid for by it); the rest 503.
    const served = statuses.filter((status) => status === 200).length;
    expect(statuses.filter((status) => status !== 200).every((status) => status === 503)).toBe(true);
    // The first request refused after the key's last success had started its call early; no other did.
    expect(fake.requests.length - before).toBeLessThanOrEqual(served + 1);
  });
});

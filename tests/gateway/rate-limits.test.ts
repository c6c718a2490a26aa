import { createServer, type Server } from 'node:net';
import { createServer as createHttpServer } from 'node:http';
import { Redis } from '@upstash/redis';
import { beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { createRateLimiter } from '../../lib/gateway/rate-limits.ts';
import { startLocalUpstash } from '../../scripts/local-upstash.ts';
import type { Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';
import { upstashGateways } from '../support/upstash-gateways.ts';

const setup = upstashGateways(() => ({ ANTHROPIC_BASE_URL: setup.fake.url, RATE_LIMIT_WINDOW_SECONDS: '2' }));
const { gatewayWith } = setup;

/**
 * Sliding windows are weighted across fixed windows aligned on the clock; a burst
 * that straddles a boundary may let one more through. Tests start their burst at
 * the beginning of a window.
 */
async function startOfWindow(windowMs: number) {
  const into = Date.now() % windowMs;
  if (into > windowMs * 0.3) await new Promise((resolve) => setTimeout(resolve, windowMs - into + 20));
}

/** A customer whose key allows `rpm` requests per window. */
async function limitedCustomer(policy: { requests_per_minute?: number; tokens_per_minute?: number }) {
  const customer = await createCustomer({ balance: 10_000_000 });
  await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, policy);
  return customer;
}

const chat = (gateway: Gateway, apiKey: string, content = 'Hi') =>
  fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: chatModel, messages: [{ role: 'user', content }], max_tokens: 100 }),
  });

let chatModel: string;
beforeAll(async () => {
  chatModel = await createModel({ input: 1, output: 1 }, { upstreamModel: 'chat-basic' });
});

describe('the local Upstash endpoint', () => {
  it('serves the @upstash/redis client itself, over a real redis-server', async () => {
    const redis = new Redis({ url: setup.upstash.url, token: setup.upstash.token });
    const key = `probe:${crypto.randomUUID()}`;
    expect(await redis.set(key, 'grüße 🌍')).toBe('OK');
    expect(await redis.get(key)).toBe('grüße 🌍');
    expect(await redis.incr(`${key}:n`)).toBe(1);
    const pipeline = redis.pipeline();
    pipeline.incr(`${key}:n`);
    pipeline.get(key);
    expect(await pipeline.exec()).toEqual([2, 'grüße 🌍']);
    const transaction = redis.multi();
    transaction.incr(`${key}:n`);
    transaction.expire(`${key}:n`, 60);
    expect(await transaction.exec()).toEqual([3, 1]);
    expect(await redis.eval('return ARGV[1] .. KEYS[1]', ['k'], ['v'])).toBe('vk');
    await expect(new Redis({ url: setup.upstash.url, token: 'wrong' }).get(key)).rejects.toThrow();
  });
});

describe('requests per minute per key', () => {
  it('refuses past the limit with 429, Retry-After and x-ratelimit-* headers, charging nothing; the window slides', async () => {
    const gateway = await gatewayWith();
    const customer = await limitedCustomer({ requests_per_minute: 3 });
    await startOfWindow(2000);
    const statuses = [];
    let refused: Response | undefined;
    for (let attempt = 0; attempt < 4; attempt++) {
      const response = await chat(gateway, customer.apiKey);
      statuses.push(response.status);
      if (response.status === 429) refused = response;
      else {
        expect(response.headers.get('x-ratelimit-limit-requests')).toBe('3');
        await response.text();
      }
    }
    expect(statuses).toEqual([200, 200, 200, 429]);
    expect(Number(refused!.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
    expect(refused!.headers.get('x-ratelimit-limit-requests')).toBe('3');
    expect(refused!.headers.get('x-ratelimit-remaining-requests')).toBe('0');
    expect(refused!.headers.get('x-ratelimit-reset-requests')).toMatch(/^\d+s$/);
    expect(await refused!.json()).toMatchObject({ error: { code: 'rate_limit_exceeded', type: 'rate_limit_error' } });

    await gateway.settled();
    // In the order of their rows' creation, which is not the requests' own: a request may adopt a hold taken ahead (created earlier).
    const { rows } = await admin().query('select status, charged from public.usage_events where account_id = $1 order by created_at', [customer.accountId]);
    expect(rows.map((row) => row.status).sort()).toEqual(['completed', 'completed', 'completed', 'failed']);
    expect(rows.find((row) => row.status === 'failed').charged).toBe('0');

    // The window slides: after it has passed, requests go through again.
    await new Promise((resolve) => setTimeout(resolve, 4100));
    expect((await chat(gateway, customer.apiKey)).status).toBe(200);
    await gateway.settled();
  });

  it('two gateway instances share one limit', async () => {
    const [first, second] = [await gatewayWith(), await gatewayWith()];
    const customer = await limitedCustomer({ requests_per_minute: 4 });
    await startOfWindow(2000);
    const statuses = [];
    for (let attempt = 0; attempt < 8; attempt++) {
      const response = await chat(attempt % 2 === 0 ? first : second, customer.apiKey);
      statuses.push(response.status);
      await response.text();
    }
    expect(statuses.filter((status) => status === 200)).toHaveLength(4);
    expect(statuses.filter((status) => status === 429)).toHaveLength(4);
    await Promise.all([first.settled(), second.settled()]);
  });

  it('with holds taken ahead: requests that adopted one are counted too, and the limit holds exactly', async () => {
    const gateway = await gatewayWith({ READY_HOLDS: 'on' });
    const customer = await limitedCustomer({ requests_per_minute: 10 });
    await startOfWindow(2000);
    const statuses = [];
    for (let attempt = 0; attempt < 12; attempt++) {
      const response = await chat(gateway, customer.apiKey);
      statuses.push(response.status);
      await response.text();
      await gateway.settled();
    }
    expect(statuses).toEqual([...Array(10).fill(200), 429, 429]);
    expect(gateway.events.filter((event) => event.url.endsWith('/rpc/authorize_ahead')).length).toBeGreaterThan(0);
    expect(gateway.events.filter((event) => event.url.endsWith('/rpc/authorize_request')).length).toBeLessThan(12);
  });

  it('answers 429 in Anthropic\'s shape on /v1/messages', async () => {
    const gateway = await gatewayWith();
    const claude = await createModel({ input: 1, output: 1 }, { provider: 'anthropic', upstreamModel: 'messages-cache', maxOutputTokens: 1000 });
    const customer = await limitedCustomer({ requests_per_minute: 1 });
    await startOfWindow(2000);
    const send = () =>
      fetch(`${gateway.url}/v1/messages`, {
        method: 'POST',
        headers: { 'x-api-key': customer.apiKey, 'content-type': 'application/json' },
        body: JSON.stringify({ model: claude, max_tokens: 10, messages: [{ role: 'user', content: 'x' }] }),
      });
    expect((await send()).status).toBe(200);
    const refused = await send();
    expect(refused.status).toBe(429);
    expect(await refused.json()).toMatchObject({ type: 'error', error: { type: 'rate_limit_error', code: 'rate_limit_exceeded' } });
    await gateway.settled();
  });
});

/** An HTTP pass-through in front of the local Upstash endpoint that counts the calls made to it. */
async function countingUpstash() {
  const paths: string[] = [];
  const server = createHttpServer(async (request, response) => {
    let body = '';
    for await (const chunk of request) body += chunk;
    paths.push(body);
    const answer = await fetch(`${setup.upstash.url}${request.url}`, { method: request.method, headers: request.headers as Record<string, string>, body });
    response.writeHead(answer.status, { 'content-type': answer.headers.get('content-type') ?? 'application/json' });
    response.end(await answer.text());
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return { url: `http://127.0.0.1:${(server.address() as { port: number }).port}`, calls: paths, close: () => new Promise<void>((resolve) => server.close(() => resolve())) };
}

describe('one Upstash round trip per request', () => {
  it('checks requests per key and tokens per account in one script call; a refused request counts against neither', async () => {
    const counting = await countingUpstash();
    try {
      const gateway = await gatewayWith({ UPSTASH_REDIS_REST_URL: counting.url });
      const customer = await limitedCustomer({ requests_per_minute: 3, tokens_per_minute: 1000 });
      await startOfWindow(2000);
      const first = await chat(gateway, customer.apiKey, 'x'.repeat(500));
      expect(first.status).toBe(200);
      for (const [content, status, remainingRequests] of [['x'.repeat(500), 429, '2'], ['Hi', 200, '1']] as const) {
        const mark = counting.calls.length;
        const response = await chat(gateway, customer.apiKey, content);
        expect(response.status).toBe(status);
        expect(response.headers.get('x-ratelimit-remaining-requests')).toBe(remainingRequests);
        await response.text();
        // One call: the script (by its hash; the first use of all may have loaded it).
        expect(counting.calls.slice(mark)).toHaveLength(1);
        // A command, or a pipeline of commands (the client pipelines what it is asked at once).
        const sent = JSON.parse(counting.calls[mark]!) as unknown[];
        const commands = Array.isArray(sent[0]) ? (sent as unknown[][]) : [sent];
        expect(commands.map((command) => command[0])).toEqual(['evalsha']);
      }
      await gateway.settled();
    } finally {
      await counting.close();
    }
  });
});

describe('a request the database refuses', () => {
  it('counts against neither limit: what its check counted beside authorize is given back', async () => {
    const gateway = await gatewayWith();
    const otherModel = await createModel({ input: 1, output: 1 }, { upstreamModel: 'chat-basic' });
    const customer = await limitedCustomer({ requests_per_minute: 3, tokens_per_minute: 5_000 });
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { requests_per_minute: 3, tokens_per_minute: 5_000, allowed_models: [chatModel] });
    const ask = async (model: string, maxTokens = 100) => {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Hi' }], max_tokens: maxTokens }),
      });
      const body = (await response.json()) as { error?: { code?: string } };
      await gateway.settled();
      return [response.status, body.error?.code, response.headers.get('x-ratelimit-remaining-requests'), response.headers.get('x-ratelimit-remaining-tokens')] as const;
    };
    await startOfWindow(2000);
    // Served: the key's limits are known on this instance from now on, so its next
    // checks run beside authorize and count before the database has answered.
    const [status, , requestsLeft, tokensLeft] = await ask(chatModel);
    expect([status, requestsLeft]).toEqual([200, '2']);
    // Refused by the database (a model the key may not use), three times: more than the limit.
    for (let i = 0; i < 3; i++) expect((await ask(otherModel, 4_000)).slice(0, 2)).toEqual([403, 'model_not_allowed']);
    // Still the second request of the window, and the refused ones' 4,000-token caps are not spent.
    const [again, , requestsAfter, tokensAfter] = await ask(chatModel);
    expect([again, requestsAfter]).toEqual([200, '1']);
    expect(Number(tokensLeft) - Number(tokensAfter)).toBeLessThan(200);
  });
});

describe('tokens per minute per account', () => {
  it('counts the hold\'s token estimate', async () => {
    const gateway = await gatewayWith();
    // "user" + 500 × "x" + framing ≈ 510 input tokens, plus max_tokens 100: about 610 a request.
    const customer = await limitedCustomer({ tokens_per_minute: 1000 });
    await startOfWindow(2000);
    const first = await chat(gateway, customer.apiKey, 'x'.repeat(500));
    expect(first.status).toBe(200);
    expect(Number(first.headers.get('x-ratelimit-remaining-tokens'))).toBeLessThan(400);
    const second = await chat(gateway, customer.apiKey, 'x'.repeat(500));
    expect(second.status).toBe(429);
    expect(await second.json()).toMatchObject({ error: { code: 'rate_limit_exceeded', message: expect.stringContaining('tokens per minute') } });
    await gateway.settled();
  });
});

describe('tokens per minute, requests that set no output cap', () => {
  it("a burst is counted at the output bound the key's last request of the model had, not at its input alone", async () => {
    const gateway = await gatewayWith({ RATE_LIMIT_WINDOW_SECONDS: '10' });
    // No max_tokens: each hold takes the model's 4,000 output tokens, about 4,012 in all.
    const capped = await createModel({ input: 1, output: 1 }, { upstreamModel: 'chat-basic', maxOutputTokens: 4000 });
    const customer = await limitedCustomer({ tokens_per_minute: 20_000 });
    const ask = () =>
      fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: capped, messages: [{ role: 'user', content: 'Hi' }] }),
      }).then(async (response) => (await response.text(), response.status));
    await startOfWindow(10_000);
    expect(await ask()).toBe(200);
    await gateway.settled();
    // Counted at their input alone, the burst's checks all went before any hold's output was
    // owed: 13 holds, 52,156 tokens, were served against a limit of 20,000.
    const statuses = await Promise.all(Array.from({ length: 32 }, ask));
    await gateway.settled();
    const { rows: [held] } = await admin().query(
      `select count(*)::int as served, sum(max_input_tokens + max_output_tokens * choices)::int as tokens from public.usage_events where api_key_id = $1 and status = 'completed'`,
      [customer.apiKeyId],
    );
    expect(statuses.filter((status) => status === 200).length + 1).toBe(held.served);
    expect(held.tokens).toBeLessThanOrEqual(20_000);
  });
});

describe('tokens per minute, a hold smaller than the estimate counted', () => {
  it('gives the difference back: a balance that caps the output below the bound remembered is not refused as rate limited', async () => {
    const gateway = await gatewayWith();
    // 1 micro-unit per token; the model's output bound 4,000.
    const capped = await createModel({ input: 1_000_000, output: 1_000_000 }, { upstreamModel: 'chat-basic', maxOutputTokens: 4000 });
    const customer = await createCustomer({ balance: 5_000 });
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { tokens_per_minute: 5_000 });
    const ask = async () => {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model: capped, messages: [{ role: 'user', content: 'Hi' }] }),
      });
      await response.text();
      await gateway.settled();
      return response.status;
    };
    // The whole 4,000 output tokens held: the bound remembered for the key and model.
    expect(await ask()).toBe(200);
    const { rows: [account] } = await admin().query('select balance from public.accounts where id = $1', [customer.accountId]);
    await ledger.grantCredits({ accountId: customer.accountId, amount: 400 - Number(account.balance), reason: 'adjustment' });
    // A fresh window, past the weight of the one before.
    await new Promise((resolve) => setTimeout(resolve, 4_100 - (Date.now() % 2000)));
    // Each hold a few hundred tokens now (the output capped at what 400 affords), five about
    // 1,800 in all: counted at 4,012 each and never given back, the fourth was refused.
    const statuses = [];
    for (let i = 0; i < 5; i++) statuses.push(await ask());
    expect(statuses).toEqual([200, 200, 200, 200, 200]);
  });
});

describe('when Redis does not answer', () => {
  it('allows the request and logs the failure: Redis down', async () => {
    const own = await startLocalUpstash();
    const gateway = await gatewayWith({ UPSTASH_REDIS_REST_URL: own.url, UPSTASH_REDIS_REST_TOKEN: own.token });
    const customer = await limitedCustomer({ requests_per_minute: 1 });
    await own.stopRedis();
    for (let attempt = 0; attempt < 3; attempt++) expect((await chat(gateway, customer.apiKey)).status).toBe(200);
    expect(gateway.logs.filter((entry) => entry.event === 'rate_limit_unavailable').length).toBeGreaterThan(0);
    await gateway.settled();
    await own.stop();
  });

  it('allows the request and logs the failure: no answer within the timeout', async () => {
    // Accepts connections and never answers.
    const silent: Server = createServer(() => {});
    await new Promise<void>((resolve) => silent.listen(0, '127.0.0.1', resolve));
    const port = (silent.address() as { port: number }).port;
    const gateway = await gatewayWith({ UPSTASH_REDIS_REST_URL: `http://127.0.0.1:${port}`, UPSTASH_REDIS_REST_TOKEN: 'x', RATE_LIMIT_TIMEOUT_MS: '300' });
    const customer = await limitedCustomer({ requests_per_minute: 1 });
    const started = performance.now();
    expect((await chat(gateway, customer.apiKey)).status).toBe(200);
    expect((await chat(gateway, customer.apiKey)).status).toBe(200);
    expect(performance.now() - started).toBeLessThan(5000);
    expect(gateway.logs.some((entry) => entry.event === 'rate_limit_unavailable' && String(entry.reason).includes('300 ms'))).toBe(true);
    await gateway.settled();
    silent.close();
  });
});

/** A rate limiter on the local Upstash endpoint, through a fetch that records each call's path, and can delay every call or hold pipelines. */
function limiterWithCalls(options: { timeoutMs?: number; holdPipelines?: boolean; windowSeconds?: number; delayMs?: number } = {}) {
  const paths: string[] = [];
  const sizes: number[] = [];
  const logs: Record<string, unknown>[] = [];
  const limiter = createRateLimiter({
    url: setup.upstash.url,
    token: setup.upstash.token,
    timeoutMs: options.timeoutMs ?? 5000,
    windowSeconds: options.windowSeconds ?? 60,
    log: (entry) => logs.push(entry),
    fetch: async (input, init) => {
      if (options.delayMs) await new Promise((resolve) => setTimeout(resolve, options.delayMs));
      const path = new URL(String(input)).pathname;
      paths.push(path);
      if (path === '/pipeline') sizes.push((JSON.parse(String(init?.body)) as unknown[]).length);
      if (options.holdPipelines && path === '/pipeline') {
        return new Promise((_, reject) => init?.signal?.addEventListener('abort', () => reject(init.signal!.reason), { once: true }));
      }
      return fetch(input, init);
    },
  });
  return { limiter, paths, sizes, logs };
}
const subject = (requestsPerMinute: number) => ({ keyId: crypto.randomUUID(), accountId: crypto.randomUUID(), requestsPerMinute, tokensPerMinute: null });
const tokenSubject = (tokensPerMinute: number) => ({ keyId: crypto.randomUUID(), accountId: crypto.randomUUID(), requestsPerMinute: null, tokensPerMinute });
const remainingTokens = (decision: { headers: Record<string, string> }) => Number(decision.headers['x-ratelimit-remaining-tokens']);

describe('many requests at once on one instance', () => {
  it('Redis slow but within the deadline: checks waiting behind calls under way go within 50 ms, so none misses its deadline and the limit holds exactly', async () => {
    // Each call answered after 300 ms, the deadline 500 ms: a check that waited for one of
    // the two calls under way to come back was sent at 300 ms and let through unchecked at 500.
    const { limiter, logs } = limiterWithCalls({ delayMs: 300, timeoutMs: 500 });
    const key = subject(10);
    const decisions = await Promise.all(Array.from({ length: 64 }, () => limiter.check(key, 0)));
    expect(decisions.filter((decision) => decision.unavailable)).toEqual([]);
    expect(logs.filter((entry) => entry.event === 'rate_limit_unavailable')).toEqual([]);
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(10);
  });

  it('checks go together in pipelines while calls are under way: the limit holds exactly, in far fewer calls than checks', async () => {
    const { limiter, paths } = limiterWithCalls();
    const key = subject(10);
    const decisions = await Promise.all(Array.from({ length: 30 }, () => limiter.check(key, 0)));
    expect(decisions.filter((decision) => decision.allowed)).toHaveLength(10);
    expect(decisions.filter((decision) => !decision.allowed && decision.limitedBy === 'requests')).toHaveLength(20);
    expect(paths.length).toBeLessThan(10);
    expect(paths).toContain('/pipeline');
    // One check alone is one call of its own.
    const mark = paths.length;
    expect((await limiter.check(subject(10), 0)).allowed).toBe(true);
    expect(paths.slice(mark)).toEqual(['/']);
  });

  it('a pipeline carries at most 100 checks; the rest go in the next', async () => {
    const { limiter, sizes } = limiterWithCalls();
    const key = subject(1000);
    const decisions = await Promise.all(Array.from({ length: 250 }, () => limiter.check(key, 0)));
    expect(decisions.every((decision) => decision.allowed && !decision.unavailable)).toBe(true);
    expect(Math.max(...sizes)).toBe(100);
    expect(sizes.reduce((sum, size) => sum + size, 0)).toBeGreaterThanOrEqual(200);
  });

  it('a pipeline whose script Redis no longer knows: each check loads it again and is answered', async () => {
    const { limiter, paths } = limiterWithCalls();
    expect((await limiter.check(subject(5), 0)).allowed).toBe(true);
    await new Redis({ url: setup.upstash.url, token: setup.upstash.token }).scriptFlush();
    const key = subject(5);
    const decisions = await Promise.all(Array.from({ length: 12 }, () => limiter.check(key, 0)));
    expect(decisions.map((decision) => decision.allowed).filter(Boolean)).toHaveLength(5);
    expect(decisions.every((decision) => !decision.unavailable)).toBe(true);
    expect(paths.filter((path) => path === '/pipeline').length).toBeGreaterThan(0);
  });

  it('checks in a pipeline that is not answered are allowed at their deadline, logged, and marked unavailable', async () => {
    const { limiter, paths, logs } = limiterWithCalls({ timeoutMs: 300, holdPipelines: true });
    const started = performance.now();
    const decisions = await Promise.all(Array.from({ length: 6 }, () => limiter.check(subject(100), 0)));
    expect(performance.now() - started).toBeLessThan(3000);
    expect(paths).toContain('/pipeline');
    // The first two went on their own and were answered; the rest waited in a pipeline that never was.
    expect(decisions.filter((decision) => decision.allowed && !decision.unavailable).length).toBeGreaterThanOrEqual(2);
    const unanswered = decisions.filter((decision) => decision.unavailable);
    expect(unanswered.length).toBeGreaterThan(0);
    expect(unanswered.every((decision) => decision.allowed)).toBe(true);
    expect(logs.filter((entry) => entry.event === 'rate_limit_unavailable')).toHaveLength(unanswered.length);
  });

  it('a burst of 1,000 checks: full pipelines go at once, so every check is answered within its deadline', async () => {
    // Each call takes 100 ms; with two calls under way at most, 1,000 checks would need five round trips.
    const { limiter, sizes } = limiterWithCalls({ delayMs: 100, timeoutMs: 450 });
    const key = subject(100_000);
    const decisions = await Promise.all(Array.from({ length: 1000 }, () => limiter.check(key, 0)));
    expect(decisions.filter((decision) => decision.unavailable)).toHaveLength(0);
    expect(Math.max(...sizes)).toBe(100);
  });

  it('an answer that is not three numbers is a failure: allowed, logged, marked unavailable', async () => {
    const logs: Record<string, unknown>[] = [];
    const limiter = createRateLimiter({
      url: setup.upstash.url,
      token: setup.upstash.token,
      timeoutMs: 1000,
      windowSeconds: 60,
      log: (entry) => logs.push(entry),
      fetch: async () => new Response(JSON.stringify({ result: ['a', 'b', 'c'] }), { headers: { 'content-type': 'application/json' } }),
    });
    expect(await limiter.check(subject(5), 0)).toMatchObject({ allowed: true, unavailable: true });
    expect(logs.map((entry) => entry.event)).toEqual(['rate_limit_unavailable']);
  });
});

describe('what one instance owes and remembers', () => {
  it('tokens owed go with one check only, even when two are under way together', async () => {
    const { limiter } = limiterWithCalls();
    const account = tokenSubject(1000);
    limiter.owe(account, 400);
    const both = await Promise.all([limiter.check(account, 0), limiter.check(account, 0)]);
    expect(both.every((decision) => decision.allowed)).toBe(true);
    // Counted once: 400 of 1,000 spent, as another instance sees it.
    expect(remainingTokens(await limiterWithCalls().limiter.check(account, 0))).toBe(600);
  });

  it('tokens owed while a check is under way are counted by the next one', async () => {
    const { limiter } = limiterWithCalls({ delayMs: 100 });
    const account = tokenSubject(1000);
    limiter.owe(account, 400);
    const underWay = limiter.check(account, 0);
    limiter.owe(account, 300);
    expect((await underWay).allowed).toBe(true);
    expect(remainingTokens(await limiter.check(account, 0))).toBe(300);
  });

  it('a debt larger than the limit refuses the account while it counts, not for good', async () => {
    const windowMs = 1000;
    const { limiter } = limiterWithCalls({ windowSeconds: windowMs / 1000 });
    const account = tokenSubject(1000);
    limiter.owe(account, 1200);
    const refused = await limiter.check(account, 10);
    expect(refused).toMatchObject({ allowed: false, limitedBy: 'tokens' });
    // Counted in Redis whatever the answer: another instance refuses the account alike.
    expect(await limiterWithCalls({ windowSeconds: windowMs / 1000 }).limiter.check(account, 10)).toMatchObject({ allowed: false, limitedBy: 'tokens' });
    // Two windows on, the sliding window has left it behind, on this instance as on any other.
    await new Promise((resolve) => setTimeout(resolve, 2 * windowMs - (Date.now() % windowMs) + 50));
    expect((await limiter.check(account, 10)).allowed).toBe(true);
  });

  it('a key refused for its request rate is refused from memory for a second, then asked again, and let through once the window slides', async () => {
    const windowMs = 2000;
    const { limiter, paths } = limiterWithCalls({ windowSeconds: windowMs / 1000 });
    const key = { keyId: crypto.randomUUID(), accountId: crypto.randomUUID(), requestsPerMinute: 4, tokensPerMinute: null };
    await startOfWindow(windowMs);
    const firstWindow = Math.floor(Date.now() / windowMs);
    for (let used = 0; used < 4; used++) expect((await limiter.check(key, 0)).allowed).toBe(true);
    // Into the next window: the previous one still weighs most of its 4, so the key is soon refused.
    await new Promise((resolve) => setTimeout(resolve, (firstWindow + 1) * windowMs - Date.now() + 50));
    let refusedAt = 0;
    for (let attempt = 0; attempt < 5 && !refusedAt; attempt++) if (!(await limiter.check(key, 0)).allowed) refusedAt = Date.now();
    expect(refusedAt).toBeGreaterThan(0);
    // Within the second: refused from memory, no call.
    const calls = paths.length;
    expect(await limiter.check(key, 0)).toMatchObject({ allowed: false, limitedBy: 'requests' });
    expect(paths).toHaveLength(calls);
    // Three quarters into the window, a second after the refusal: the previous window weighs
    // a quarter of its 4 (1), so there is room again, and Redis is asked.
    const recheck = Math.max((firstWindow + 1) * windowMs + 0.75 * windowMs, refusedAt + 1050);
    await new Promise((resolve) => setTimeout(resolve, recheck - Date.now()));
    expect((await limiter.check(key, 0)).allowed).toBe(true);
    expect(paths.length).toBeGreaterThan(calls);
  });
});

import { describe, expect, it } from 'vitest';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { startLocalUpstash } from '../../scripts/local-upstash.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, stack, type Customer } from '../support/supabase.ts';
import { upstashGateways } from '../support/upstash-gateways.ts';

// Revoking a key through the gateway (POST /console/keys/{id}/revoke): the
// database first, as the key's owner, then a mark in Redis that every instance
// checks when a request adopts a hold taken ahead. So holds are taken ahead by
// default wherever Redis is, and a revoked key is still refused at once.

const setup = upstashGateways(() => ({ SUPABASE_ANON_KEY: stack.anonKey, READY_HOLD_SECONDS: '5' }));
const { gatewayWith } = setup;
const price = { input: 1_000_000, output: 4_000_000 };

async function chat(gateway: Gateway, customer: Customer, model: string) {
  const before = gateway.events.length;
  const response = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 }),
  });
  const body = await response.text();
  await gateway.settled();
  const authorized = gateway.events.slice(before).some((event) => /\/rpc\/authorize_requests?$/.test(event.url));
  return { status: response.status, body, authorized };
}

const revoke = (gateway: Gateway, keyId: string, bearer: string | undefined) =>
  fetch(`${gateway.url}/console/keys/${keyId}/revoke`, { method: 'POST', headers: bearer === undefined ? {} : { authorization: `Bearer ${bearer}` } });

const sessionOf = (customer: Customer) => signUserJwt(customer.userId, stack.jwtSecret);

async function books(accountId: string) {
  const { rows: [account] } = await admin().query('select held::int, balance::int from public.accounts where id = $1', [accountId]);
  const { rows: events } = await admin().query('select status, charged::int from public.usage_events where account_id = $1 order by created_at', [accountId]);
  return { held: account.held as number, balance: account.balance as number, events: events as Array<{ status: string; charged: number }> };
}

describe('revoking a key through the gateway', () => {
  it('with Redis, holds are taken ahead by default; a key revoked through one instance is refused at once by another holding a hold ready for it, and that hold is given back', async () => {
    const [first, second] = [await gatewayWith(), await gatewayWith()];
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    // Two requests on the second instance: a hold is taken ahead after the second, and a third adopts it.
    const warm = [await chat(second, customer, model), await chat(second, customer, model), await chat(second, customer, model)];
    expect(warm.map(({ status, authorized }) => ({ status, authorized }))).toEqual([
      { status: 200, authorized: true },
      { status: 200, authorized: true },
      { status: 200, authorized: false },
    ]);
    // A hold is ready again on the second instance.
    expect((await books(customer.accountId)).events.at(-1)).toEqual({ status: 'held', charged: null });

    const answer = await revoke(first, customer.apiKeyId, sessionOf(customer));
    expect(answer.status).toBe(200);
    expect(await answer.json()).toEqual({ id: customer.apiKeyId, revoked_at: expect.any(String), refused_at_once: true });

    const refused = await chat(second, customer, model);
    expect({ status: refused.status, authorized: refused.authorized }).toEqual({ status: 401, authorized: false });
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'api_key_revoked', type: 'authentication_error' } });
    expect(second.logs).toContainEqual(expect.objectContaining({ event: 'ready_hold_refused', reason: 'api_key_revoked' }));
    // Refused by the database from then on (the key is cold on that instance now).
    const again = await chat(second, customer, model);
    expect({ status: again.status, authorized: again.authorized }).toEqual({ status: 401, authorized: true });

    // The adopted hold was released, charging nothing: three requests paid, nothing held.
    const after = await books(customer.accountId);
    expect(after.held).toBe(0);
    expect(after.events.map((event) => event.status)).toEqual(['completed', 'completed', 'completed', 'failed']);
    expect(after.events.at(-1)!.charged ?? 0).toBe(0);
    expect(after.balance).toBe(100_000_000 - 3 * 55);
  });

  it('a key that expires is refused when it does, even where a hold was ready for it: none is taken ahead that its window would outlive', async () => {
    const gateway = await gatewayWith();
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const { rows: [{ expires_at: expiresAt }] } = await admin().query(
      `update public.api_keys set expires_at = now() + interval '3 seconds' where id = $1 returning expires_at`,
      [customer.apiKeyId],
    );
    expect((await chat(gateway, customer, model)).status).toBe(200);
    expect((await chat(gateway, customer, model)).status).toBe(200);
    await new Promise((resolve) => setTimeout(resolve, Math.max(0, new Date(expiresAt as string).getTime() - Date.now()) + 300));
    const late = await chat(gateway, customer, model);
    expect({ status: late.status, code: (JSON.parse(late.body) as { error?: { code?: string } }).error?.code }).toEqual({ status: 401, code: 'api_key_expired' });
    expect((await books(customer.accountId)).events.filter((event) => event.charged > 0)).toHaveLength(2);
    expect((await books(customer.accountId)).held).toBe(0);
  });

  it('refuses what it cannot do, in OpenAI\'s error shape, revoking nothing: no session, a bad session, a malformed id, another account\'s key', async () => {
    const gateway = await gatewayWith();
    const owner = await createCustomer();
    const stranger = await createCustomer();
    const cases = [
      { response: await revoke(gateway, owner.apiKeyId, undefined), status: 401, code: 'missing_session' },
      { response: await revoke(gateway, owner.apiKeyId, 'not-a-jwt'), status: 401, code: 'invalid_session' },
      { response: await revoke(gateway, 'key-1', sessionOf(owner)), status: 400, code: 'invalid_request' },
      { response: await revoke(gateway, owner.apiKeyId, sessionOf(stranger)), status: 404, code: 'key_not_found' },
    ];
    for (const { response, status, code } of cases) {
      expect({ status: response.status, body: await response.json() }).toEqual({
        status,
        body: { error: expect.objectContaining({ code, message: expect.any(String) }) },
      });
    }
    const { rows: [key] } = await admin().query('select revoked_at from public.api_keys where id = $1', [owner.apiKeyId]);
    expect(key.revoked_at).toBeNull();
  });

  it('without the anon key the route is not available (503); revoking twice keeps the first time', async () => {
    const bare = await startGateway({ OPENAI_BASE_URL: `${setup.fake.url}/v1` });
    setup.closeAfter(bare);
    const customer = await createCustomer();
    const unavailable = await revoke(bare, customer.apiKeyId, sessionOf(customer));
    expect({ status: unavailable.status, code: ((await unavailable.json()) as { error: { code: string } }).error.code }).toEqual({ status: 503, code: 'console_not_configured' });

    const gateway = await gatewayWith();
    const first = (await (await revoke(gateway, customer.apiKeyId, sessionOf(customer))).json()) as { revoked_at: string };
    const second = (await (await revoke(gateway, customer.apiKeyId, sessionOf(customer))).json()) as { revoked_at: string };
    expect(second.revoked_at).toBe(first.revoked_at);
  });

  it('without Redis, holds are taken ahead only when asked (READY_HOLDS=on), and then the answer says a ready hold may still serve a request', async () => {
    const byDefault = await startGateway({ OPENAI_BASE_URL: `${setup.fake.url}/v1`, SUPABASE_ANON_KEY: stack.anonKey });
    const asked = await startGateway({ OPENAI_BASE_URL: `${setup.fake.url}/v1`, SUPABASE_ANON_KEY: stack.anonKey, READY_HOLDS: 'on' });
    setup.closeAfter(byDefault, asked);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 3; index++) expect((await chat(byDefault, customer, model)).authorized).toBe(true);
    expect(byDefault.events.some((event) => event.url.endsWith('/rpc/authorize_ahead'))).toBe(false);

    const lagging = await revoke(asked, customer.apiKeyId, sessionOf(customer));
    expect(await lagging.json()).toEqual({ id: customer.apiKeyId, revoked_at: expect.any(String), refused_at_once: false, note: expect.stringContaining('up to 10 s') });
  });

  it('Redis not answering when a hold taken ahead is adopted: the database is asked instead, and a key revoked there is refused at once', async () => {
    // A Redis of this test's own, stopped halfway.
    const own = await startLocalUpstash();
    const gateway = await gatewayWith({ UPSTASH_REDIS_REST_URL: own.url, UPSTASH_REDIS_REST_TOKEN: own.token });
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 2; index++) expect((await chat(gateway, customer, model)).status).toBe(200);
    expect((await books(customer.accountId)).events.at(-1)).toEqual({ status: 'held', charged: null });
    // Revoked straight in the database, where no mark is written; and Redis gone.
    await admin().query('update public.api_keys set revoked_at = now() where id = $1', [customer.apiKeyId]);
    await own.stop();

    const refused = await chat(gateway, customer, model);
    expect({ status: refused.status, authorized: refused.authorized }).toEqual({ status: 401, authorized: false });
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'api_key_revoked' } });
    expect(gateway.logs).toContainEqual(expect.objectContaining({ event: 'rate_limit_unavailable' }));
    expect(gateway.events.filter((event) => event.url.endsWith('/rpc/key_overview'))).toHaveLength(1);
    const after = await books(customer.accountId);
    expect({ held: after.held, statuses: after.events.map((event) => event.status) }).toEqual({ held: 0, statuses: ['completed', 'completed', 'failed'] });
  });

  it('the database not confirming the revocation in time: 503 revocation_unconfirmed, and revoking again answers as the first time would have', async () => {
    const slowRevoke: typeof fetch = async (input, init) => {
      const response = await fetch(input, { ...init, signal: null });
      // The revocation is committed; its answer comes after the gateway stopped waiting.
      if (String(input).endsWith('/rpc/revoke_api_key') && !slowed.has(String(init?.body))) {
        slowed.add(String(init?.body));
        await new Promise((resolve, reject) => {
          setTimeout(resolve, 1_000);
          init?.signal?.addEventListener('abort', () => reject(init.signal!.reason));
        });
      }
      return response;
    };
    const slowed = new Set<string>();
    const gateway = await startGateway(
      { OPENAI_BASE_URL: `${setup.fake.url}/v1`, SUPABASE_ANON_KEY: stack.anonKey, UPSTASH_REDIS_REST_URL: setup.upstash.url, UPSTASH_REDIS_REST_TOKEN: setup.upstash.token, DATABASE_TIMEOUT_MS: '300' },
      { databaseFetch: slowRevoke },
    );
    setup.closeAfter(gateway);
    const customer = await createCustomer();
    const first = await revoke(gateway, customer.apiKeyId, sessionOf(customer));
    expect({ status: first.status, body: await first.json() }).toEqual({
      status: 503,
      body: { error: expect.objectContaining({ code: 'revocation_unconfirmed', message: expect.stringContaining('Revoke the key again') }) },
    });
    const { rows: [key] } = await admin().query('select revoked_at from public.api_keys where id = $1', [customer.apiKeyId]);
    expect(key.revoked_at).not.toBeNull();
    const again = (await (await revoke(gateway, customer.apiKeyId, sessionOf(customer))).json()) as { id: string; revoked_at: string; refused_at_once: boolean };
    expect({ ...again, revoked_at: Date.parse(again.revoked_at) }).toEqual({ id: customer.apiKeyId, revoked_at: (key.revoked_at as Date).getTime(), refused_at_once: true });
  });

  it('Redis not taking the mark: the key is revoked all the same, and the answer and the log say a ready hold may still serve a request', async () => {
    const gateway = await gatewayWith({ UPSTASH_REDIS_REST_URL: 'http://127.0.0.1:9', RATE_LIMIT_TIMEOUT_MS: '200' });
    const customer = await createCustomer();
    const answer = await revoke(gateway, customer.apiKeyId, sessionOf(customer));
    expect(answer.status).toBe(200);
    expect(await answer.json()).toMatchObject({ refused_at_once: false });
    expect(gateway.logs).toContainEqual(expect.objectContaining({ event: 'revocation_not_marked', keyId: customer.apiKeyId }));
    const { rows: [key] } = await admin().query('select revoked_at from public.api_keys where id = $1', [customer.apiKeyId]);
    expect(key.revoked_at).not.toBeNull();
  });
});

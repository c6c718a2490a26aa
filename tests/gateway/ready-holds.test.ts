import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger, type Customer } from '../support/supabase.ts';

// Holds taken ahead (READY_HOLDS=on, here without Redis): a warm key's next
// request adopts a hold authorized in the background after the previous one.
// With Redis they are on by default and a revocation reaches them at once
// (tests/gateway/revocation.test.ts).

let fake: FakeUpstream;
const gateways: Gateway[] = [];
const price = { input: 1_000_000, output: 4_000_000 };
const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

beforeAll(async () => {
  fake = await startFakeUpstream();
});

afterAll(async () => {
  await Promise.all(gateways.map((gateway) => gateway.close()));
  await fake.close();
});

async function readyGateway(seconds = 2) {
  const gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, READY_HOLDS: 'on', READY_HOLD_SECONDS: String(seconds) });
  gateways.push(gateway);
  return gateway;
}

async function chat(gateway: Gateway, customer: Customer, model: string, extra: Record<string, unknown> = {}) {
  const before = gateway.events.length;
  const response = await fetch(`${gateway.url}/v1/chat/completions`, {
    method: 'POST',
    headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50, ...extra }),
  });
  const body = await response.text();
  // The background work of this request (its settlement, the next hold taken ahead) is done.
  await gateway.settled();
  // Whether it waited for an authorization of its own (authorize_request, or a batch of them).
  const authorized = gateway.events.slice(before).some((event) => /\/rpc\/authorize_requests?$/.test(event.url));
  return { status: response.status, body, requestId: response.headers.get('x-request-id')!, authorized };
}

const rpcCalls = (gateway: Gateway, name: string) => gateway.events.filter((event) => event.url.endsWith(`/rpc/${name}`)).length;

async function books(accountId: string) {
  const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [accountId]);
  const { rows: events } = await admin().query(
    'select request_id, status, charged::int, ready_until is not null as ahead from public.usage_events where account_id = $1 order by created_at',
    [accountId],
  );
  return { held: account.held as number, events: events as Array<{ request_id: string; status: string; charged: number; ahead: boolean }> };
}

describe('holds taken ahead', () => {
  it("a warm key's next request adopts the hold taken ahead: no authorization of its own, its id the hold's, it is charged exactly; the unused one goes back after its window", async () => {
    const gateway = await readyGateway(2);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const answers = [];
    for (let index = 0; index < 3; index++) answers.push(await chat(gateway, customer, model));
    expect(answers.map((answer) => answer.status)).toEqual([200, 200, 200]);
    // The first two were authorized as they came (the first alone in its window: nothing
    // taken ahead after it); the third adopted the hold taken ahead after the second.
    expect(answers.map((answer) => answer.authorized)).toEqual([true, true, false]);
    expect(rpcCalls(gateway, 'authorize_request')).toBe(2);
    expect(rpcCalls(gateway, 'authorize_ahead')).toBe(2);

    const during = await books(customer.accountId);
    expect(during.events.map(({ request_id, status, charged, ahead }) => ({ request_id, status, charged, ahead }))).toEqual([
      { request_id: answers[0]!.requestId, status: 'completed', charged: 55, ahead: false },
      { request_id: answers[1]!.requestId, status: 'completed', charged: 55, ahead: false },
      { request_id: answers[2]!.requestId, status: 'completed', charged: 55, ahead: true },
      { request_id: expect.any(String), status: 'held', charged: null, ahead: true },
    ]);
    expect(during.held).toBeGreaterThan(0);

    // Nobody adopts the last one: given back when its window ends, its row gone.
    await sleep(2_200);
    await gateway.settled();
    const after = await books(customer.accountId);
    expect({ held: after.held, statuses: after.events.map((event) => event.status) }).toEqual({ held: 0, statuses: ['completed', 'completed', 'completed'] });
    expect(gateway.logs).toContainEqual(expect.objectContaining({ event: 'ready_holds_returned', returned: 1, reason: 'not adopted in time' }));
    const { rows: [account] } = await admin().query('select balance::int from public.accounts where id = $1', [customer.accountId]);
    expect(account.balance).toBe(100_000_000 - 3 * 55);
  });

  it('a request of another shape, or with a longer input than the hold has room for, is authorized as it arrives', async () => {
    const gateway = await readyGateway(5);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 2; index++) await chat(gateway, customer, model);
    expect((await chat(gateway, customer, model, { max_tokens: 60 })).authorized).toBe(true);
    const long = 'Say hello. '.repeat(50);
    expect((await chat(gateway, customer, model, { messages: [{ role: 'user', content: long }] })).authorized).toBe(true);
    expect((await chat(gateway, customer, model)).authorized).toBe(false);
    expect(rpcCalls(gateway, 'authorize_request')).toBe(4);
  });

  it('a key revoked straight in the database while a hold is ready, with no Redis to carry the mark: that hold is still used (the documented bound), the next request is refused, nothing stays held', async () => {
    const gateway = await readyGateway(5);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 2; index++) await chat(gateway, customer, model);
    await admin().query('update public.api_keys set revoked_at = now() where id = $1', [customer.apiKeyId]);
    const adopted = await chat(gateway, customer, model);
    expect({ status: adopted.status, authorized: adopted.authorized }).toEqual({ status: 200, authorized: false });
    const refused = await chat(gateway, customer, model);
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'api_key_revoked' } });
    const after = await books(customer.accountId);
    expect({ held: after.held, statuses: after.events.map((event) => event.status) }).toEqual({ held: 0, statuses: ['completed', 'completed', 'completed'] });
  });

  it('a key used once in a while gets no hold ahead: a request alone in its window takes none', async () => {
    const gateway = await readyGateway(1);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const answers = [];
    for (let index = 0; index < 3; index++) {
      if (index) await sleep(1_100);
      answers.push(await chat(gateway, customer, model));
    }
    expect(answers.map((answer) => [answer.status, answer.authorized])).toEqual([[200, true], [200, true], [200, true]]);
    expect(rpcCalls(gateway, 'authorize_ahead')).toBe(0);
    expect(rpcCalls(gateway, 'return_ready_holds')).toBe(0);
    // Two within a window: the next hold is taken ahead after the second.
    await chat(gateway, customer, model);
    expect(rpcCalls(gateway, 'authorize_ahead')).toBe(1);
    expect((await chat(gateway, customer, model)).authorized).toBe(false);
  });

  it('a key with a spend limit gets no hold ahead, and the instance stops asking for one', async () => {
    const gateway = await readyGateway(5);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    await admin().query('update public.api_keys set spend_limit = 50000000 where id = $1', [customer.apiKeyId]);
    const answers = [];
    for (let index = 0; index < 3; index++) answers.push(await chat(gateway, customer, model));
    expect(answers.map((answer) => [answer.status, answer.authorized])).toEqual([[200, true], [200, true], [200, true]]);
    expect(rpcCalls(gateway, 'authorize_ahead')).toBe(1);
    expect((await books(customer.accountId)).held).toBe(0);
  });

  it('off by default without Redis: every request is authorized as it arrives', async () => {
    const gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1` });
    gateways.push(gateway);
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (let index = 0; index < 2; index++) expect((await chat(gateway, customer, model)).authorized).toBe(true);
    expect(rpcCalls(gateway, 'authorize_ahead')).toBe(0);
  });
});

describe('authorize_ahead, return_ready_holds and expire_stale_holds', () => {
  const item = (customer: Customer, model: string) => ({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });

  it('takes no hold ahead for a key whose policy counts what is in flight; answers in order', async () => {
    const model = await createModel(price);
    const plain = await createCustomer({ balance: 10_000_000 });
    const limited = await createCustomer({ balance: 10_000_000 });
    await admin().query('update public.api_keys set spend_limit = 1000000 where id = $1', [limited.apiKeyId]);
    const items = [item(limited, model), item(plain, model)];
    const results = await ledger.authorizeAhead(items, 5);
    expect(results.map((result) => result.request_id)).toEqual(items.map((each) => each.requestId));
    expect(results[0]).toMatchObject({ ok: true, result: { status: 'refused', code: 'not_taken_ahead' } });
    expect(results[1]).toMatchObject({ ok: true, result: { status: 'authorized' } });
    const { rows } = await admin().query('select request_id, ready_until > now() as ready from public.usage_events where request_id = any ($1)', [items.map((each) => each.requestId)]);
    expect(rows).toEqual([{ request_id: items[1]!.requestId, ready: true }]);
    expect(await ledger.returnReadyHolds([items[1]!.requestId])).toBe(1);
    expect((await books(plain.accountId)).held).toBe(0);
  });

  it('takes no hold ahead for a key that expires within the window: the hold could be adopted after the key ends', async () => {
    const model = await createModel(price);
    const ending = await createCustomer({ balance: 10_000_000 });
    const lasting = await createCustomer({ balance: 10_000_000 });
    await admin().query(`update public.api_keys set expires_at = now() + interval '4 seconds' where id = $1`, [ending.apiKeyId]);
    await admin().query(`update public.api_keys set expires_at = now() + interval '1 hour' where id = $1`, [lasting.apiKeyId]);
    const items = [item(ending, model), item(lasting, model)];
    const results = await ledger.authorizeAhead(items, 5);
    expect(results[0]).toMatchObject({ ok: true, result: { status: 'refused', code: 'not_taken_ahead' } });
    expect(results[1]).toMatchObject({ ok: true, result: { status: 'authorized' } });
    expect(await ledger.returnReadyHolds([items[1]!.requestId])).toBe(1);
  });

  it('gives back only holds taken ahead and still held: never a request authorized as it came, nor one adopted and settled', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const usual = item(customer, model);
    expect((await ledger.authorizeRequest(usual)).status).toBe('authorized');
    const adopted = item(customer, model);
    await ledger.authorizeAhead([adopted], 5);
    await ledger.settleRequest({ requestId: adopted.requestId, outcome: 'completed', usage: { input: 10, output: 10 }, usageSource: 'provider' });
    expect(await ledger.returnReadyHolds([usual.requestId, adopted.requestId, 'never-seen'])).toBe(0);
    const after = await books(customer.accountId);
    expect(after.events.map((event) => event.status).sort()).toEqual(['completed', 'held']);
    await ledger.settleRequest({ requestId: usual.requestId, outcome: 'completed', usage: { input: 10, output: 10 }, usageSource: 'provider' });
  });

  it('a hold given back before its authorization reached the database is refused when it comes, and nothing stays held', async () => {
    // The instance's authorize_ahead call missed its deadline, still queued: the give-back comes first.
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const late = item(customer, model);
    expect(await ledger.returnReadyHolds([late.requestId])).toBe(0);
    const [answer] = await ledger.authorizeAhead([late], 5);
    expect(answer).toMatchObject({ ok: true, result: { status: 'refused', code: 'request_cancelled' } });
    const after = await books(customer.accountId);
    expect(after.held).toBe(0);
    expect(after.events).toEqual([]);
  });

  it('a hold taken ahead by an instance that stopped is released six minutes after its window, without a stale-hold alert', async () => {
    const model = await createModel(price);
    const customer = await createCustomer({ balance: 10_000_000 });
    const orphan = item(customer, model);
    await ledger.authorizeAhead([orphan], 5);
    await admin().query(`select public.expire_stale_holds(now() + interval '5 minutes')`);
    expect((await books(customer.accountId)).events.map((event) => event.status)).toEqual(['held']);
    await admin().query(`select public.expire_stale_holds(now() + interval '7 minutes')`);
    const after = await books(customer.accountId);
    expect({ held: after.held, statuses: after.events.map((event) => event.status) }).toEqual({ held: 0, statuses: ['expired'] });
    const { rows: alerts } = await admin().query(`select 1 from public.alerts where account_id = $1 and kind = 'stale_hold'`, [customer.accountId]);
    expect(alerts).toEqual([]);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createApiKeyManager } from '../../lib/billing/ledger.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

let fake: FakeUpstream;
let gateway: Gateway;
const price = { input: 1_000_000, output: 4_000_000 };

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1` });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

const suffix = () => crypto.randomUUID().slice(0, 8);

describe('model aliases', () => {
  it('a dated id is billed at its model\'s price and sent upstream as the client named it; an alias may name another upstream id', async () => {
    const model = await createModel(price, { upstreamModel: 'chat-basic' });
    const dated = `${model}-2026-01-01`;
    const renamed = `${model}-latest`;
    const routed = `routed-${suffix()}`;
    await admin().query(`insert into public.model_aliases (alias, model_id, upstream_model) values ($1, $3, null), ($2, $3, $4)`, [dated, renamed, model, routed]);
    fake.scenarios.set(dated, { fixture: 'chat-basic' });
    fake.scenarios.set(routed, { fixture: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    for (const [asked, sent] of [[dated, dated], [renamed, routed]] as const) {
      const completion = await gateway.openai(customer.apiKey).chat.completions.create({ model: asked, messages: [{ role: 'user', content: 'Say hello' }] });
      expect(completion.choices[0]?.message.content).toBe('Hello! How can I help you today?');
      expect(fake.requests.at(-1)!.body.model).toBe(sent);
    }
    await gateway.settled();
    const { rows } = await admin().query('select model_id, upstream_model, charged::int from public.usage_events where account_id = $1 order by created_at', [customer.accountId]);
    expect(rows).toEqual([
      { model_id: model, upstream_model: dated, charged: 55 },
      { model_id: model, upstream_model: routed, charged: 55 },
    ]);
  });

  it('/v1/models lists aliases with what they stand for; a key allowed a model is allowed its aliases', async () => {
    const model = await createModel(price);
    const alias = `${model}-snapshot`;
    await admin().query(`insert into public.model_aliases (alias, model_id) values ($1, $2)`, [alias, model]);
    const customer = await createCustomer({ balance: 1_000_000 });
    await createApiKeyManager(customer.client).updateApiKeyPolicy(customer.apiKeyId, { allowed_models: [model] });
    const listed = await (await fetch(`${gateway.url}/v1/models`, { headers: { authorization: `Bearer ${customer.apiKey}` } })).json();
    expect(listed.data.map((entry: { id: string }) => entry.id)).toEqual([model, alias]);
    expect(listed.data[1]).toMatchObject({ id: alias, alias_of: model, pricing: { input: 1_000_000, output: 4_000_000 } });
    const authorized = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model: alias, maxInputTokens: 1, maxOutputTokens: 1 });
    expect(authorized).toMatchObject({ status: 'authorized', model: { id: model, upstream_model: alias } });
    if (authorized.status === 'authorized') await ledger.settleRequest({ requestId: authorized.request_id, outcome: 'failed', usage: {} });
  });

  it('an alias of a disabled model is not found, and an alias cannot take a model\'s id', async () => {
    const model = await createModel(price);
    const other = await createModel(price);
    const alias = `${model}-old`;
    await admin().query(`insert into public.model_aliases (alias, model_id) values ($1, $2)`, [alias, model]);
    await admin().query('update public.models set enabled = false where id = $1', [model]);
    const customer = await createCustomer({ balance: 1_000_000 });
    expect(await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model: alias, maxInputTokens: 1 }))
      .toMatchObject({ status: 'refused', code: 'model_not_found' });
    await expect(admin().query(`insert into public.model_aliases (alias, model_id) values ($1, $2)`, [other, model])).rejects.toThrow(/already a model id/);
  });
});

import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type pg from 'pg';
import { revocationMark, revocationMarkMs } from '../../lib/gateway/rate-limits.ts';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { inRolledBackTransaction, pgNetStandIn } from '../support/pg-net.ts';
import { admin, createCustomer, createModel, type Customer } from '../support/supabase.ts';

// A key revoked anywhere in the database (not through the gateway's route)
// queues its revocation mark for Upstash with pg_net (migration 20261129000400).
// The local stack has no pg_net: its objects are stood in for, inside
// transactions that are rolled back, and the request they queue is delivered
// here as pg_net's worker would, to a real local Upstash endpoint.

let upstash: LocalUpstash;
let fake: FakeUpstream;
let gateway: Gateway;

beforeAll(async () => {
  upstash = await startLocalUpstash();
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token, READY_HOLD_SECONDS: '10' });
});

afterAll(async () => {
  await gateway?.close();
  await fake?.close();
  await upstash?.stop();
});

const relay = (client: pg.Client, url: string, token: string) => client.query('insert into private.redis_relay (url, token) values ($1, $2)', [url, token]);
const queued = async (client: pg.Client) =>
  (await client.query(`select url, headers, convert_from(body, 'UTF8') as body from net.http_request_queue order by id`)).rows.map((row) => ({ ...row, body: JSON.parse(row.body) }));

/** revoke_api_key as the key's owner, as PostgREST calls it for a signed-in user. */
async function revokeAsOwner(client: pg.Client, customer: Customer) {
  await client.query(`select set_config('request.jwt.claims', $1, true), set_config('request.jwt.claim.sub', $2, true)`, [
    JSON.stringify({ sub: customer.userId, role: 'authenticated' }),
    customer.userId,
  ]);
  await client.query('set local role authenticated');
  await client.query('select public.revoke_api_key($1)', [customer.apiKeyId]);
  await client.query('reset role');
}

describe('revocations relayed to Redis through pg_net', () => {
  it('queues the mark the gateway reads, once per revocation, only with pg_net and a relay configured', async () => {
    const [first, second, third] = [await createCustomer(), await createCustomer(), await createCustomer()];
    await inRolledBackTransaction(async (client) => {
      // Without pg_net: revoked as ever, nothing queued (there is nowhere to queue it).
      await relay(client, 'https://relay.example.test', 'relay-token');
      await client.query('update public.api_keys set revoked_at = now() where id = $1', [first.apiKeyId]);
      const { rows: [revoked] } = await client.query('select revoked_at from public.api_keys where id = $1', [first.apiKeyId]);
      expect(revoked.revoked_at).not.toBeNull();

      await client.query(pgNetStandIn);
      await revokeAsOwner(client, second);
      expect(await queued(client)).toEqual([
        {
          url: 'https://relay.example.test',
          headers: { Authorization: 'Bearer relay-token', 'Content-Type': 'application/json' },
          body: ['set', revocationMark(second.apiKeyId, second.accountId), '1', 'px', String(revocationMarkMs)],
        },
      ]);
      // Revoking a revoked key again changes nothing and queues nothing.
      await revokeAsOwner(client, second);
      await client.query('update public.api_keys set revoked_at = now() where id = $1', [second.apiKeyId]);
      expect(await queued(client)).toHaveLength(1);

      // No relay configured: nothing queued.
      await client.query('delete from private.redis_relay');
      await client.query('update public.api_keys set revoked_at = now() where id = $1', [third.apiKeyId]);
      expect(await queued(client)).toHaveLength(1);
    });
    // pg_net failing (some versions raise when their worker is down): the revocation stands, with a warning.
    const fourth = await createCustomer();
    await inRolledBackTransaction(async (client) => {
      await client.query(pgNetStandIn);
      await client.query(`create or replace function net.http_post(url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
        headers jsonb default '{}'::jsonb, timeout_milliseconds integer default 5000) returns bigint language plpgsql as $$
        begin raise exception 'the pg_net worker is not running'; end $$`);
      await relay(client, 'https://relay.example.test', 'relay-token');
      const warnings: string[] = [];
      client.on('notice', (notice) => warnings.push(notice.message ?? ''));
      await revokeAsOwner(client, fourth);
      const { rows: [revoked] } = await client.query('select revoked_at from public.api_keys where id = $1', [fourth.apiKeyId]);
      expect(revoked.revoked_at).not.toBeNull();
      expect(warnings).toContainEqual(expect.stringContaining('not relayed to Redis: the pg_net worker is not running'));
    });
    // The relay's token is not readable by customers.
    const { rows: [grants] } = await admin().query(
      `select has_table_privilege('authenticated', 'private.redis_relay', 'select') as authenticated, has_table_privilege('anon', 'private.redis_relay', 'select') as anon`,
    );
    expect(grants).toEqual({ authenticated: false, anon: false });
  });

  it('the request it queues, delivered as pg_net delivers it, makes an instance refuse a hold taken ahead for the key at once', async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 100_000_000 });
    const chat = async () => {
      const response = await fetch(`${gateway.url}/v1/chat/completions`, {
        method: 'POST',
        headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
        body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], max_tokens: 50 }),
      });
      const body = await response.text();
      await gateway.settled();
      return { status: response.status, body };
    };
    expect([(await chat()).status, (await chat()).status]).toEqual([200, 200]);
    const { rows: ready } = await admin().query(`select 1 from public.usage_events where account_id = $1 and status = 'held' and ready_until is not null`, [customer.accountId]);
    expect(ready).toHaveLength(1);

    // The revocation is rolled back afterwards (the stand-in must not outlive its
    // transaction); the mark it queued is delivered first, as pg_net does after a commit.
    await inRolledBackTransaction(async (client) => {
      await client.query(pgNetStandIn);
      await relay(client, upstash.url, upstash.token);
      await revokeAsOwner(client, customer);
      const [request] = await queued(client);
      const delivered = await fetch(request.url, { method: 'POST', headers: request.headers, body: JSON.stringify(request.body) });
      expect({ status: delivered.status, body: await delivered.json() }).toEqual({ status: 200, body: { result: 'OK' } });
    });

    const refused = await chat();
    expect(refused.status).toBe(401);
    expect(JSON.parse(refused.body)).toMatchObject({ error: { code: 'api_key_revoked' } });
    const { rows: [account] } = await admin().query('select held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account.held).toBe(0);
  });
});

// `npm run bench`: what the gateway adds to a request, measured against a
// baseline taken in the same run — the same requests sent straight to the same
// upstream. Everything is local: the embedded stack, the fake upstream (fixture
// replay, no artificial delay), the gateway over HTTP. Figures are printed as
// milliseconds and ratios; nothing here passes or fails.
import { serve } from '@hono/node-server';
import { mkdtemp, rm } from 'node:fs/promises';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { createApp } from '../lib/app.ts';
import { createApiKeyManager } from '../lib/billing/ledger.ts';
import { hashApiKey } from '../lib/billing/hash-api-key.ts';
import { createServices } from '../lib/create-services.ts';
import { loadConfig } from '../lib/env.ts';
import { createOpenAIChatMeter } from '../lib/providers/openai/openai-chat-meter.ts';
import { createSseEventSplitter } from '../lib/metering/sse-event-splitter.ts';
import { readFixture, startFakeUpstream, type FakeUpstream } from '../tests/support/fake-upstream.ts';
import { startLocalSupabase } from './local-supabase/index.ts';
import { benchDatabase } from './bench/database.ts';
import {
  benchOutboundFetch,
  cpuByComponent,
  pauseOf,
  runLoad,
  sampleInterleaved,
  sampleSequentially,
  startBareProxyProcess,
  startDelayProxy,
  startGatewayProcess,
  startServiceProcess,
  threadClient,
  timeToFirstByte,
  timeWhole,
  type LoadRequest,
  type LoadResult,
} from './bench/load.ts';
import { createBareProxy, createNodeProxy } from './bench/bare-proxy.ts';
import { redisServerPath } from './local-upstash.ts';
import { Agent } from 'node:http';
import pg from 'pg';

const rounds = Number(process.env.BENCH_ROUNDS ?? 300);
const databaseSeconds = Number(process.env.BENCH_DB_SECONDS ?? 3);
// `npm run bench -- database` runs one section; no argument runs them all.
const loadSeconds = Number(process.env.BENCH_LOAD_SECONDS ?? 5);
const sections = new Set(process.argv.slice(2).length ? process.argv.slice(2) : ['gateway', 'load', 'latency', 'database']);

function summary(samples: number[]) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: samples.reduce((a, b) => a + b, 0) / samples.length };
}

/**
 * One request every `sequentialPeriodMs` for every sequential row alike: the gateway's
 * rows wait for their settlements between requests (untimed), and without a common
 * period the direct rows would run back to back while the gateway's sat idle between
 * requests, which on a VM alone makes a request slower.
 */
const sequentialPeriodMs = 25;

/** Sequential timings of one call (see sampleSequentially); `between` runs untimed after each (letting settlements finish, so they do not compete). */
const time = (run: () => Promise<unknown>, count: number, between?: () => Promise<unknown>, period = sequentialPeriodMs) =>
  sampleSequentially(
    async () => {
      const started = performance.now();
      await run();
      return performance.now() - started;
    },
    { warm: 20, count, pause: between, period },
  );

/**
 * The fake upstream answers at once, faster than the authorize round trip, so a
 * warm key's non-streamed request waits for its hold after the answer is in.
 * A model answers in no less than tens of milliseconds: the same request to an
 * upstream that takes this long shows what the gateway adds when the upstream
 * is the slower of the two.
 */
const modelLikeUpstreamMs = 20;

const fmt = (value: number) => value.toFixed(2).padStart(7);
const plus = (value: number) => `${value >= 0 ? '+' : ''}${value.toFixed(2)}`;

/**
 * A PostgREST function that does nothing (`select 1`), made in the bench's own
 * throwaway database, and a call of it with the gateway's HTTP client and service
 * key; resolves once PostgREST has loaded it.
 */
async function nothingCall(stack: Awaited<ReturnType<typeof startLocalSupabase>>): Promise<(base: string) => Promise<void>> {
  const client = new pg.Client({ connectionString: stack.databaseUrl });
  await client.connect();
  try {
    await client.query(`create or replace function public.bench_nothing() returns integer language sql as 'select 1'`);
    await client.query('revoke all on function public.bench_nothing() from public, anon, authenticated');
    await client.query('grant execute on function public.bench_nothing() to service_role');
    await client.query(`notify pgrst, 'reload schema'`);
  } finally {
    await client.end();
  }
  const outbound = benchOutboundFetch();
  const call = async (base: string) => {
    const response = await outbound(`${base}/rpc/bench_nothing`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', apikey: stack.serviceRoleKey, authorization: `Bearer ${stack.serviceRoleKey}` },
      body: '{}',
    });
    const text = await response.text();
    if (!response.ok) throw new Error(`bench_nothing: ${response.status} ${text}`);
  };
  for (let attempt = 0; ; attempt++) {
    try {
      await call(stack.postgrestUrl);
      return call;
    } catch (error) {
      if (attempt >= 50) throw error;
      await new Promise((resolve) => setTimeout(resolve, 100));
    }
  }
}

/** The fast path's targets, each with this run's figures (filled in by the sections that measure them). */
const targets = {
  'added p50, non-streamed, local stack: <= 3 ms': [] as string[],
  'throughput at 64 connections: >= 400 req/s over 64 keys, >= 300 on one key, 0 errors': [] as string[],
  'time to first byte added, database 20 ms away, warm key: <= 2 ms': [] as string[],
};

function printTargets() {
  if (Object.values(targets).every((figures) => figures.length === 0)) return;
  console.log('\nThe fast path\'s targets and this run\'s figures (references: the bare proxy, and node:http forwarding with no framework)\n');
  for (const [target, figures] of Object.entries(targets)) {
    if (!figures.length) continue;
    console.log(`  ${target}`);
    for (const figure of figures) console.log(`      ${figure}`);
  }
}

/** The gateway's knobs that can be tried from the command line (batching, holds taken ahead). */
function knobs(): Record<string, string> {
  const names = ['AUTHORIZE_IN_FLIGHT', 'SETTLE_BATCH_WINDOW_MS', 'READY_HOLDS', 'READY_HOLD_SECONDS'];
  return Object.fromEntries(names.filter((name) => process.env[name]).map((name) => [name, process.env[name]!]));
}

/** The stand-in for Supabase's API gateway in front of the stack's PostgREST, in a process of its own. */
function startRouterProcess(stack: Awaited<ReturnType<typeof startLocalSupabase>>) {
  return startServiceProcess({
    BENCH_SERVICE: 'router',
    BENCH_POSTGREST_URL: stack.postgrestUrl,
    BENCH_ROUTER_KEYS: JSON.stringify({ anonKey: stack.anonKey, serviceRoleKey: stack.serviceRoleKey, publishableKey: stack.publishableKey, secretKey: stack.secretKey }),
  });
}

/**
 * Puts accounts on a plan whose rate limits are far above what the bench sends,
 * so the rate limiter runs on every request and never refuses.
 */
async function onBenchPlan(adminDatabaseUrl: string, accountIds: string[]) {
  const database = new pg.Client({ connectionString: adminDatabaseUrl });
  await database.connect();
  try {
    await database.query(`insert into public.plans (id, name, monthly_credits, requests_per_minute, tokens_per_minute)
                          values ('bench', 'Bench', 0, 10000000, 2000000000) on conflict (id) do nothing`);
    await database.query(`update public.accounts set plan = 'bench' where id = any ($1)`, [accountIds]);
  } finally {
    await database.end();
  }
}

async function main() {
  const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-bench-'));
  const stack = await startLocalSupabase({ dataDir, persistent: false });
  const fake = await startFakeUpstream();
  // Rate limits on a local Upstash endpoint, as deployed: with it, holds are taken ahead by default.
  // Supabase's API gateway and Upstash are services of their own in production: the gateway in
  // this process reaches each in a process of its own, so their work is not counted as its own.
  const upstashToken = `bench-${crypto.randomUUID()}`;
  const upstash = redisServerPath() ? await startServiceProcess({ BENCH_SERVICE: 'upstash', BENCH_UPSTASH_TOKEN: upstashToken }) : undefined;
  const router = await startRouterProcess(stack);
  const pending = new Set<Promise<unknown>>();
  const gatewayEnvironment = {
    SUPABASE_URL: router.url,
    SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
    OPENAI_BASE_URL: `${fake.url}/v1`,
    SPECULATIVE_UPSTREAM: process.env.SPECULATIVE_UPSTREAM ?? 'on',
    ...(upstash ? { UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstashToken } : {}),
    ...knobs(),
  };
  // A gateway in this process: its settlements and holds taken ahead are kept in `pending`.
  const servers: Array<ReturnType<typeof serve>> = [];
  const inProcessGateway = async (environment: Record<string, string>) => {
    const services = createServices(loadConfig(environment), {
      outboundFetch: benchOutboundFetch(),
      waitUntil: (promise) => {
        pending.add(promise);
        void promise.finally(() => pending.delete(promise));
      },
      log: () => {},
    });
    const server = serve({ fetch: createApp(services).fetch, port: 0, hostname: '127.0.0.1' });
    servers.push(server);
    await new Promise((resolve) => server.once('listening', resolve));
    return { services, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  };
  const { services, url: gatewayUrl } = await inProcessGateway(gatewayEnvironment);
  // The same gateway taking no holds ahead (READY_HOLDS=off: a warm key's upstream call
  // starts beside authorize instead), measured beside it.
  const { url: offUrl } = await inProcessGateway({ ...gatewayEnvironment, READY_HOLDS: 'off' });
  // The reference: the same framework, adapter and HTTP client forwarding with no billing.
  const bare = serve({ fetch: createBareProxy(fake.url, benchOutboundFetch()), port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => bare.once('listening', resolve));
  const bareUrl = `http://127.0.0.1:${(bare.address() as AddressInfo).port}`;
  const nodeProxy = createNodeProxy(fake.url).listen(0, '127.0.0.1');
  await new Promise((resolve) => nodeProxy.once('listening', resolve));
  const nodeProxyUrl = `http://127.0.0.1:${(nodeProxy.address() as AddressInfo).port}`;

  const client = threadClient();
  try {
    if (sections.has('database')) await benchDatabase({ stack, clusterDir: join(dataDir, 'postgres'), seconds: databaseSeconds });
    if (sections.has('load') || sections.has('latency')) await benchLoad(stack, fake);
    if (!sections.has('gateway')) return;
    const userId = await stack.createUser();
    const token = stack.mintUserJwt(userId);
    const userClient = createClient(stack.supabaseUrl, stack.anonKey, { accessToken: async () => token, realtime: { transport: WebSocket as never } });
    const { key } = await createApiKeyManager(userClient).createApiKey('bench');
    const admin = createClient(stack.supabaseUrl, stack.serviceRoleKey, { realtime: { transport: WebSocket as never } });
    const { data: account } = await admin.from('accounts').select('id').eq('user_id', userId).single();
    await services.ledger.grantCredits({ accountId: account!.id, amount: 1_000_000_000_000 });
    await onBenchPlan(stack.adminDatabaseUrl, [account!.id]);
    await admin.from('models').upsert({ id: 'bench', provider: 'openai', upstream_model: 'chat-basic', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 }).throwOnError();

    const body = (model: string, stream: boolean) => JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream, max_tokens: 50 });
    // Every row's client reads on a thread of its own (see threadClient): on the gateway's
    // event loop it would count the work that follows an answer (settling it, taking the
    // next hold ahead) as time before the answer. An answer that is not a success stops
    // the bench: a refusal timed as an answer would flatter the figures.
    const post = (url: string, payload: string, headers: Record<string, string> = {}) => () =>
      client.timeWhole({ url, headers: { 'content-type': 'application/json', ...headers }, body: payload });
    const direct = (stream: boolean) => post(`${fake.url}/v1/chat/completions`, body('chat-basic', stream));
    const viaGateway = (stream: boolean) => post(`${gatewayUrl}/v1/chat/completions`, body('bench', stream), { authorization: `Bearer ${key}` });
    const viaBareProxy = (stream: boolean) => post(`${bareUrl}/v1/chat/completions`, body('chat-basic', stream));
    const viaNodeProxy = (stream: boolean) => post(`${nodeProxyUrl}/v1/chat/completions`, body('chat-basic', stream));
    const viaOff = (stream: boolean) => post(`${offUrl}/v1/chat/completions`, body('bench', stream), { authorization: `Bearer ${key}` });
    const keyHash = await hashApiKey(key);
    const opened: string[] = [];
    const authorizeOnly = async () => {
      const requestId = crypto.randomUUID();
      opened.push(requestId);
      await services.ledger.authorizeRequest({ requestId, keyHash, model: 'bench', maxInputTokens: 20, maxOutputTokens: 50 });
    };

    console.log(`Gateway overhead, ${rounds} sequential requests each, one every ${sequentialPeriodMs} ms, the rows taken in turns, local stack; settlements finish between requests, untimed (ms)`);
    console.log(`The default gateway ${upstash ? 'has Redis (a local Upstash endpoint), so it takes holds ahead' : 'has no Redis (no redis-server), so it takes no holds ahead'}; READY_HOLDS=off beside it\n`);
    console.log('                                     p50      p90      p99     mean');
    const rows: Array<[string, number[]]> = [];
    for (const stream of [false, true]) {
      const label = stream ? 'stream' : 'json  ';
      const taken = await sampleInterleaved(
        { baseline: direct(stream), reference: viaBareProxy(stream), floor: viaNodeProxy(stream), gateway: viaGateway(stream), off: viaOff(stream) },
        { warm: 20, count: rounds, pause: () => Promise.allSettled([...pending]), period: sequentialPeriodMs },
      );
      await Promise.allSettled([...pending]);
      const { baseline, gateway } = taken;
      const [reference, floor, off] = [summary(taken.reference), summary(taken.floor), summary(taken.off)];
      rows.push([`upstream direct (${label})`, baseline], [`through gateway (${label})`, gateway]);
      const [b, g] = [summary(baseline), summary(gateway)];
      console.log(`  upstream direct, ${label}          ${fmt(b.p50)}  ${fmt(b.p90)}  ${fmt(b.p99)}  ${fmt(b.mean)}`);
      console.log(`  node:http proxy, ${label}          ${fmt(floor.p50)}  ${fmt(floor.p90)}  ${fmt(floor.p99)}  ${fmt(floor.mean)}   (added p50 ${(floor.p50 - b.p50).toFixed(2)})`);
      console.log(`  bare proxy (no billing), ${label}  ${fmt(reference.p50)}  ${fmt(reference.p90)}  ${fmt(reference.p99)}  ${fmt(reference.mean)}   (added p50 ${(reference.p50 - b.p50).toFixed(2)})`);
      console.log(`  through gateway, ${label}          ${fmt(g.p50)}  ${fmt(g.p90)}  ${fmt(g.p99)}  ${fmt(g.mean)}`);
      console.log(`  added by the gateway              ${fmt(g.p50 - b.p50)}  ${fmt(g.p90 - b.p90)}  ${fmt(g.p99 - b.p99)}  ${fmt(g.mean - b.mean)}   (ratio p50 ${(g.p50 / b.p50).toFixed(2)}×)`);
      console.log(`  added, no holds taken ahead       ${fmt(off.p50 - b.p50)}  ${fmt(off.p90 - b.p90)}  ${fmt(off.p99 - b.p99)}  ${fmt(off.mean - b.mean)}   (READY_HOLDS=off; ratio p50 ${(off.p50 / b.p50).toFixed(2)}×)`);
      if (!stream) {
        targets['added p50, non-streamed, local stack: <= 3 ms'].push(
          `in process: default ${plus(g.p50 - b.p50)}, READY_HOLDS=off ${plus(off.p50 - b.p50)}   (bare proxy ${plus(reference.p50 - b.p50)}, node:http ${plus(floor.p50 - b.p50)})`,
        );
      }
    }
    // The same non-streamed request, the upstream answering after modelLikeUpstreamMs.
    fake.scenarios.set('chat-model-like', { fixture: 'chat-basic', headerDelayMs: modelLikeUpstreamMs });
    await admin.from('models').upsert({ id: 'bench-model-like', provider: 'openai', upstream_model: 'chat-model-like', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 }).throwOnError();
    {
      const count = Math.min(rounds, 100);
      const period = modelLikeUpstreamMs + sequentialPeriodMs;
      const settled = () => Promise.allSettled([...pending]);
      const auth = { authorization: `Bearer ${key}` };
      const taken = await sampleInterleaved(
        {
          base: post(`${fake.url}/v1/chat/completions`, body('chat-model-like', false)),
          reference: post(`${bareUrl}/v1/chat/completions`, body('chat-model-like', false)),
          gateway: post(`${gatewayUrl}/v1/chat/completions`, body('bench-model-like', false), auth),
          off: post(`${offUrl}/v1/chat/completions`, body('bench-model-like', false), auth),
        },
        { warm: 20, count, pause: settled, period },
      );
      await settled();
      const [base, reference, gateway, off] = [summary(taken.base), summary(taken.reference), summary(taken.gateway), summary(taken.off)];
      console.log(`  json, the upstream answering after ${modelLikeUpstreamMs} ms (${count} requests each, one every ${period} ms; added p50):`);
      console.log(`      bare proxy ${plus(reference.p50 - base.p50)}, through gateway ${plus(gateway.p50 - base.p50)}, READY_HOLDS=off ${plus(off.p50 - base.p50)}   (direct p50 ${base.p50.toFixed(2)})`);
      targets['added p50, non-streamed, local stack: <= 3 ms'].push(
        `in process, the upstream answering after ${modelLikeUpstreamMs} ms: default ${plus(gateway.p50 - base.p50)}, READY_HOLDS=off ${plus(off.p50 - base.p50)}   (bare proxy ${plus(reference.p50 - base.p50)})`,
      );
    }
    const authorize = summary(await time(authorizeOnly, rounds));
    for (const requestId of opened) await services.ledger.settleRequest({ requestId, outcome: 'failed', usage: {} });
    console.log(`  of which authorize_request RPC    ${fmt(authorize.p50)}  ${fmt(authorize.p90)}  ${fmt(authorize.p99)}  ${fmt(authorize.mean)}   (one PostgREST round trip that commits a hold)`);
    // The floor under any database answer: a PostgREST call to a function that
    // reads and writes nothing, through the router as authorize goes, and
    // straight to PostgREST. A request that waits for the database waits at least this.
    {
      const nothing = await nothingCall(stack);
      const viaRouter = summary(await time(() => nothing(`${router.url}/rest/v1`), rounds));
      const straight = summary(await time(() => nothing(stack.postgrestUrl), rounds));
      console.log(`  a PostgREST call doing nothing    ${fmt(viaRouter.p50)}  ${fmt(viaRouter.p90)}  ${fmt(viaRouter.p99)}  ${fmt(viaRouter.mean)}   (select 1, through the router: the floor of any database answer here)`);
      console.log(`  the same, straight to PostgREST   ${fmt(straight.p50)}  ${fmt(straight.p90)}  ${fmt(straight.p99)}  ${fmt(straight.mean)}   (without the router standing in for Supabase's API gateway)`);
      targets['added p50, non-streamed, local stack: <= 3 ms'].push(
        `floor for a request that waits for the database: a PostgREST call doing nothing p50 ${viaRouter.p50.toFixed(2)} (through the router; ${straight.p50.toFixed(2)} straight to PostgREST), authorize_request ${authorize.p50.toFixed(2)}`,
      );
    }

    // Time to first byte in this process, the database 20 ms away: the same rows as the
    // latency part's, without the hops between processes. The client reads from a thread
    // of its own (see threadClient): on the gateway's event loop it would count the
    // hold taken ahead after a short answer as time before that answer's first byte.
    fake.scenarios.set('chat-slow-start', { fixture: 'chat-basic', headerDelayMs: upstreamFirstByteMs });
    await admin.from('models').upsert({ id: 'bench-slow-start', provider: 'openai', upstream_model: 'chat-slow-start', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 }).throwOnError();
    const distant = await startDelayProxy(new URL(router.url), 10);
    try {
      const far = await inProcessGateway({ ...gatewayEnvironment, SUPABASE_URL: distant.url });
      const farOff = await inProcessGateway({ ...gatewayEnvironment, SUPABASE_URL: distant.url, READY_HOLDS: 'off' });
      const samples = Math.min(rounds, 60);
      const slowBody = (model: string) => body(model, true);
      const firstByte = (url: string, model: string, headers: Record<string, string> = {}) => () =>
        client.timeToFirstByte({ url: `${url}/v1/chat/completions`, headers: { 'content-type': 'application/json', ...headers }, body: slowBody(model) });
      const auth = { authorization: `Bearer ${key}` };
      const taken = await sampleInterleaved(
        {
          base: firstByte(fake.url, 'chat-slow-start'),
          reference: firstByte(bareUrl, 'chat-slow-start'),
          floor: firstByte(nodeProxyUrl, 'chat-slow-start'),
          warm: firstByte(far.url, 'bench-slow-start', auth),
          warmOff: firstByte(farOff.url, 'bench-slow-start', auth),
        },
        { warm: 5, count: samples, pause: () => Promise.allSettled([...pending]), period: upstreamFirstByteMs + 25 },
      );
      const [base, reference, floor, warm, warmOff] = [summary(taken.base), summary(taken.reference), summary(taken.floor), summary(taken.warm), summary(taken.warmOff)];
      console.log(`\nTime to first byte in this process (the client on a thread of its own), streamed, database 20 ms away, upstream first byte after ${upstreamFirstByteMs} ms, ${samples} sequential requests, the rows taken in turns (ms)\n`);
      console.log('                                     p50      p99   added p50');
      console.log(`  upstream direct                   ${fmt(base.p50)}  ${fmt(base.p99)}`);
      console.log(`  node:http proxy                   ${fmt(floor.p50)}  ${fmt(floor.p99)}  ${fmt(floor.p50 - base.p50)}`);
      console.log(`  bare proxy, no billing            ${fmt(reference.p50)}  ${fmt(reference.p99)}  ${fmt(reference.p50 - base.p50)}`);
      console.log(`  through gateway, warm key         ${fmt(warm.p50)}  ${fmt(warm.p99)}  ${fmt(warm.p50 - base.p50)}`);
      console.log(`  warm key, no holds taken ahead    ${fmt(warmOff.p50)}  ${fmt(warmOff.p99)}  ${fmt(warmOff.p50 - base.p50)}   (READY_HOLDS=off)`);
      targets['time to first byte added, database 20 ms away, warm key: <= 2 ms'].push(
        `in process: default ${plus(warm.p50 - base.p50)}, READY_HOLDS=off ${plus(warmOff.p50 - base.p50)}   (bare proxy ${plus(reference.p50 - base.p50)}, node:http ${plus(floor.p50 - base.p50)})`,
      );
    } finally {
      await distant.close();
    }

    // Metering CPU: the stream meter against a plain copy of the same bytes.
    const event = readFixture('chat-long.chunks.txt');
    const bytes = new TextEncoder().encode(event.repeat(50));
    const copy = () => {
      let total = 0;
      for (let offset = 0; offset < bytes.length; offset += 1024) total += bytes.subarray(offset, offset + 1024).length;
      return total;
    };
    const meter = () => {
      const splitter = createSseEventSplitter();
      const processor = createOpenAIChatMeter({ clientWantsUsage: false });
      let total = 0;
      for (let offset = 0; offset < bytes.length; offset += 1024) {
        for (const item of splitter.push(bytes.subarray(offset, offset + 1024))) total += processor.processEvent(item)?.length ?? 0;
      }
      return total;
    };
    const repeat = (work: () => number, count: number) => {
      const started = performance.now();
      for (let index = 0; index < count; index++) work();
      return (performance.now() - started) / count;
    };
    repeat(meter, 5);
    const meterMs = repeat(meter, 20);
    const copyMs = repeat(copy, 200);
    const megabytes = bytes.length / 1e6;
    console.log(`\nStream metering CPU (OpenAI SSE, ${megabytes.toFixed(1)} MB, ${4150} events): ${meterMs.toFixed(1)} ms per pass, ${(megabytes / (meterMs / 1000)).toFixed(0)} MB/s; plain 1 KB chunk copy ${copyMs.toFixed(2)} ms (ratio ${(meterMs / copyMs).toFixed(0)}×)`);

    const heapBefore = process.memoryUsage().heapUsed;
    await time(viaGateway(true), 500);
    await Promise.allSettled([...pending]);
    const heapAfter = process.memoryUsage().heapUsed;
    console.log(`Heap after 500 more streamed requests: ${((heapAfter - heapBefore) / 1e6).toFixed(1)} MB change (without forced GC)`);
  } finally {
    await client.close();
    for (const server of servers) server.close();
    bare.close();
    nodeProxy.close();
    await fake.close();
    await upstash?.stop();
    await router.stop();
    await stack.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

const upstreamFirstByteMs = 150;

const chatBody = (model: string, stream: boolean) => JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream, max_tokens: 50 });

function printLoad(label: string, result: LoadResult, baseline?: LoadResult) {
  const ratio = baseline ? `   (${(result.requestsPerSecond / baseline.requestsPerSecond).toFixed(2)}× direct)` : '';
  const errors = result.errors ? `   ${result.errors} errors, first: ${result.firstError}` : '   0 errors';
  console.log(`  ${label.padEnd(34)} ${result.requestsPerSecond.toFixed(0).padStart(6)} req/s   p50 ${fmt(result.p50)}   p99 ${fmt(result.p99)}${ratio}${errors}`);
}

/**
 * Throughput at 16 and 64 connections, over 64 keys of 64 accounts and over
 * one key, with the gateway in a process of its own (and rate limits on a
 * local Upstash when redis-server is installed); then the time to first byte
 * with the database 20 ms away, for a key this instance has not seen (cold)
 * and one it has (warm).
 */
async function benchLoad(stack: Awaited<ReturnType<typeof startLocalSupabase>>, fake: FakeUpstream) {
  const upstreamUrl = fake.url;
  const admin = createClient(stack.supabaseUrl, stack.serviceRoleKey, { realtime: { transport: WebSocket as never } });
  await admin
    .from('models')
    .upsert([
      { id: 'bench', provider: 'openai', upstream_model: 'chat-basic', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 },
      { id: 'bench-slow-start', provider: 'openai', upstream_model: 'chat-slow-start', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 },
    ])
    .throwOnError();
  // Supabase's API gateway and Upstash are services of their own in production: here each
  // runs in a process of its own, apart from the load generator and the fake upstream.
  const upstashToken = `bench-${crypto.randomUUID()}`;
  const upstash = redisServerPath() ? await startServiceProcess({ BENCH_SERVICE: 'upstash', BENCH_UPSTASH_TOKEN: upstashToken }) : undefined;
  const router = await startRouterProcess(stack);
  const environment: Record<string, string> = {
    SUPABASE_URL: router.url,
    SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
    OPENAI_BASE_URL: `${upstreamUrl}/v1`,
    SPECULATIVE_UPSTREAM: process.env.SPECULATIVE_UPSTREAM ?? 'on',
    ...knobs(),
    ...(upstash ? { UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstashToken } : {}),
  };
  const customers = await Promise.all(Array.from({ length: 64 }, () => stack.createCustomer(1_000_000_000_000)));
  const cold = sections.has('latency') ? await Promise.all(Array.from({ length: Math.min(rounds, 60) + 5 }, () => stack.createCustomer(1_000_000_000))) : [];
  await onBenchPlan(stack.adminDatabaseUrl, [...customers, ...cold].map((customer) => customer.accountId));
  const direct: LoadRequest = { url: `${upstreamUrl}/v1/chat/completions`, headers: { 'content-type': 'application/json' }, body: chatBody('chat-basic', false) };
  const through = (url: string, apiKey: string, stream = false, model = 'bench'): LoadRequest => ({
    url: `${url}/v1/chat/completions`,
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: chatBody(model, stream),
  });
  try {
    if (sections.has('load')) {
      const gateway = await startGatewayProcess(environment);
      const bareProxy = await startBareProxyProcess(upstreamUrl);
      const nodeProxy = await startBareProxyProcess(upstreamUrl, 'node');
      const offGateway = await startGatewayProcess({ ...environment, READY_HOLDS: 'off' });
      try {
        // One request at a time, each process on its own event loop as in production; a pause
        // after each lets its settlement go (untimed), so it does not compete with the next:
        // the settlement waits out its batch window, then takes one database round trip.
        const settleWindowMs = Number(process.env.SETTLE_BATCH_WINDOW_MS ?? 10);
        const agent = new Agent({ keepAlive: true, maxSockets: 1 });
        const whole = (next: LoadRequest) => () => timeWhole(agent, next);
        console.log(`\nSequential requests, ${rounds} each, the rows taken in turns, gateway and bare proxy each in its own process, warm key, local stack (ms)\n`);
        console.log('                                     p50      p99   added p50');
        for (const stream of [false, true]) {
          const label = stream ? 'stream' : 'json  ';
          const taken = await sampleInterleaved(
            {
              base: whole({ ...direct, body: chatBody('chat-basic', stream) }),
              reference: whole({ ...direct, url: `${bareProxy.url}/v1/chat/completions`, body: chatBody('chat-basic', stream) }),
              floor: whole({ ...direct, url: `${nodeProxy.url}/v1/chat/completions`, body: chatBody('chat-basic', stream) }),
              billed: whole(through(gateway.url, customers[2]!.apiKey, stream)),
              off: whole(through(offGateway.url, customers[3]!.apiKey, stream)),
            },
            { warm: 20, count: rounds, pause: pauseOf(settleWindowMs + 25) },
          );
          const [base, reference, floor, billed, off] = [summary(taken.base), summary(taken.reference), summary(taken.floor), summary(taken.billed), summary(taken.off)];
          console.log(`  upstream direct, ${label}          ${fmt(base.p50)}  ${fmt(base.p99)}`);
          console.log(`  node:http proxy, ${label}          ${fmt(floor.p50)}  ${fmt(floor.p99)}  ${fmt(floor.p50 - base.p50)}`);
          console.log(`  bare proxy (no billing), ${label}  ${fmt(reference.p50)}  ${fmt(reference.p99)}  ${fmt(reference.p50 - base.p50)}`);
          console.log(`  through gateway, ${label}          ${fmt(billed.p50)}  ${fmt(billed.p99)}  ${fmt(billed.p50 - base.p50)}   (${(billed.p50 / base.p50).toFixed(2)}× direct)`);
          console.log(`  no holds taken ahead, ${label}     ${fmt(off.p50)}  ${fmt(off.p99)}  ${fmt(off.p50 - base.p50)}   (READY_HOLDS=off; ${(off.p50 / base.p50).toFixed(2)}× direct)`);
          if (!stream) {
            targets['added p50, non-streamed, local stack: <= 3 ms'].push(
              `own process: default ${plus(billed.p50 - base.p50)}, READY_HOLDS=off ${plus(off.p50 - base.p50)}   (bare proxy ${plus(reference.p50 - base.p50)}, node:http ${plus(floor.p50 - base.p50)})`,
            );
          }
        }
        agent.destroy();

        console.log(`\nThroughput, ${loadSeconds} s per row, non-streamed, gateway in its own process${upstash ? ', rate limits on local Upstash' : ''}\n`);
        // Unmeasured: the gateway's JIT, connection pools and the keys' first authorizations warm up.
        await runLoad(16, 2, (index) => through(gateway.url, customers[index % 64]!.apiKey));
        for (const concurrency of [16, 64]) {
          const baseline = await runLoad(concurrency, loadSeconds, () => direct);
          printLoad(`${concurrency} connections, upstream direct`, baseline);
          for (const [label, next] of [
            ['64 keys', (index: number) => through(gateway.url, customers[index % 64]!.apiKey)],
            ['one key', () => through(gateway.url, customers[0]!.apiKey)],
          ] as const) {
            const measured = { gateway: gateway.pid, router: router.pid, ...(upstash ? { 'Upstash endpoint': upstash.pid } : {}) };
            const before = cpuByComponent(measured);
            const result = await runLoad(concurrency, loadSeconds, next);
            printLoad(`${concurrency} connections, ${label}`, result, baseline);
            if (concurrency === 64) {
              targets['throughput at 64 connections: >= 400 req/s over 64 keys, >= 300 on one key, 0 errors'].push(
                `${label}: ${result.requestsPerSecond.toFixed(0)} req/s, ${result.errors} errors`,
              );
            }
            const after = cpuByComponent(measured);
            if (before && after) {
              const served = result.requestsPerSecond * loadSeconds;
              const parts = Object.keys(after).map((name) => `${name} ${((after[name]! - before[name]!) / served).toFixed(2)}`);
              console.log(`${' '.repeat(38)}CPU ms per request: ${parts.join(', ')}`);
            }
          }
        }
      } finally {
        await gateway.stop();
        await bareProxy.stop();
        await nodeProxy.stop();
        await offGateway.stop();
      }
    }
    if (sections.has('latency')) {
      const proxy = await startDelayProxy(new URL(router.url), 10);
      const gateway = await startGatewayProcess({ ...environment, SUPABASE_URL: proxy.url });
      const offGateway = await startGatewayProcess({ ...environment, SUPABASE_URL: proxy.url, READY_HOLDS: 'off' });
      const agent = new Agent({ keepAlive: true, maxSockets: 1 });
      try {
        const samples = Math.min(rounds, 60);
        // An upstream whose first byte takes 150 ms (real models take from about 300 ms to seconds):
        // a warm key's authorize runs while the upstream works, so it adds nothing it can hide behind it.
        fake.scenarios.set('chat-slow-start', { fixture: 'chat-basic', headerDelayMs: upstreamFirstByteMs });
        const streamDirect: LoadRequest = { ...direct, body: chatBody('chat-slow-start', true) };
        const firstByte = (next: (index: number) => LoadRequest) => (index: number) => timeToFirstByte(agent, next(index));
        const bareProxy = await startBareProxyProcess(fake.url);
        const nodeProxy = await startBareProxyProcess(fake.url, 'node');
        const taken = await sampleInterleaved(
          {
            base: firstByte(() => streamDirect),
            reference: firstByte(() => ({ ...streamDirect, url: `${bareProxy.url}/v1/chat/completions` })),
            floor: firstByte(() => ({ ...streamDirect, url: `${nodeProxy.url}/v1/chat/completions` })),
            coldKey: firstByte((index) => through(gateway.url, cold[index]!.apiKey, true, 'bench-slow-start')),
            warmKey: firstByte(() => through(gateway.url, customers[1]!.apiKey, true, 'bench-slow-start')),
            offKey: firstByte(() => through(offGateway.url, customers[4]!.apiKey, true, 'bench-slow-start')),
          },
          { warm: 5, count: samples, pause: pauseOf(25) },
        ).finally(() => Promise.all([bareProxy.stop(), nodeProxy.stop()]));
        const [base, reference, floor] = [summary(taken.base), summary(taken.reference), summary(taken.floor)];
        const [coldKey, warmKey, offKey] = [summary(taken.coldKey), summary(taken.warmKey), summary(taken.offKey)];
        console.log(`\nTime to first byte, streamed, database 20 ms away (10 ms each way), upstream first byte after ${upstreamFirstByteMs} ms, ${samples} sequential requests, the rows taken in turns (ms)\n`);
        console.log('                                     p50      p99   added p50');
        console.log(`  upstream direct                   ${fmt(base.p50)}  ${fmt(base.p99)}`);
        console.log(`  node:http proxy                   ${fmt(floor.p50)}  ${fmt(floor.p99)}  ${fmt(floor.p50 - base.p50)}   (no framework, own process)`);
        console.log(`  bare proxy, no billing            ${fmt(reference.p50)}  ${fmt(reference.p99)}  ${fmt(reference.p50 - base.p50)}   (same framework and HTTP client, own process)`);
        console.log(`  through gateway, cold key         ${fmt(coldKey.p50)}  ${fmt(coldKey.p99)}  ${fmt(coldKey.p50 - base.p50)}`);
        console.log(`  through gateway, warm key         ${fmt(warmKey.p50)}  ${fmt(warmKey.p99)}  ${fmt(warmKey.p50 - base.p50)}`);
        console.log(`  warm key, no holds taken ahead    ${fmt(offKey.p50)}  ${fmt(offKey.p99)}  ${fmt(offKey.p50 - base.p50)}   (READY_HOLDS=off)`);
        targets['time to first byte added, database 20 ms away, warm key: <= 2 ms'].push(
          `own process: default ${plus(warmKey.p50 - base.p50)}, READY_HOLDS=off ${plus(offKey.p50 - base.p50)}   (bare proxy ${plus(reference.p50 - base.p50)}, node:http ${plus(floor.p50 - base.p50)}; cold key ${plus(coldKey.p50 - base.p50)})`,
        );
      } finally {
        agent.destroy();
        await gateway.stop();
        await offGateway.stop();
        await proxy.close();
      }
    }
  } finally {
    await upstash?.stop();
    await router.stop();
  }
}

main().then(printTargets).catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});

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
import { readFixture, startFakeUpstream } from '../tests/support/fake-upstream.ts';
import { startLocalSupabase } from './local-supabase/index.ts';
import { benchDatabase } from './bench-database.ts';

const rounds = Number(process.env.BENCH_ROUNDS ?? 300);
const databaseSeconds = Number(process.env.BENCH_DB_SECONDS ?? 3);
// `npm run bench -- database` runs one section; no argument runs them all.
const sections = new Set(process.argv.slice(2).length ? process.argv.slice(2) : ['gateway', 'database']);

function summary(samples: number[]) {
  const sorted = [...samples].sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))]!;
  return { p50: at(0.5), p90: at(0.9), p99: at(0.99), mean: samples.reduce((a, b) => a + b, 0) / samples.length };
}

/** Sequential timings; `between` runs untimed after each (letting settlements finish, so they do not compete). */
async function time(run: () => Promise<unknown>, count: number, between?: () => Promise<unknown>): Promise<number[]> {
  for (let warm = 0; warm < 20; warm++) await run();
  const samples: number[] = [];
  for (let index = 0; index < count; index++) {
    const started = performance.now();
    await run();
    samples.push(performance.now() - started);
    await between?.();
  }
  return samples;
}

const fmt = (value: number) => value.toFixed(2).padStart(7);

async function main() {
  const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-bench-'));
  const stack = await startLocalSupabase({ dataDir, persistent: false });
  const fake = await startFakeUpstream();
  const pending = new Set<Promise<unknown>>();
  const config = loadConfig({ SUPABASE_URL: stack.supabaseUrl, SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey, OPENAI_BASE_URL: `${fake.url}/v1` });
  const services = createServices(config, {
    waitUntil: (promise) => {
      pending.add(promise);
      void promise.finally(() => pending.delete(promise));
    },
    log: () => {},
  });
  const server = serve({ fetch: createApp(services).fetch, port: 0, hostname: '127.0.0.1' });
  await new Promise((resolve) => server.once('listening', resolve));
  const gatewayUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  try {
    if (sections.has('database')) await benchDatabase({ stack, clusterDir: join(dataDir, 'postgres'), seconds: databaseSeconds });
    if (!sections.has('gateway')) return;
    const userId = await stack.createUser();
    const token = stack.mintUserJwt(userId);
    const userClient = createClient(stack.supabaseUrl, stack.anonKey, { accessToken: async () => token, realtime: { transport: WebSocket as never } });
    const { key } = await createApiKeyManager(userClient).createApiKey('bench');
    const admin = createClient(stack.supabaseUrl, stack.serviceRoleKey, { realtime: { transport: WebSocket as never } });
    const { data: account } = await admin.from('accounts').select('id').eq('user_id', userId).single();
    await services.ledger.grantCredits({ accountId: account!.id, amount: 1_000_000_000_000 });
    await admin.from('models').insert({ id: 'bench', provider: 'openai', upstream_model: 'chat-basic', max_output_tokens: 1000, price_input: 1_000_000, price_output: 1_000_000 }).throwOnError();

    const body = (model: string, stream: boolean) => JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream, max_tokens: 50 });
    const post = (url: string, payload: string, headers: Record<string, string> = {}) =>
      fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...headers }, body: payload }).then((response) => response.text());
    const direct = (stream: boolean) => () => post(`${fake.url}/v1/chat/completions`, body('chat-basic', stream));
    const viaGateway = (stream: boolean) => () => post(`${gatewayUrl}/v1/chat/completions`, body('bench', stream), { authorization: `Bearer ${key}` });
    const keyHash = await hashApiKey(key);
    const opened: string[] = [];
    const authorizeOnly = async () => {
      const requestId = crypto.randomUUID();
      opened.push(requestId);
      await services.ledger.authorizeRequest({ requestId, keyHash, model: 'bench', maxInputTokens: 20, maxOutputTokens: 50 });
    };

    console.log(`Gateway overhead, ${rounds} sequential requests each, local stack; settlements finish between requests, untimed (ms)\n`);
    console.log('                                     p50      p90      p99     mean');
    const rows: Array<[string, number[]]> = [];
    for (const stream of [false, true]) {
      const label = stream ? 'stream' : 'json  ';
      const baseline = await time(direct(stream), rounds);
      const gateway = await time(viaGateway(stream), rounds, () => Promise.allSettled([...pending]));
      await Promise.allSettled([...pending]);
      rows.push([`upstream direct (${label})`, baseline], [`through gateway (${label})`, gateway]);
      const [b, g] = [summary(baseline), summary(gateway)];
      console.log(`  upstream direct, ${label}          ${fmt(b.p50)}  ${fmt(b.p90)}  ${fmt(b.p99)}  ${fmt(b.mean)}`);
      console.log(`  through gateway, ${label}          ${fmt(g.p50)}  ${fmt(g.p90)}  ${fmt(g.p99)}  ${fmt(g.mean)}`);
      console.log(`  added by the gateway              ${fmt(g.p50 - b.p50)}  ${fmt(g.p90 - b.p90)}  ${fmt(g.p99 - b.p99)}  ${fmt(g.mean - b.mean)}   (ratio p50 ${(g.p50 / b.p50).toFixed(2)}×)`);
    }
    const authorize = summary(await time(authorizeOnly, rounds));
    for (const requestId of opened) await services.ledger.settleRequest({ requestId, outcome: 'failed', usage: {} });
    console.log(`  of which authorize_request RPC    ${fmt(authorize.p50)}  ${fmt(authorize.p90)}  ${fmt(authorize.p99)}  ${fmt(authorize.mean)}   (one PostgREST round trip that commits a hold)`);

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
    server.close();
    await fake.close();
    await stack.stop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().catch((error: unknown) => {
  console.error(error);
  process.exit(1);
});

// `npm run dev`: the local Supabase stack with data kept in .local/, the
// `demo` upstream, the gateway on a local port, a demo account with a demo API
// key, and .local/dev.json describing it all.
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient } from '@supabase/supabase-js';
import { serve } from '@hono/node-server';
import pg from 'pg';
import WebSocket from 'ws';
import { createApp } from '../lib/app.ts';
import { createApiKeyManager } from '../lib/billing/ledger.ts';
import { createServices } from '../lib/create-services.ts';
import { createNodeFetch } from '../node/http-fetch.ts';
import { loadConfig, readyHoldsOn } from '../lib/env.ts';
import { buildConsole } from './build-console.ts';
import { startDemoUpstream } from './demo-upstream.ts';
import { withPublicFiles } from './serve-public.ts';
import { redisServerPath, startLocalUpstash } from './local-upstash.ts';
import { startLocalSupabase } from './local-supabase/index.ts';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const localDir = join(projectRoot, '.local');
const demoPath = join(localDir, 'demo.json');

interface Demo {
  userId: string;
  apiKey: string;
}

async function ensureDemo(stack: Awaited<ReturnType<typeof startLocalSupabase>>): Promise<Demo> {
  if (existsSync(demoPath)) return JSON.parse(await readFile(demoPath, 'utf8')) as Demo;
  const userId = await stack.createUser('demo@tollgate.local');
  const token = stack.mintUserJwt(userId);
  const client = createClient(stack.supabaseUrl, stack.anonKey, {
    accessToken: async () => token,
    auth: { persistSession: false, autoRefreshToken: false },
    realtime: { transport: WebSocket as never },
  });
  const created = await createApiKeyManager(client).createApiKey('demo');
  const demo = { userId, apiKey: created.key };
  await writeFile(demoPath, JSON.stringify(demo, null, 2), { mode: 0o600 });
  return demo;
}

/** The demo operator: a user whose app_metadata.role is admin, as the operator sets it on a project. */
async function ensureOperator(stack: Awaited<ReturnType<typeof startLocalSupabase>>): Promise<string> {
  const email = 'operator@tollgate.local';
  const client = new pg.Client({ connectionString: stack.authAdminDatabaseUrl });
  await client.connect();
  try {
    if (!(await client.query('select 1 from auth.users where email = $1', [email])).rowCount) await stack.createUser(email);
    await client.query(`update auth.users set raw_app_meta_data = raw_app_meta_data || '{"role":"admin"}' where email = $1`, [email]);
  } finally {
    await client.end();
  }
  return email;
}

async function main() {
  await mkdir(localDir, { recursive: true });
  const stack = await startLocalSupabase({
    dataDir: join(localDir, 'supabase'),
    persistent: true,
    apiPort: Number(process.env.SUPABASE_API_PORT ?? 54321),
    databasePort: Number(process.env.SUPABASE_DB_PORT ?? 54322),
    // The sign-in mail the local Auth stand-in "sends", its code and link, shown here.
    log: (line) => void (line.startsWith('auth stand-in:') && console.log(line)),
  });
  const demo = await ensureDemo(stack);
  const demoUpstream = await startDemoUpstream();
  // Rate limits need Redis: a local Upstash-compatible endpoint when redis-server is installed.
  const upstash = !process.env.UPSTASH_REDIS_REST_URL && redisServerPath() ? await startLocalUpstash() : undefined;

  // The gateway reads its configuration as in production; the local stack and
  // the demo upstream fill in what the shell does not set.
  const config = loadConfig({
    ...process.env,
    SUPABASE_URL: stack.supabaseUrl,
    SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
    SUPABASE_ANON_KEY: stack.anonKey,
    ...(upstash ? { UPSTASH_REDIS_REST_URL: upstash.url, UPSTASH_REDIS_REST_TOKEN: upstash.token } : {}),
    CRON_SECRET: process.env.CRON_SECRET ?? randomBytes(24).toString('base64url'),
    UPSTREAM_CHANNELS: JSON.stringify([
      { provider: 'demo', kind: 'openai-compatible', baseUrl: demoUpstream.url },
      ...JSON.parse(process.env.UPSTREAM_CHANNELS ?? '[]'),
    ]),
  });
  const pending = new Set<Promise<unknown>>();
  const services = createServices(config, {
    // Outbound calls through node:http, as in the Node.js function.
    outboundFetch: createNodeFetch(),
    waitUntil: (promise) => {
      pending.add(promise);
      void promise.finally(() => pending.delete(promise));
    },
  });
  const gatewayPort = Number(process.env.GATEWAY_PORT ?? 8787);
  // The console, built and served from public/ beside the gateway, as a deployment serves it.
  await buildConsole();
  const app = createApp(services);
  const server = serve({ fetch: withPublicFiles(join(projectRoot, 'public'), (request) => app.fetch(request)), port: gatewayPort, hostname: '127.0.0.1' });
  await new Promise<void>((resolve, reject) => {
    server.once('listening', () => resolve());
    server.once('error', reject);
  });
  const gatewayUrl = `http://127.0.0.1:${gatewayPort}`;

  const dev = {
    gatewayUrl,
    supabaseUrl: stack.supabaseUrl,
    anonKey: stack.anonKey,
    serviceRoleKey: stack.serviceRoleKey,
    jwtSecret: stack.jwtSecret,
    databaseUrl: stack.databaseUrl,
    demo,
  };
  await writeFile(join(localDir, 'dev.json'), JSON.stringify(dev, null, 2) + '\n');

  console.log(`Gateway             ${gatewayUrl}`);
  console.log(`Local Supabase API  ${stack.supabaseUrl}/rest/v1`);
  console.log(`Database            ${stack.databaseUrl}`);
  console.log(`Rate limits         ${config.UPSTASH_REDIS_REST_URL ? `on (${config.UPSTASH_REDIS_REST_URL})` : 'off: install redis-server or set UPSTASH_REDIS_REST_URL'}`);
  console.log(`Settlement outbox   ${config.UPSTASH_REDIS_REST_URL ? 'on, drained every minute (as Vercel Cron does)' : 'off: settlements the database cannot take are only logged'}`);
  console.log(`Holds taken ahead   ${readyHoldsOn(config) ? 'on: a warm key\'s next request waits for no database round trip' : `off (READY_HOLDS=${config.READY_HOLDS}${config.UPSTASH_REDIS_REST_URL ? '' : ', no Redis'})`}`);
  const consoleUrl = `${gatewayUrl}/console/`;
  console.log(`Console             ${consoleUrl}`);
  console.log(`  sign in there as the demo customer, demo@tollgate.local, or the demo operator, ${await ensureOperator(stack)}:`);
  console.log('  ask for a code; the mail (its code, and a link that signs in the browser that asked) is printed here');
  console.log(`  and kept at ${stack.supabaseUrl}/auth/v1/local/outbox`);
  console.log(`Demo user           ${demo.userId}`);
  console.log(`Demo API key        ${demo.apiKey}`);
  console.log('Everything above is in .local/dev.json. Press Ctrl-C to stop.\n');
  console.log('Ask the demo model (no provider key needed):');
  console.log(`  curl ${gatewayUrl}/v1/chat/completions -H 'Authorization: Bearer ${demo.apiKey}' -H 'Content-Type: application/json' -d '{"model":"demo","messages":[{"role":"user","content":"Hello!"}]}'`);
  console.log('See the balance fall (micro-dollars: 1 USD = 1,000,000):');
  console.log(`  curl ${gatewayUrl}/v1/credits -H 'Authorization: Bearer ${demo.apiKey}'`);
  console.log('With the OpenAI SDK (npm install openai), streaming:');
  console.log(`  node --input-type=module -e "import OpenAI from 'openai'; const client = new OpenAI({ baseURL: '${gatewayUrl}/v1', apiKey: '${demo.apiKey}' }); const stream = await client.chat.completions.create({ model: 'demo', messages: [{ role: 'user', content: 'Hello!' }], stream: true }); for await (const chunk of stream) process.stdout.write(chunk.choices[0]?.delta?.content ?? ''); console.log();"`);

  // The same schedule as vercel.ts's cron: drain the settlement outbox every minute.
  const drain = setInterval(() => {
    fetch(`${gatewayUrl}/internal/settlements/drain`, { headers: { authorization: `Bearer ${config.CRON_SECRET}` } })
      .then(async (response) => {
        const report = (await response.json()) as { settled?: number; pending?: number; setAside?: number };
        if (!response.ok || report.settled || report.pending || report.setAside) console.log(`settlement outbox drain: HTTP ${response.status} ${JSON.stringify(report)}`);
      })
      .catch((error: unknown) => console.error(`settlement outbox drain failed: ${(error as Error).message}`));
  }, 60_000);

  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
    clearInterval(drain);
    server.close();
    await Promise.allSettled([...pending]);
    await demoUpstream.close();
    await upstash?.stop();
    await stack.stop();
    process.exit(0);
  };
  process.on('SIGINT', shutdown);
  process.on('SIGTERM', shutdown);
}

main().catch((error: unknown) => {
  console.error(error instanceof Error ? error.message : error);
  process.exit(1);
});

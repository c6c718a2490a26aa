// `npm run dev`: the local Supabase stack with data kept in .local/, a demo
// account with a demo API key, and .local/dev.json describing it all.
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { createClient } from '@supabase/supabase-js';
import WebSocket from 'ws';
import { createApiKeyManager } from '../lib/billing/ledger.ts';
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

async function main() {
  await mkdir(localDir, { recursive: true });
  const stack = await startLocalSupabase({
    dataDir: join(localDir, 'supabase'),
    persistent: true,
    apiPort: Number(process.env.SUPABASE_API_PORT ?? 54321),
    databasePort: Number(process.env.SUPABASE_DB_PORT ?? 54322),
  });
  const demo = await ensureDemo(stack);
  const dev = {
    supabaseUrl: stack.supabaseUrl,
    anonKey: stack.anonKey,
    serviceRoleKey: stack.serviceRoleKey,
    jwtSecret: stack.jwtSecret,
    databaseUrl: stack.databaseUrl,
    demo,
  };
  await writeFile(join(localDir, 'dev.json'), JSON.stringify(dev, null, 2) + '\n');

  console.log(`Local Supabase API  ${stack.supabaseUrl}/rest/v1`);
  console.log(`Database            ${stack.databaseUrl}`);
  console.log(`Demo user           ${demo.userId}`);
  console.log(`Demo API key        ${demo.apiKey}`);
  console.log(`Everything above is in .local/dev.json. Press Ctrl-C to stop.`);
  console.log('\nThe public price list, as anyone may read it:');
  console.log(`  curl '${stack.supabaseUrl}/rest/v1/model_prices?select=id,price_input,price_output' -H 'apikey: ${stack.anonKey}'`);

  let stopping = false;
  const shutdown = async () => {
    if (stopping) return;
    stopping = true;
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

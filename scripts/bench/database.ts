// The database part of `npm run bench`: authorize+settle pairs per second, at 1,
// 8 and 32 concurrent clients, over many accounts (one per client) and over one
// hot account and key, called in SQL on direct connections and through
// PostgREST; and the PostgreSQL CPU each pair costs, read from /proc for every
// process of the cluster. Figures only; nothing passes or fails.
import { readFileSync } from 'node:fs';
import pg from 'pg';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { clusterPids, type LocalSupabase } from '../local-supabase/index.ts';

export interface DatabaseBenchOptions {
  stack: LocalSupabase;
  /** The cluster's data directory (its postmaster.pid names the server). */
  clusterDir: string;
  /** How long each scenario runs. */
  seconds: number;
}

interface Subject {
  keyHash: string;
}

const clockTicksPerSecond = 100;

/** CPU seconds used so far by the postmaster and all its children (backends, writers). */
function clusterCpuSeconds(clusterDir: string): number {
  let ticks = 0;
  for (const pid of clusterPids(clusterDir)) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      // Fields after the command name (which may hold spaces): state ppid … utime(14) stime(15).
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ticks += Number(fields[11]) + Number(fields[12]);
    } catch {
      // gone meanwhile
    }
  }
  return ticks / clockTicksPerSecond;
}

async function createSubjects(stack: LocalSupabase, count: number): Promise<Subject[]> {
  const subjects: Subject[] = [];
  for (let index = 0; index < count; index++) {
    const { apiKey } = await stack.createCustomer(1_000_000_000_000_000);
    subjects.push({ keyHash: await hashApiKey(apiKey) });
  }
  return subjects;
}

type PairRunner = (subject: Subject, requestId: string) => Promise<void>;

async function runScenario(clients: number, subjects: readonly Subject[], seconds: number, pair: PairRunner) {
  const deadline = performance.now() + seconds * 1000;
  let pairs = 0;
  let errors = 0;
  const firstErrors: string[] = [];
  await Promise.all(
    Array.from({ length: clients }, async (_, index) => {
      const subject = subjects[index % subjects.length]!;
      while (performance.now() < deadline) {
        try {
          await pair(subject, crypto.randomUUID());
          pairs++;
        } catch (error) {
          errors++;
          if (firstErrors.length < 3) firstErrors.push((error as Error).message);
        }
      }
    }),
  );
  return { pairs, errors, firstErrors };
}

export async function benchDatabase({ stack, clusterDir, seconds }: DatabaseBenchOptions): Promise<void> {
  const admin = new pg.Pool({ connectionString: stack.adminDatabaseUrl, max: 4 });
  const model = 'bench-db';
  await admin.query(
    `insert into public.models (id, provider, upstream_model, max_output_tokens, price_input, price_output, cost_input, cost_output)
     values ($1, 'openai', $1, 1000, 1000000, 2000000, 800000, 1600000) on conflict (id) do nothing`,
    [model],
  );
  const maxClients = 32;
  const many = await createSubjects(stack, maxClients);
  const [hot] = await createSubjects(stack, 1);

  // Direct SQL: one connection per client, as the service role (PostgREST's role for the gateway).
  const connections = await Promise.all(
    Array.from({ length: maxClients }, async () => {
      const client = new pg.Client({ connectionString: stack.databaseUrl });
      await client.connect();
      await client.query('set role service_role');
      return client;
    }),
  );
  const pool: pg.Client[] = [...connections];
  const sqlPair: PairRunner = async (subject, requestId) => {
    const client = pool.pop()!;
    try {
      const { rows } = await client.query<{ result: { status: string; message?: string } }>(
        'select public.authorize_request($1, $2, $3, 200, 100) as result',
        [requestId, subject.keyHash, model],
      );
      if (rows[0]!.result.status !== 'authorized') throw new Error(rows[0]!.result.message);
      await client.query(`select public.settle_request($1, 'completed', '{"input": 150, "output": 60}', 'provider')`, [requestId]);
    } finally {
      pool.push(client);
    }
  };

  const rpc = async (name: string, args: Record<string, unknown>) => {
    const response = await fetch(`${stack.supabaseUrl}/rest/v1/rpc/${name}`, {
      method: 'POST',
      headers: { apikey: stack.serviceRoleKey, authorization: `Bearer ${stack.serviceRoleKey}`, 'content-type': 'application/json' },
      body: JSON.stringify(args),
    });
    const body = (await response.json()) as { status?: string; message?: string };
    if (!response.ok) throw new Error(`${name}: HTTP ${response.status} ${body.message ?? ''}`);
    return body;
  };
  const restPair: PairRunner = async (subject, requestId) => {
    const result = await rpc('authorize_request', {
      p_request_id: requestId, p_key_hash: subject.keyHash, p_model: model, p_max_input_tokens: 200, p_max_output_tokens: 100,
    });
    if (result.status !== 'authorized') throw new Error(result.message);
    await rpc('settle_request', { p_request_id: requestId, p_outcome: 'completed', p_usage: { input: 150, output: 60 }, p_usage_source: 'provider' });
  };

  console.log(`\nDatabase: authorize+settle pairs per second, ${seconds} s per row; PostgreSQL CPU per pair (all cluster processes, /proc)\n`);
  console.log('  path        accounts        clients   pairs/s   errors   CPU ms/pair   one account ÷ many');
  try {
    for (const [path, pair] of [['SQL', sqlPair], ['PostgREST', restPair]] as const) {
      for (const clients of [1, 8, 32]) {
        const figures: Record<string, number> = {};
        for (const [label, subjects] of [['many', many], ['one (hot)', [hot!]]] as const) {
          // Warm the connections and plans.
          await runScenario(clients, subjects, 0.3, pair);
          const cpuBefore = clusterCpuSeconds(clusterDir);
          const result = await runScenario(clients, subjects, seconds, pair);
          const cpu = clusterCpuSeconds(clusterDir) - cpuBefore;
          const rate = result.pairs / seconds;
          figures[label] = rate;
          const ratio = label === 'many' ? '' : `${((rate / figures.many!) * 100).toFixed(0)}%`;
          console.log(
            `  ${path.padEnd(10)}  ${label.padEnd(14)}  ${String(clients).padStart(7)}  ${rate.toFixed(0).padStart(8)}  ${String(result.errors).padStart(7)}  ${((cpu * 1000) / Math.max(1, result.pairs)).toFixed(2).padStart(12)}   ${ratio}`,
          );
          for (const message of result.firstErrors) console.log(`      error: ${message.slice(0, 160)}`);
        }
      }
    }
  } finally {
    await Promise.all(connections.map((client) => client.end()));
    await admin.end();
  }
}

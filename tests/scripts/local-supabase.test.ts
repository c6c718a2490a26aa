import { readdir } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import { startLocalSupabase } from '../../scripts/local-supabase/index.ts';
import { admin, stack } from '../support/supabase.ts';

const rest = (path: string, headers: Record<string, string> = {}) => fetch(`${stack.supabaseUrl}/rest/v1${path}`, { headers });

describe('the /rest/v1 router', () => {
  it('refuses a request without an apikey, or with an unknown one, as Supabase does', async () => {
    const missing = await rest('/model_prices');
    expect(missing.status).toBe(401);
    expect(await missing.json()).toMatchObject({ message: 'No API key found in request' });
    const unknown = await rest('/model_prices', { apikey: 'sb_publishable_nope' });
    expect(unknown.status).toBe(401);
    expect(await unknown.json()).toMatchObject({ message: 'Invalid API key' });
  });

  it('maps the publishable key to anon and the secret key to the service role', async () => {
    const anonPrices = await rest('/model_prices?select=id&limit=1', { apikey: stack.publishableKey });
    expect(anonPrices.status).toBe(200);
    const anonAccounts = await rest('/accounts?select=id&limit=1', { apikey: stack.publishableKey });
    expect(anonAccounts.status).toBe(401);
    const serviceAccounts = await rest('/accounts?select=id&limit=1', { apikey: stack.secretKey });
    expect(serviceAccounts.status).toBe(200);
  });

  it('accepts the apikey as a query parameter and does not pass it on as a filter', async () => {
    const response = await rest(`/model_prices?select=id&limit=1&apikey=${stack.anonKey}`);
    expect(response.status).toBe(200);
    expect(await response.json()).toHaveLength(1);
  });

  it('answers other paths with 404', async () => {
    expect((await fetch(`${stack.supabaseUrl}/nothing-here`)).status).toBe(404);
  });
});

describe('migrations and seed', () => {
  it('records every migration file as the Supabase CLI does, and the seed once', async () => {
    const files = (await readdir(join(import.meta.dirname, '../../supabase/migrations'))).filter((file) => file.endsWith('.sql')).sort();
    const { rows } = await admin().query<{ version: string; name: string }>('select version, name from supabase_migrations.schema_migrations order by version');
    expect(rows.map((row) => `${row.version}_${row.name}.sql`)).toEqual(files);
    const { rows: seeds } = await admin().query('select path from supabase_migrations.seed_files');
    expect(seeds).toEqual([{ path: 'supabase/seed.sql' }]);
  });

  it('runs the migrations as postgres, which is not a superuser', async () => {
    const { rows: [role] } = await admin().query(`select rolsuper, rolbypassrls from pg_roles where rolname = 'postgres'`);
    expect(role).toEqual({ rolsuper: false, rolbypassrls: true });
    const { rows: [owner] } = await admin().query(`select tableowner from pg_tables where schemaname = 'public' and tablename = 'accounts'`);
    expect(owner.tableowner).toBe('postgres');
  });
});

describe('a persistent stack (npm run dev)', () => {
  it('keeps its data across restarts and applies nothing twice', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-persist-'));
    try {
      const first = await startLocalSupabase({ dataDir, persistent: true });
      const userId = await first.createUser('kept@example.test');
      await first.stop();

      const second = await startLocalSupabase({ dataDir, persistent: true });
      try {
        const client = new pg.Client({ connectionString: second.adminDatabaseUrl });
        await client.connect();
        const { rows } = await client.query('select balance from public.accounts where user_id = $1', [userId]);
        const { rows: [migrations] } = await client.query('select count(*)::int as n from supabase_migrations.schema_migrations');
        await client.end();
        expect(rows).toHaveLength(1);
        expect(migrations.n).toBeGreaterThan(0);
        const response = await fetch(`${second.supabaseUrl}/rest/v1/model_prices?select=id&id=eq.demo`, { headers: { apikey: second.anonKey } });
        expect(await response.json()).toEqual([{ id: 'demo' }]);
      } finally {
        await second.stop();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

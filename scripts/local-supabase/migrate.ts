import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import type pg from 'pg';

const migrationName = /^([0-9]+)_(.*)\.sql$/;

/**
 * Applies `supabase/migrations/*.sql` that are not yet recorded, in lexical
 * order, each in its own transaction, recording each in
 * supabase_migrations.schema_migrations as the Supabase CLI does.
 * Returns the versions applied.
 */
export async function applyMigrations(client: pg.Client, migrationsDir: string): Promise<string[]> {
  const files = (await readdir(migrationsDir)).filter((file) => migrationName.test(file)).sort();
  const { rows } = await client.query<{ version: string }>('select version from supabase_migrations.schema_migrations');
  const applied = new Set(rows.map((row) => row.version));
  const versions: string[] = [];
  for (const file of files) {
    const [, version = '', name = ''] = migrationName.exec(file) ?? [];
    if (applied.has(version)) continue;
    const sql = await readFile(join(migrationsDir, file), 'utf8');
    try {
      await client.query('begin');
      await client.query('reset all');
      await client.query(sql);
      await client.query(
        'insert into supabase_migrations.schema_migrations (version, name, statements) values ($1, $2, $3)',
        [version, name, [sql]],
      );
      await client.query('commit');
    } catch (error) {
      await client.query('rollback');
      throw new Error(`migration ${file} failed: ${(error as Error).message}`, { cause: error });
    }
    versions.push(version);
  }
  return versions;
}

/** Runs a seed file once, recording its hash in supabase_migrations.seed_files. */
export async function applySeed(client: pg.Client, seedPath: string, recordAs: string): Promise<boolean> {
  const sql = await readFile(seedPath, 'utf8');
  const hash = createHash('sha256').update(sql).digest('hex');
  const { rowCount } = await client.query('select 1 from supabase_migrations.seed_files where path = $1', [recordAs]);
  if (rowCount) return false;
  try {
    await client.query('begin');
    await client.query(sql);
    await client.query('insert into supabase_migrations.seed_files (path, hash) values ($1, $2)', [recordAs, hash]);
    await client.query('commit');
  } catch (error) {
    await client.query('rollback');
    throw new Error(`seed ${recordAs} failed: ${(error as Error).message}`, { cause: error });
  }
  return true;
}

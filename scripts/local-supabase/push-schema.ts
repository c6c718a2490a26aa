// Applies the schema the way a deployment does: the Supabase CLI (pinned in
// package.json) runs `supabase db push --db-url … [--include-seed]`, which applies
// the migrations of supabase/migrations/ not yet recorded in
// supabase_migrations.schema_migrations, and the seed of supabase/config.toml.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { promisify } from 'node:util';

const run = promisify(execFile);

export function supabaseCliPath(projectRoot: string): string {
  const path = join(projectRoot, 'node_modules/.bin/supabase');
  if (!existsSync(path)) throw new Error(`The Supabase CLI is not installed at ${path}: run npm install.`);
  return path;
}

/** The CLI connects with TLS unless told not to; the local cluster has none. */
function withoutTls(databaseUrl: string): string {
  const url = new URL(databaseUrl);
  url.searchParams.set('sslmode', 'disable');
  return url.toString();
}

/**
 * `supabase db push` against `databaseUrl` (the `postgres` role, as on a
 * project), from `projectRoot`. Returns what the CLI printed; throws with it
 * when the push fails.
 */
export async function pushSchema(projectRoot: string, databaseUrl: string, { includeSeed }: { includeSeed: boolean }): Promise<string> {
  const args = ['db', 'push', '--db-url', withoutTls(databaseUrl), '--yes', '--workdir', projectRoot, ...(includeSeed ? ['--include-seed'] : [])];
  try {
    const { stdout, stderr } = await run(supabaseCliPath(projectRoot), args, {
      cwd: projectRoot,
      env: { ...process.env, SUPABASE_TELEMETRY_DISABLED: '1', DO_NOT_TRACK: '1' },
      maxBuffer: 16 * 1024 * 1024,
      timeout: 300_000,
    });
    return `${stdout}${stderr}`;
  } catch (error) {
    const { stdout = '', stderr = '' } = error as { stdout?: string; stderr?: string };
    throw new Error(`supabase db push failed: ${`${stdout}${stderr}`.trim().replaceAll(databaseUrl, '<database>')}`, { cause: error });
  }
}

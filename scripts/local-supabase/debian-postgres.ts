// Debian's PostgreSQL (apt: postgresql-15, postgresql-15-cron), for the CI stage
// that proves the migrations and the pg_cron schedules on the server Supabase's
// extension runs on. The cluster is created and configured here, in a directory
// of ours, never the system's.
import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { appendFile, chmod, chown, mkdir, writeFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { ensureTraversable } from './index.ts';

const run = promisify(execFile);

export function debianPostgresBin(version: number): string {
  return `/usr/lib/postgresql/${version}/bin`;
}

/** True when Debian's server and its pg_cron package are installed. */
export function hasDebianPgCron(version = 15): boolean {
  return existsSync(join(debianPostgresBin(version), 'initdb')) && existsSync(`/usr/share/postgresql/${version}/extension/pg_cron.control`);
}

export interface DebianPostgres {
  port: number;
  stop: () => Promise<void>;
}

/** initdb + pg_ctl start, as the `postgres` system user when running as root. */
export async function startDebianPostgres(options: {
  version?: number;
  dataDir: string;
  port: number;
  superuser: string;
  password: string;
  preload?: string[];
}): Promise<DebianPostgres> {
  const { version = 15, dataDir, port, superuser, password, preload = [] } = options;
  const bin = debianPostgresBin(version);
  const asRoot = userInfo().uid === 0;
  const exec = async (command: string, args: string[]) => {
    const [file, argv] = asRoot ? ['runuser', ['-u', 'postgres', '--', join(bin, command), ...args]] : [join(bin, command), args];
    return run(file, argv, { env: { ...process.env, LC_ALL: 'C' } });
  };

  await mkdir(dataDir, { recursive: true });
  const passwordFile = join(dataDir, 'password');
  await writeFile(passwordFile, `${password}\n`, { mode: 0o600 });
  const cluster = join(dataDir, 'cluster');
  if (asRoot) {
    await ensureTraversable(dataDir);
    const { stdout } = await run('id', ['-u', 'postgres']);
    const { stdout: group } = await run('id', ['-g', 'postgres']);
    await chown(dataDir, Number(stdout), Number(group));
    await chown(passwordFile, Number(stdout), Number(group));
  }
  await chmod(dataDir, 0o700);
  await exec('initdb', ['-D', cluster, '-U', superuser, `--pwfile=${passwordFile}`, '--auth=scram-sha-256', '--encoding=UTF8', '--locale=C']);
  await appendFile(
    join(cluster, 'postgresql.conf'),
    [
      `port = ${port}`,
      `listen_addresses = '127.0.0.1'`,
      `unix_socket_directories = ''`,
      `max_connections = 100`,
      ...(preload.length ? [`shared_preload_libraries = '${preload.join(',')}'`] : []),
      ...(preload.includes('pg_cron') ? [`cron.database_name = 'postgres'`, `cron.use_background_workers = on`, `max_worker_processes = 20`] : []),
      '',
    ].join('\n'),
  );
  await exec('pg_ctl', ['-D', cluster, '-l', join(dataDir, 'server.log'), '-w', '-t', '60', 'start']);
  return {
    port,
    stop: async () => {
      await exec('pg_ctl', ['-D', cluster, '-m', 'fast', '-w', 'stop']);
    },
  };
}

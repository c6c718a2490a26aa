import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { hasDebianPgCron, startDebianPostgres, type DebianPostgres } from '../../scripts/local-supabase/debian-postgres.ts';
import { freePort, prepareDatabase } from '../../scripts/local-supabase/index.ts';

// The CI stage on Debian's PostgreSQL 15 with postgresql-15-cron (installed by
// .ci/run). Without them it is skipped on a workstation — never in CI, where the
// summary reporter fails any skipped test.
const runStage = hasDebianPgCron() || process.env.CI === 'true';

describe.skipIf(!runStage)('Debian PostgreSQL 15 with pg_cron', () => {
  let server: DebianPostgres;
  let dataDir: string;
  let client: pg.Client;
  const secrets = { authenticatorPassword: 'auth-pass', postgresPassword: 'postgres-pass', authAdminPassword: 'auth-admin-pass' };

  beforeAll(async () => {
    dataDir = await mkdtemp(join(tmpdir(), 'tollgate-pg15-'));
    const port = await freePort();
    server = await startDebianPostgres({ dataDir, port, superuser: 'supabase_admin', password: 'admin-pass', preload: ['pg_cron'] });
    const adminUrl = `postgres://supabase_admin:admin-pass@127.0.0.1:${port}/postgres`;
    await prepareDatabase({ adminUrl, postgresUrl: `postgres://postgres:postgres-pass@127.0.0.1:${port}/postgres`, secrets, fresh: true });
    client = new pg.Client({ connectionString: adminUrl });
    await client.connect();
  }, 120_000);

  afterAll(async () => {
    await client?.end();
    await server?.stop();
    await rm(dataDir, { recursive: true, force: true });
  });

  it('applies every migration on PostgreSQL 15', async () => {
    const { rows: [version] } = await client.query('show server_version_num');
    expect(Number(version.server_version_num)).toBeGreaterThanOrEqual(150000);
    expect(Number(version.server_version_num)).toBeLessThan(160000);
    const { rows } = await client.query('select count(*)::int as n from supabase_migrations.schema_migrations');
    expect(rows[0].n).toBeGreaterThanOrEqual(4);
    const { rows: [{ extversion }] } = await client.query(`select extversion from pg_extension where extname = 'pg_cron'`);
    expect(extversion).toMatch(/^1\.4/);
  });

  it('registers the jobs by name, and a re-run of the scheduling updates them instead of adding more', async () => {
    const jobs = async () => (await client.query('select jobname, schedule from cron.job order by jobname')).rows;
    expect(await jobs()).toEqual([
      { jobname: 'tollgate-apply-price-versions', schedule: '* * * * *' },
      { jobname: 'tollgate-check-balance-states', schedule: '* * * * *' },
      { jobname: 'tollgate-deliver-alerts', schedule: '* * * * *' },
      { jobname: 'tollgate-expire-grants', schedule: '* * * * *' },
      { jobname: 'tollgate-expire-stale-holds', schedule: '* * * * *' },
      { jobname: 'tollgate-reconcile-books', schedule: '*/10 * * * *' },
      { jobname: 'tollgate-rollup-usage', schedule: '5 * * * *' },
    ]);
    const migration = await readFile(join(import.meta.dirname, '../../supabase/migrations/20261123000400_bookkeeping_jobs.sql'), 'utf8');
    const scheduling = migration.slice(migration.lastIndexOf('do $$'));
    await client.query('set role postgres');
    await client.query(scheduling);
    await client.query('reset role');
    expect(await jobs()).toHaveLength(7);
  });

  it('actually runs a scheduled job (seen in cron.job_run_details)', async () => {
    // pg_cron 1.4 schedules by the minute: wait for the next one.
    const deadline = Date.now() + 125_000;
    let runs: Array<{ jobname: string; status: string }> = [];
    while (Date.now() < deadline) {
      ({ rows: runs } = await client.query(
        `select j.jobname, d.status from cron.job_run_details d join cron.job j using (jobid) where d.status in ('succeeded', 'failed')`,
      ));
      if (runs.some((run) => run.jobname === 'tollgate-expire-stale-holds')) break;
      await new Promise((resolve) => setTimeout(resolve, 2000));
    }
    const stale = runs.filter((run) => run.jobname === 'tollgate-expire-stale-holds');
    expect(stale.length).toBeGreaterThan(0);
    expect(stale.every((run) => run.status === 'succeeded')).toBe(true);
  }, 150_000);
});

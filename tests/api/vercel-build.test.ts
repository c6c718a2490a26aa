import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// What a deployment publishes, built by the real Vercel CLI (pinned, offline,
// with a throwaway project link): one edge function, and static files only from
// public/. `.ci/run` installs the CLI into .local/vercel-cli; elsewhere set
// VERCEL_CLI, or the test is skipped (never in CI).

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');
const cli = process.env.VERCEL_CLI ?? join(root, '.local/vercel-cli/node_modules/.bin/vercel');
const available = existsSync(cli) || process.env.CI === 'true';

async function filesUnder(directory: string): Promise<string[]> {
  const entries = await readdir(directory, { recursive: true, withFileTypes: true });
  return entries.filter((entry) => entry.isFile()).map((entry) => relative(directory, join(entry.parentPath, entry.name))).sort();
}

describe.skipIf(!available)('vercel build', () => {
  it('publishes one edge function and the public folder, nothing else of the repository', { timeout: 240_000 }, async () => {
    const work = await mkdtemp(join(tmpdir(), 'tollgate-vercel-'));
    try {
      // The repository as a commit of the working tree would have it (ignored files left out).
      const { stdout } = await run('git', ['ls-files', '-z', '--cached', '--others', '--exclude-standard'], { cwd: root });
      for (const file of stdout.split('\0').filter(Boolean)) {
        if (!existsSync(join(root, file))) continue;
        await mkdir(dirname(join(work, file)), { recursive: true });
        await cp(join(root, file), join(work, file));
      }
      await mkdir(join(work, '.vercel'));
      await writeFile(join(work, '.vercel/project.json'), JSON.stringify({ projectId: 'prj_tollgate_test', orgId: 'team_tollgate_test', settings: { framework: null } }));
      await run(cli, ['build', '--yes'], { cwd: work, env: { ...process.env, VERCEL_TELEMETRY_DISABLED: '1' }, maxBuffer: 32 * 1024 * 1024 });

      const output = join(work, '.vercel/output');
      const functions = (await filesUnder(join(output, 'functions'))).filter((file) => file.endsWith('.vc-config.json'));
      expect(functions).toEqual(['api/index.func/.vc-config.json']);
      expect(JSON.parse(await readFile(join(output, 'functions', functions[0]!), 'utf8'))).toMatchObject({
        runtime: 'edge', entrypoint: 'api/index.js', regions: ['iad1'],
      });
      // Static files: exactly what public/ holds — no migrations, seed, scripts, tests or sources.
      expect(await filesUnder(join(output, 'static'))).toEqual(await filesUnder(join(root, 'public')));
      const config = JSON.parse(await readFile(join(output, 'config.json'), 'utf8'));
      expect(config.crons).toEqual([{ path: '/internal/settlements/drain', schedule: '* * * * *' }]);
      expect(config.routes).toContainEqual(expect.objectContaining({ dest: '/api' }));
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});

import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { cp, mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

// What a deployment publishes, built by the real Vercel CLI (pinned, offline,
// with a throwaway project link): the Edge and the Node.js function, every path
// routed to the one TOLLGATE_RUNTIME selects, and static files only from public/. `.ci/run` installs the CLI into .local/vercel-cli; elsewhere set
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
  it('publishes the Edge and the Node.js function, routes every path to the one TOLLGATE_RUNTIME picks, and publishes only the public folder', { timeout: 480_000 }, async () => {
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

      // The edge build sees the project's Supabase URL, as a deployment's build does; the node build none.
      const supabaseUrl = { edge: 'https://abcdefghijklmnopqrst.supabase.co', node: undefined } as const;
      for (const runtime of ['edge', 'node'] as const) {
        const output = join(work, '.vercel/output');
        await rm(output, { recursive: true, force: true });
        const env: NodeJS.ProcessEnv = { ...process.env, VERCEL_TELEMETRY_DISABLED: '1', TOLLGATE_RUNTIME: runtime, SUPABASE_URL: supabaseUrl[runtime] };
        delete env.SUPABASE_PUBLIC_URL;
        if (env.SUPABASE_URL === undefined) delete env.SUPABASE_URL;
        await run(cli, ['build', '--yes'], { cwd: work, env, maxBuffer: 32 * 1024 * 1024 });

        const functions = (await filesUnder(join(output, 'functions'))).filter((file) => file.endsWith('.vc-config.json'));
        expect(functions).toEqual(['api/index.func/.vc-config.json', 'api/node.func/.vc-config.json']);
        const functionConfig = async (name: string) => JSON.parse(await readFile(join(output, 'functions', name), 'utf8'));
        expect(await functionConfig(functions[0]!)).toMatchObject({ runtime: 'edge', entrypoint: 'api/index.js', regions: ['iad1'] });
        const nodeFunction = await functionConfig(functions[1]!);
        expect(nodeFunction).toMatchObject({ handler: 'api/node.js', launcherType: 'Nodejs', maxDuration: 300, regions: ['iad1'] });
        expect(nodeFunction.runtime).toMatch(/^nodejs\d+\.x$/);
        // Static files: exactly what public/ holds, and the console the build command bundled there —
        // no migrations, seed, scripts, tests or sources.
        const built = ['console/app.css', 'console/app.js'];
        const published = (await filesUnder(join(root, 'public'))).filter((file) => !built.includes(file));
        expect(await filesUnder(join(output, 'static'))).toEqual([...published, ...built].sort());
        const config = JSON.parse(await readFile(join(output, 'config.json'), 'utf8'));
        expect(config.crons).toEqual([{ path: '/internal/settlements/drain', schedule: '* * * * *' }]);
        expect(config.routes).toContainEqual(expect.objectContaining({ src: '^(?:/(.*))$', dest: runtime === 'node' ? '/api/node' : '/api' }));

        // The console's security headers, on every path under /console and no other.
        const headed = (config.routes as Array<{ src?: string; headers?: Record<string, string>; continue?: boolean }>).filter((route) => route.headers);
        expect(headed).toHaveLength(1);
        const [consoleRoute] = headed;
        expect(consoleRoute!.continue).toBe(true);
        const matches = (path: string) => new RegExp(consoleRoute!.src!).test(path);
        for (const path of ['/console', '/console/', '/console/index.html', '/console/app.js', '/console/app.css', '/console/config.json']) expect(matches(path), path).toBe(true);
        for (const path of ['/', '/robots.txt', '/v1/models', '/consoles', '/api/console']) expect(matches(path), path).toBe(false);
        const headers = Object.fromEntries(Object.entries(consoleRoute!.headers!).map(([name, value]) => [name.toLowerCase(), value]));
        expect(headers).toMatchObject({ 'x-frame-options': 'DENY', 'x-content-type-options': 'nosniff', 'referrer-policy': 'no-referrer' });
        const policy = Object.fromEntries(headers['content-security-policy']!.split(';').map((directive) => directive.trim().split(/\s+/)).map(([name, ...values]) => [name, values]));
        expect(policy).toEqual({
          'default-src': ["'none'"],
          'script-src': ["'self'"],
          'style-src': ["'self'", "'unsafe-inline'"],
          'img-src': ["'self'", 'data:'],
          // The project's Supabase origin when the build knows it; any https origin when it does not.
          'connect-src': ["'self'", supabaseUrl[runtime] ?? 'https:'],
          'base-uri': ["'none'"],
          'form-action': ["'self'"],
          'frame-ancestors': ["'none'"],
        });
      }

      // A value that names neither stops the build, saying why.
      const refused = await run(cli, ['build', '--yes'], { cwd: work, env: { ...process.env, VERCEL_TELEMETRY_DISABLED: '1', TOLLGATE_RUNTIME: 'lambda' }, maxBuffer: 32 * 1024 * 1024 })
        .then(() => null, (error: { stderr: string }) => error);
      expect(refused?.stderr).toContain('TOLLGATE_RUNTIME must be "edge" or "node"');
    } finally {
      await rm(work, { recursive: true, force: true });
    }
  });
});

// Builds the console (console/*.ts) into public/console/app.js and app.css with
// esbuild: the static page Vercel serves from public/, and `npm run dev` too.
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export async function buildConsole(): Promise<void> {
  await build({
    entryPoints: { app: join(projectRoot, 'console/main.ts') },
    bundle: true,
    format: 'esm',
    splitting: false,
    outdir: join(projectRoot, 'public/console'),
    platform: 'browser',
    target: 'es2022',
    minify: true,
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await buildConsole();
  console.log('public/console/app.js and app.css built');
}

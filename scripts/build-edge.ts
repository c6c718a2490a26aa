// Bundles the edge entry the way an edge runtime loads it: one file, web
// platform conditions, no Node built-ins. `npm run build:edge` writes
// dist/edge/index.js; tests use buildEdgeBundle() to measure and run it.
import { gzipSync } from 'node:zlib';
import { mkdir, writeFile } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { build } from 'esbuild';

const projectRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export interface EdgeBundle {
  code: string;
  bytes: number;
  gzipBytes: number;
}

/** `esm` for deployment-like output; `iife` exposes the handler as globalThis.tollgate for a VM. */
export async function buildEdgeBundle(format: 'esm' | 'iife' = 'esm', minify = false): Promise<EdgeBundle> {
  const result = await build({
    entryPoints: [join(projectRoot, 'api/index.ts')],
    bundle: true,
    write: false,
    format,
    globalName: format === 'iife' ? 'tollgate' : undefined,
    platform: 'browser',
    conditions: ['edge-light', 'worker', 'browser'],
    target: 'es2022',
    minify,
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  const code = result.outputFiles[0]!.text;
  const bytes = Buffer.byteLength(code);
  return { code, bytes, gzipBytes: gzipSync(code, { level: 9 }).length };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const bundle = await buildEdgeBundle('esm', true);
  const out = join(projectRoot, 'dist/edge/index.js');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, bundle.code);
  console.log(`dist/edge/index.js: ${bundle.bytes} bytes, ${bundle.gzipBytes} bytes gzip`);
}

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

export interface EdgeChunk {
  /** The output file, relative to the output folder. */
  file: string;
  /** The chunk of api/index.ts (dynamic imports are entry points of their own to esbuild). */
  entry: boolean;
  bytes: number;
  gzipBytes: number;
  /** The source modules bundled into it. */
  inputs: string[];
}

/**
 * The bundle split at its dynamic imports, as an ESM bundler deploys it: the
 * entry chunk is what every cold start loads; the rest (the fallback
 * tokenizer and its ranks) loads on first use.
 */
export async function buildEdgeChunks(): Promise<EdgeChunk[]> {
  const outdir = join(projectRoot, 'dist/edge-chunks');
  const result = await build({
    entryPoints: [join(projectRoot, 'api/index.ts')],
    bundle: true,
    write: false,
    format: 'esm',
    splitting: true,
    outdir,
    metafile: true,
    platform: 'browser',
    conditions: ['edge-light', 'worker', 'browser'],
    target: 'es2022',
    minify: true,
    define: { 'process.env.NODE_ENV': '"production"' },
    logLevel: 'silent',
  });
  return result.outputFiles.map((output) => {
    const file = output.path.slice(outdir.length + 1);
    const meta = Object.entries(result.metafile.outputs).find(([path]) => path.endsWith(`/${file}`) || path === file)?.[1];
    return {
      file,
      entry: meta?.entryPoint === 'api/index.ts',
      bytes: output.contents.length,
      gzipBytes: gzipSync(output.contents, { level: 9 }).length,
      inputs: Object.keys(meta?.inputs ?? {}),
    };
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const bundle = await buildEdgeBundle('esm', true);
  const out = join(projectRoot, 'dist/edge/index.js');
  await mkdir(dirname(out), { recursive: true });
  await writeFile(out, bundle.code);
  console.log(`dist/edge/index.js: ${bundle.bytes} bytes, ${bundle.gzipBytes} bytes gzip`);
}

import { EdgeRuntime } from 'edge-runtime';
import { buildEdgeBundle } from '../../scripts/build-edge.ts';

/** The Edge entry, bundled as an edge runtime loads it, serving fetch events inside Vercel's edge-runtime VM with `environment` as process.env. */
export async function startEdgeRuntime(environment: Record<string, string>): Promise<EdgeRuntime> {
  const { code } = await buildEdgeBundle('iife');
  return new EdgeRuntime({
    extend: (context) => Object.assign(context, { process: { env: { ...environment } } }),
    initialCode: `${code}\naddEventListener('fetch', (event) => event.respondWith(tollgate.default(event.request)));`,
  });
}

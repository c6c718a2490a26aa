// A reference for the benchmarks: the same web framework, server adapter and
// HTTP client as the gateway, forwarding to the same upstream with no key, no
// billing, no metering. What it adds is what the stack costs before the
// gateway does anything of its own. Run as a process (`startBareProxyProcess`
// in load.ts), it takes the upstream's URL in BENCH_BARE_PROXY_UPSTREAM and
// prints its port.
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import type { AddressInfo } from 'node:net';
import { benchOutboundFetch } from './load.ts';

export function createBareProxy(upstream: string, send: typeof fetch): (request: Request) => Response | Promise<Response> {
  const app = new Hono();
  app.post('/v1/*', async (c) => {
    const response = await send(`${upstream}${c.req.path}`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: await c.req.text() });
    // Through a stream of its own, as the gateway's metered responses are.
    return new Response(response.body!.pipeThrough(new TransformStream()), {
      status: response.status,
      headers: { 'content-type': response.headers.get('content-type') ?? 'application/json' },
    });
  });
  return app.fetch;
}

if (process.env.BENCH_BARE_PROXY_UPSTREAM) {
  const server = serve({ fetch: createBareProxy(process.env.BENCH_BARE_PROXY_UPSTREAM, benchOutboundFetch()), port: 0, hostname: '127.0.0.1' });
  server.once('listening', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

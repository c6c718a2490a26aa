// A reference for the benchmarks: the same web framework, server adapter and
// HTTP client as the gateway, forwarding to the same upstream with no key, no
// billing, no metering. What it adds is what the stack costs before the
// gateway does anything of its own. Run as a process (`startBareProxyProcess`
// in load.ts), it takes the upstream's URL in BENCH_BARE_PROXY_UPSTREAM and
// prints its port. With BENCH_BARE_PROXY_KIND=node it is the plainer reference
// below instead: node:http on both sides, no framework, no web streams.
import { serve } from '@hono/node-server';
import { Hono } from 'hono';
import { Agent, createServer, request as httpRequest, type Server } from 'node:http';
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

/**
 * The floor under both: node:http in and out, the upstream's answer piped through
 * as it comes. What it adds is the hop itself; what the bare proxy adds beyond it
 * is the framework, the server adapter and the web-standard HTTP client.
 */
export function createNodeProxy(upstream: string): Server {
  const agent = new Agent({ keepAlive: true });
  return createServer((incoming, outgoing) => {
    const chunks: Buffer[] = [];
    incoming.on('data', (chunk: Buffer) => chunks.push(chunk));
    incoming.on('end', () => {
      const body = Buffer.concat(chunks);
      const forwarded = httpRequest(`${upstream}${incoming.url}`, { method: 'POST', agent, headers: { 'content-type': 'application/json', 'content-length': body.byteLength } }, (answer) => {
        outgoing.writeHead(answer.statusCode ?? 502, { 'content-type': answer.headers['content-type'] ?? 'application/json' });
        answer.pipe(outgoing);
      });
      forwarded.on('error', () => outgoing.destroy());
      forwarded.end(body);
    });
  });
}

if (process.env.BENCH_BARE_PROXY_UPSTREAM) {
  const upstream = process.env.BENCH_BARE_PROXY_UPSTREAM;
  const server = process.env.BENCH_BARE_PROXY_KIND === 'node'
    ? createNodeProxy(upstream).listen(0, '127.0.0.1')
    : serve({ fetch: createBareProxy(upstream, benchOutboundFetch()), port: 0, hostname: '127.0.0.1' });
  server.once('listening', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
  process.on('SIGTERM', () => server.close(() => process.exit(0)));
}

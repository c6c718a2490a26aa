// The gateway in a process of its own, for the load benchmarks: the load
// generator, the fake upstream and the gateway do not share one event loop.
// Configuration comes as JSON in BENCH_GATEWAY_ENV; the port goes to stdout.
// Outbound calls go through node:http as in the Node.js function, or through
// Node's fetch with BENCH_FETCH=global (as on the edge runtime's fetch API).
import { serve } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import { createApp } from '../../lib/app.ts';
import { createServices } from '../../lib/create-services.ts';
import { loadConfig } from '../../lib/env.ts';
import { benchOutboundFetch } from './load.ts';

const config = loadConfig(JSON.parse(process.env.BENCH_GATEWAY_ENV ?? '{}') as Record<string, string>);
const services = createServices(config, {
  outboundFetch: benchOutboundFetch(),
  waitUntil: (promise) => void promise.catch(() => {}),
  log: (entry) => {
    if (entry.level === 'error') console.error(JSON.stringify(entry));
  },
});
const server = serve({ fetch: createApp(services).fetch, port: 0, hostname: '127.0.0.1' });
server.once('listening', () => console.log(JSON.stringify({ port: (server.address() as AddressInfo).port })));
process.on('SIGTERM', () => server.close(() => process.exit(0)));

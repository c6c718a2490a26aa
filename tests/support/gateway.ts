import { serve, type ServerType } from '@hono/node-server';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import { createApp } from '../../lib/app.ts';
import { createServices } from '../../lib/create-services.ts';
import { loadConfig } from '../../lib/env.ts';
import { stack } from './supabase.ts';
import { join } from 'node:path';
import { withPublicFiles } from '../../scripts/serve-public.ts';

export interface GatewayEvent {
  kind: 'database' | 'upstream';
  url: string;
  at: number;
}

/**
 * The gateway app served over real HTTP on a free port, against the test
 * stack. Every database round trip and upstream call is logged in order, and
 * work handed to waitUntil can be awaited.
 */
export interface GatewayOptions {
  /** Another stack than the suite's (a private one, for outages). */
  supabase?: { supabaseUrl: string; serviceRoleKey: string };
  /** Stands between the gateway and PostgREST (to delay a call, say). */
  databaseFetch?: typeof fetch;
  /** Stands between the gateway and the upstream. */
  upstreamFetch?: typeof fetch;
  /** Serve public/ in front of the app (the console), as a deployment does. */
  publicFiles?: boolean;
}

export async function startGateway(environment: Record<string, string> = {}, options: GatewayOptions = {}) {
  const supabase = options.supabase ?? stack;
  const config = loadConfig({
    SUPABASE_URL: supabase.supabaseUrl,
    SUPABASE_SERVICE_ROLE_KEY: supabase.serviceRoleKey,
    STREAM_HEADER_WAIT_MS: '1000',
    STREAM_HEARTBEAT_MS: '10000',
    ...environment,
  });
  const pending = new Set<Promise<unknown>>();
  const events: GatewayEvent[] = [];
  const logs: Record<string, unknown>[] = [];
  const services = createServices(config, {
    waitUntil: (promise) => {
      pending.add(promise);
      void promise.finally(() => pending.delete(promise));
    },
    databaseFetch: (input, init) => {
      events.push({ kind: 'database', url: String(input), at: performance.now() });
      return (options.databaseFetch ?? fetch)(input, init);
    },
    fetch: (input, init) => {
      events.push({ kind: 'upstream', url: String(input), at: performance.now() });
      return (options.upstreamFetch ?? fetch)(input, init);
    },
    log: (entry) => logs.push(entry),
  });
  const app = createApp(services);
  const server: ServerType = await new Promise((resolve) => {
    const fetch = options.publicFiles ? withPublicFiles(join(import.meta.dirname, '../../public'), (request) => app.fetch(request)) : app.fetch;
    const started = serve({ fetch, port: 0, hostname: '127.0.0.1' }, () => resolve(started));
  });
  const { port } = server.address() as AddressInfo;
  const url = `http://127.0.0.1:${port}`;

  return {
    url,
    app,
    events,
    logs,
    services,
    /** Waits until every settlement handed to waitUntil (including ones started meanwhile) is done. */
    async settled(): Promise<void> {
      for (let round = 0; round < 50; round++) {
        if (pending.size === 0) {
          await new Promise((resolve) => setTimeout(resolve, 20));
          if (pending.size === 0) return;
        }
        await Promise.allSettled([...pending]);
      }
      throw new Error('settlements did not finish');
    },
    openai: (apiKey: string, options: { maxRetries?: number } = {}) =>
      new OpenAI({ apiKey, baseURL: `${url}/v1`, maxRetries: options.maxRetries ?? 0 }),
    close: () => new Promise<void>((resolve) => {
      server.close(() => resolve());
    }),
  };
}

export type Gateway = Awaited<ReturnType<typeof startGateway>>;

import type { Hono } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { createApp } from '../app.ts';
import { createServices } from '../create-services.ts';
import { ConfigError, loadConfig } from '../env.ts';

export type Runtime = 'edge' | 'node';

/**
 * The deployment's request handler, the same for both Vercel runtimes: the app
 * is built once per instance from the environment. `runtime` is the entry's
 * own; when TOLLGATE_RUNTIME selects the other one, this entry answers 404, so
 * only the selected function serves (vercel.ts routes every path to it).
 * `outboundFetch`: the HTTP client for the gateway's own calls (default: fetch).
 */
export function createHandler(runtime: Runtime, waitUntil: (promise: Promise<unknown>) => void, outboundFetch?: typeof fetch) {
  let app: Hono<AppEnv> | undefined;
  return function handler(request: Request): Response | Promise<Response> {
    const selected = process.env.TOLLGATE_RUNTIME || 'edge';
    if (selected !== runtime) {
      return Response.json(
        { error: { message: `This deployment serves the ${selected} function; this is the ${runtime} one.`, type: 'invalid_request_error', code: 'not_found', param: null } },
        { status: 404 },
      );
    }
    try {
      // The platform's waitUntil also keeps an instance alive while a hold taken ahead is ready.
      app ??= createApp(createServices(loadConfig(process.env), { waitUntil, keepAlive: waitUntil, outboundFetch }));
    } catch (error) {
      if (!(error instanceof ConfigError)) throw error;
      console.error(error.message);
      return Response.json(
        { error: { message: 'The gateway is misconfigured; see its logs.', type: 'api_error', code: 'gateway_misconfigured', param: null } },
        { status: 503 },
      );
    }
    return app.fetch(request);
  };
}

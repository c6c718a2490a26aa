import { waitUntil } from '@vercel/functions';
import type { Hono } from 'hono';
import type { AppEnv } from '../lib/app-env.ts';
import { createApp } from '../lib/app.ts';
import { createServices } from '../lib/create-services.ts';
import { ConfigError, loadConfig } from '../lib/env.ts';

// Edge runtime; pin the region next to the Supabase database (see README, "Deploy").
export const config = { runtime: 'edge', regions: ['iad1'] };

let app: Hono<AppEnv> | undefined;

/** Every path is rewritten here by vercel.json; hono routes it. */
export default function handler(request: Request): Response | Promise<Response> {
  try {
    app ??= createApp(createServices(loadConfig(process.env), { waitUntil }));
  } catch (error) {
    if (!(error instanceof ConfigError)) throw error;
    console.error(error.message);
    return Response.json(
      { error: { message: 'The gateway is misconfigured; see its logs.', type: 'api_error', code: 'gateway_misconfigured', param: null } },
      { status: 503 },
    );
  }
  return app.fetch(request);
}

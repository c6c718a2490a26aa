import { waitUntil } from '@vercel/functions';
import { createHandler } from '../lib/entry/handler.ts';
import { createNodeFetch } from '../node/http-fetch.ts';

// The same gateway on Vercel's Node.js runtime (Fluid compute), selected with
// TOLLGATE_RUNTIME=node: longer durations than the edge (maxDuration, seconds),
// no bundle cap, no first-byte deadline. Same region as the Edge function.
// Its outbound calls (PostgREST, Upstash, providers) go through node:http, which
// costs a fraction of the CPU of Node's fetch per call (see node/http-fetch.ts).
export const config = { runtime: 'nodejs', regions: ['iad1'], maxDuration: 300 };

const handler = createHandler('node', waitUntil, createNodeFetch());

// Web-standard handlers, one per method: Vercel's Node.js runtime calls them with a Request.
export const GET = handler;
export const POST = handler;
export const PUT = handler;
export const PATCH = handler;
export const DELETE = handler;
export const OPTIONS = handler;
export const HEAD = handler;

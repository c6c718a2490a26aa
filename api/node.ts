import { waitUntil } from '@vercel/functions';
import { createHandler } from '../lib/entry/handler.ts';

// The same gateway on Vercel's Node.js runtime (Fluid compute), selected with
// TOLLGATE_RUNTIME=node: longer durations than the edge (maxDuration, seconds),
// no bundle cap, no first-byte deadline. Same region as the Edge function.
export const config = { runtime: 'nodejs', regions: ['iad1'], maxDuration: 300 };

const handler = createHandler('node', waitUntil);

// Web-standard handlers, one per method: Vercel's Node.js runtime calls them with a Request.
export const GET = handler;
export const POST = handler;
export const PUT = handler;
export const PATCH = handler;
export const DELETE = handler;
export const OPTIONS = handler;
export const HEAD = handler;

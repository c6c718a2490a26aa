import { waitUntil } from '@vercel/functions';
import { createHandler } from '../lib/entry/handler.ts';

// The Edge function (the default, TOLLGATE_RUNTIME=edge); pin the region next to
// the Supabase database (see docs/deploy.md). api/node.ts is the same gateway on
// the Node.js runtime.
export const config = { runtime: 'edge', regions: ['iad1'] };

/** Every path is rewritten here by vercel.ts (unless TOLLGATE_RUNTIME=node); hono routes it. */
export default createHandler('edge', waitUntil);

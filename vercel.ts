// Vercel's project configuration (the CLI compiles this file at build time).
// TOLLGATE_RUNTIME picks the function every path goes to: `edge` (default,
// api/index.ts) or `node` (api/node.ts, the Node.js runtime on Fluid compute).
// Set it in the project's environment; the function not selected answers 404.
import { consolePaths, consoleSecurityHeaders } from './scripts/serve-public.ts';

const runtime = process.env.TOLLGATE_RUNTIME || 'edge';
if (runtime !== 'edge' && runtime !== 'node') {
  throw new Error(`TOLLGATE_RUNTIME must be "edge" or "node", not ${JSON.stringify(runtime)}`);
}

// The console may connect to its own origin and to the Supabase URL it is handed
// at /console/config.json, which the gateway reads from this same environment
// (a change to it takes a redeploy, which rebuilds this too).
const supabaseUrl = process.env.SUPABASE_PUBLIC_URL || process.env.SUPABASE_URL;
if (!supabaseUrl) {
  console.warn('SUPABASE_URL is not set when building: the console\'s Content-Security-Policy lets it connect to any https origin, not only the Supabase project.');
}

export default {
  $schema: 'https://openapi.vercel.sh/vercel.json',
  // Static files come from public/ only: nothing else of the repository is published.
  // The build writes the console's bundle there (public/console/app.js, app.css).
  buildCommand: 'npm run build:console',
  outputDirectory: 'public',
  rewrites: [{ source: '/(.*)', destination: runtime === 'node' ? '/api/node' : '/api' }],
  // The console's security headers (scripts/serve-public.ts says why each; `npm run dev` serves the same).
  headers: [{ source: consolePaths, headers: Object.entries(consoleSecurityHeaders(supabaseUrl)).map(([key, value]) => ({ key, value })) }],
  // Drains the settlement outbox (see "When the database goes away" in the README).
  crons: [{ path: '/internal/settlements/drain', schedule: '* * * * *' }],
};

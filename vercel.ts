// Vercel's project configuration (the CLI compiles this file at build time).
// TOLLGATE_RUNTIME picks the function every path goes to: `edge` (default,
// api/index.ts) or `node` (api/node.ts, the Node.js runtime on Fluid compute).
// Set it in the project's environment; the function not selected answers 404.
const runtime = process.env.TOLLGATE_RUNTIME || 'edge';
if (runtime !== 'edge' && runtime !== 'node') {
  throw new Error(`TOLLGATE_RUNTIME must be "edge" or "node", not ${JSON.stringify(runtime)}`);
}

export default {
  $schema: 'https://openapi.vercel.sh/vercel.json',
  // Static files come from public/ only: nothing else of the repository is published.
  // The build writes the console's bundle there (public/console/app.js, app.css).
  buildCommand: 'npm run build:console',
  outputDirectory: 'public',
  rewrites: [{ source: '/(.*)', destination: runtime === 'node' ? '/api/node' : '/api' }],
  // Drains the settlement outbox (see "When the database goes away" in the README).
  crons: [{ path: '/internal/settlements/drain', schedule: '* * * * *' }],
};

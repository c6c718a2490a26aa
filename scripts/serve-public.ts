// Serves public/ in front of the gateway's app, as Vercel does for a deployment
// (a file of public/ wins; /console and /console/ are its index.html), for
// `npm run dev` and the browser tests; with the console's security headers, the
// ones vercel.ts gives it on Vercel.
import { readFile, stat } from 'node:fs/promises';
import { extname, join, normalize, resolve } from 'node:path';

const types: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
  '.json': 'application/json',
  '.svg': 'image/svg+xml',
};

/** The paths the console's headers go on: /console and everything under it (vercel.ts's `source`). */
export const consolePaths = '/console(/.*)?';
const isConsolePath = (path: string) => path === '/console' || path.startsWith('/console/');

/**
 * The security headers of the console, the same on Vercel (vercel.ts) and here.
 * `supabaseUrl` is the Supabase URL the console talks to (what
 * /console/config.json hands it): the only origin besides its own it may
 * connect to. Unknown, any https origin is allowed instead.
 *
 * - script-src 'self': the bundle (public/console/app.js) only; no inline script, no eval.
 * - style-src 'self' 'unsafe-inline': app.css, plus index.html's <style> block and the
 *   style attributes the pages set (uPlot sets its styles through the CSSOM, which
 *   CSP does not govern). No style can load from elsewhere, and what CSS could leak
 *   through (images, fonts, connections) goes nowhere but here and Supabase.
 * - img-src data: for index.html's empty favicon (`data:,`).
 * - frame-ancestors 'none' and X-Frame-Options: no page may frame it (clickjacking).
 * - Referrer-Policy no-referrer: the `?code=` a sign-in link lands with goes in no Referer.
 */
export function consoleSecurityHeaders(supabaseUrl: string | undefined): Record<string, string> {
  let supabaseOrigin = 'https:';
  if (supabaseUrl) {
    try {
      supabaseOrigin = new URL(supabaseUrl).origin;
    } catch {
      throw new Error(`The console's Supabase URL is not a URL: ${JSON.stringify(supabaseUrl)}`);
    }
  }
  const policy = [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    `connect-src 'self' ${supabaseOrigin}`,
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
  ];
  return {
    'Content-Security-Policy': policy.join('; '),
    'X-Frame-Options': 'DENY',
    'X-Content-Type-Options': 'nosniff',
    'Referrer-Policy': 'no-referrer',
  };
}

export function withPublicFiles(publicDir: string, app: (request: Request) => Response | Promise<Response>) {
  const root = resolve(publicDir);
  // The Supabase URL for connect-src, from where the page itself reads it: the app's /console/config.json.
  let supabaseUrl: string | undefined;
  const consoleHeaders = async (origin: string) => {
    if (!supabaseUrl) {
      const response = await Promise.resolve(app(new Request(`${origin}/console/config.json`))).catch(() => null);
      if (response?.ok) supabaseUrl = ((await response.json()) as { supabaseUrl?: string }).supabaseUrl;
    }
    return consoleSecurityHeaders(supabaseUrl);
  };
  const serve = async (request: Request): Promise<Response> => {
    if (request.method === 'GET' || request.method === 'HEAD') {
      let path = decodeURIComponent(new URL(request.url).pathname);
      if (path.endsWith('/')) path += 'index.html';
      const file = normalize(join(root, path));
      if (file.startsWith(`${root}/`)) {
        const found = await stat(file).catch(() => null);
        const target = found?.isDirectory() ? join(file, 'index.html') : file;
        if (found && (found.isFile() || (await stat(target).catch(() => null))?.isFile())) {
          return new Response(request.method === 'HEAD' ? null : await readFile(target), {
            headers: { 'content-type': types[extname(target)] ?? 'application/octet-stream', 'cache-control': 'no-cache' },
          });
        }
      }
    }
    return app(request);
  };
  return async (request: Request): Promise<Response> => {
    const response = await serve(request);
    const url = new URL(request.url);
    if (!isConsolePath(url.pathname)) return response;
    // As Vercel's `headers` do: on every answer under /console, the app's included.
    const headers = new Headers(response.headers);
    for (const [name, value] of Object.entries(await consoleHeaders(url.origin))) headers.set(name, value);
    return new Response(response.body, { status: response.status, statusText: response.statusText, headers });
  };
}

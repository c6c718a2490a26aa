// Serves public/ in front of the gateway's app, as Vercel does for a deployment
// (a file of public/ wins; /console and /console/ are its index.html), for
// `npm run dev` and the browser tests.
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

export function withPublicFiles(publicDir: string, app: (request: Request) => Response | Promise<Response>) {
  const root = resolve(publicDir);
  return async (request: Request): Promise<Response> => {
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
}

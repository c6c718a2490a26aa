import { createServer, request as httpRequest, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { AuthStandIn } from './auth.ts';

export interface RouterKeys {
  /** Legacy JWT keys. */
  anonKey: string;
  serviceRoleKey: string;
  /** Non-JWT keys of the newer kind, mapped to the JWT keys above. */
  publishableKey: string;
  secretKey: string;
}

export interface SupabaseRouterOptions {
  port: number;
  host?: string;
  postgrestUrl: string;
  keys: RouterKeys;
  /** Serves /auth/v1 (the local Auth stand-in). */
  auth?: AuthStandIn;
}

const corsHeaders = {
  'access-control-allow-origin': '*',
  'access-control-allow-headers': 'authorization, x-client-info, apikey, content-type, accept-profile, content-profile, prefer, range, x-retry-count, x-supabase-api-version',
  'access-control-allow-methods': 'GET, HEAD, POST, PATCH, PUT, DELETE, OPTIONS',
  'access-control-expose-headers': 'content-range, content-profile, proxy-status',
};

function sendJson(response: ServerResponse, status: number, body: unknown): void {
  if (status === 204) {
    response.writeHead(status, corsHeaders);
    response.end();
    return;
  }
  response.writeHead(status, { 'content-type': 'application/json', ...corsHeaders });
  response.end(JSON.stringify(body));
}

/**
 * Maps an apikey to the Authorization header PostgREST should see, the way
 * Supabase's gateway does: a caller's own bearer token wins unless it is one of
 * the non-JWT keys; otherwise the key decides the role.
 */
export function resolveAuthorization(apikey: string, authorization: string | undefined, keys: RouterKeys): string | null {
  const knownKeys = new Map<string, string>([
    [keys.anonKey, keys.anonKey],
    [keys.serviceRoleKey, keys.serviceRoleKey],
    [keys.publishableKey, keys.anonKey],
    [keys.secretKey, keys.serviceRoleKey],
  ]);
  const roleKey = knownKeys.get(apikey);
  if (roleKey === undefined) return null;
  if (authorization && !authorization.startsWith('Bearer sb_')) return authorization;
  return `Bearer ${roleKey}`;
}

/**
 * Serves `/rest/v1/*` on one port in front of PostgREST, with Supabase's
 * apikey → role mapping. Everything else is a 404.
 */
export async function startSupabaseRouter({ port, host = '127.0.0.1', postgrestUrl, keys, auth }: SupabaseRouterOptions): Promise<{ url: string; close: () => Promise<void> }> {
  const upstream = new URL(postgrestUrl);

  const server: Server = createServer(function handleRequest(request: IncomingMessage, response: ServerResponse) {
    const url = new URL(request.url ?? '/', 'http://localhost');
    if (request.method === 'OPTIONS') {
      response.writeHead(204, corsHeaders);
      response.end();
      return;
    }
    if (url.pathname === '/health') {
      sendJson(response, 200, { status: 'ok' });
      return;
    }
    if (auth && url.pathname.startsWith('/auth/v1/')) {
      auth.handle(request, response, url.pathname.slice('/auth/v1'.length), url.searchParams, (status, body) => sendJson(response, status, body)).catch((error: unknown) => {
        if (!response.headersSent) sendJson(response, 500, { code: 500, error_code: 'unexpected_failure', msg: (error as Error).message });
      });
      return;
    }
    if (url.pathname !== '/rest/v1' && !url.pathname.startsWith('/rest/v1/')) {
      sendJson(response, 404, { message: 'no Route matched with those values' });
      return;
    }

    const headerKey = request.headers['apikey'];
    const apikey = (Array.isArray(headerKey) ? headerKey[0] : headerKey) ?? url.searchParams.get('apikey');
    url.searchParams.delete('apikey');
    if (!apikey) {
      sendJson(response, 401, { message: 'No API key found in request', hint: 'No `apikey` request header or url param was found.' });
      return;
    }
    const authorization = resolveAuthorization(apikey, request.headers.authorization, keys);
    if (authorization === null) {
      sendJson(response, 401, { message: 'Invalid API key', hint: 'Double check your Supabase `anon` or `service_role` API key.' });
      return;
    }

    const headers: Record<string, string | string[] | undefined> = { ...request.headers, authorization, host: upstream.host };
    delete headers['apikey'];
    const path = (url.pathname.slice('/rest/v1'.length) || '/') + url.search;
    const proxied = httpRequest(
      { hostname: upstream.hostname, port: upstream.port, method: request.method, path, headers },
      function forwardResponse(upstreamResponse) {
        response.writeHead(upstreamResponse.statusCode ?? 502, { ...upstreamResponse.headers, ...corsHeaders });
        upstreamResponse.pipe(response);
      },
    );
    proxied.on('error', function upstreamFailed(error) {
      if (!response.headersSent) sendJson(response, 503, { message: `PostgREST is unreachable: ${error.message}` });
      else response.destroy(error);
    });
    request.pipe(proxied);
  });

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  const address = server.address() as AddressInfo;
  return {
    url: `http://${host}:${address.port}`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

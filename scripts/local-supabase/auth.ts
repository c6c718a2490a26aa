// A local stand-in for the Supabase Auth (GoTrue) endpoints the console uses —
// email one-time codes and magic links — like the fake providers stand in for
// OpenAI: same paths, same request and response shapes, no mail server. Users
// are rows of auth.users (written as supabase_auth_admin, as Supabase Auth
// writes them); sessions are HS256 JWTs signed with the project's JWT secret,
// carrying the user's app_metadata (so `auth.jwt() -> 'app_metadata'` works in
// SQL as on a project). "Sent" mail is kept in memory and readable at
// GET /auth/v1/local/outbox (this stand-in's own route, for `npm run dev` and
// the tests). Served under /auth/v1 by the router.
import { randomBytes, randomInt } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import pg from 'pg';
import { createAuthUser } from './index.ts';
import { signUserJwt, verifyJwt } from './jwt.ts';

export interface AuthUser {
  id: string;
  email: string;
  app_metadata: Record<string, unknown>;
  user_metadata: Record<string, unknown>;
  created_at: string;
}

export interface SentMail {
  email: string;
  code: string;
  link: string;
  sentAt: string;
}

export interface AuthStandIn {
  /** Handles a request under /auth/v1; `path` is what follows it. */
  handle(request: IncomingMessage, response: ServerResponse, path: string, query: URLSearchParams, send: (status: number, body: unknown) => void): Promise<void>;
  /** A magic link for `email` (the user created if new) that signs in at `redirectTo`. */
  magicLink(email: string, redirectTo: string): Promise<string>;
  outbox: SentMail[];
  close(): Promise<void>;
}

const sessionSeconds = 3600;
const codeLifetimeMs = 10 * 60_000;

async function readBody(request: IncomingMessage): Promise<Record<string, unknown>> {
  let text = '';
  for await (const chunk of request) text += chunk;
  try {
    const parsed = JSON.parse(text || '{}') as unknown;
    return parsed && typeof parsed === 'object' ? (parsed as Record<string, unknown>) : {};
  } catch {
    return {};
  }
}

export function createAuthStandIn(options: { jwtSecret: string; authAdminUrl: string; publicUrl: () => string; log?: (line: string) => void }): AuthStandIn {
  const { jwtSecret, authAdminUrl } = options;
  const pool = new pg.Pool({ connectionString: authAdminUrl, max: 2 });
  const codes = new Map<string, { code: string; userId: string; expires: number }>();
  const linkTokens = new Map<string, { userId: string; expires: number }>();
  const refreshTokens = new Map<string, string>();
  const outbox: SentMail[] = [];

  const userById = async (id: string): Promise<AuthUser | null> => {
    const { rows } = await pool.query(
      `select id, email, raw_app_meta_data as app_metadata, raw_user_meta_data as user_metadata, created_at from auth.users where id = $1`,
      [id],
    );
    return (rows[0] as AuthUser | undefined) ?? null;
  };
  const userByEmail = async (email: string, create: boolean): Promise<AuthUser | null> => {
    const { rows } = await pool.query(`select id from auth.users where lower(email) = lower($1)`, [email]);
    if (rows[0]) return userById(rows[0].id as string);
    if (!create) return null;
    return userById(await createAuthUser(authAdminUrl, email.toLowerCase()));
  };
  const session = (user: AuthUser) => {
    const refresh = randomBytes(24).toString('base64url');
    refreshTokens.set(refresh, user.id);
    const accessToken = signUserJwt(user.id, jwtSecret, { email: user.email, expiresInSeconds: sessionSeconds, appMetadata: user.app_metadata });
    return {
      access_token: accessToken,
      token_type: 'bearer',
      expires_in: sessionSeconds,
      expires_at: Math.floor(Date.now() / 1000) + sessionSeconds,
      refresh_token: refresh,
      user: { ...user, aud: 'authenticated', role: 'authenticated', email_confirmed_at: user.created_at },
    };
  };
  const issueLink = (userId: string, redirectTo: string) => {
    const token = randomBytes(24).toString('base64url');
    linkTokens.set(token, { userId, expires: Date.now() + codeLifetimeMs });
    const url = new URL(`${options.publicUrl()}/auth/v1/verify`);
    url.searchParams.set('token', token);
    url.searchParams.set('type', 'magiclink');
    url.searchParams.set('redirect_to', redirectTo);
    return url.toString();
  };
  const error = (send: (status: number, body: unknown) => void, status: number, code: string, message: string) =>
    send(status, { code: status, error_code: code, msg: message });

  return {
    outbox,
    close: () => pool.end(),
    async magicLink(email, redirectTo) {
      const user = await userByEmail(email, true);
      return issueLink(user!.id, redirectTo);
    },
    async handle(request, response, path, query, send) {
      const method = request.method ?? 'GET';
      if (method === 'POST' && path === '/otp') {
        const body = await readBody(request);
        const email = typeof body.email === 'string' ? body.email.trim() : '';
        if (!/^[^@\s]+@[^@\s]+$/.test(email)) return error(send, 400, 'validation_failed', 'Unable to validate email address: invalid format');
        const user = await userByEmail(email, body.create_user !== false);
        if (!user) return error(send, 422, 'otp_disabled', 'Signups not allowed for otp');
        const code = String(randomInt(0, 1_000_000)).padStart(6, '0');
        codes.set(email.toLowerCase(), { code, userId: user.id, expires: Date.now() + codeLifetimeMs });
        const redirectTo = (query.get('redirect_to') ?? (body.options as { email_redirect_to?: string } | undefined)?.email_redirect_to) || options.publicUrl();
        const mail = { email, code, link: issueLink(user.id, redirectTo), sentAt: new Date().toISOString() };
        outbox.push(mail);
        options.log?.(`auth stand-in: sign-in mail for ${email}: code ${code}, link ${mail.link}`);
        return send(200, {});
      }
      if (method === 'POST' && path === '/verify') {
        const body = await readBody(request);
        const email = String(body.email ?? '').toLowerCase();
        const pending = codes.get(email);
        if (!pending || pending.expires < Date.now() || String(body.token ?? '') !== pending.code) {
          return error(send, 403, 'otp_expired', 'Token has expired or is invalid');
        }
        codes.delete(email);
        const user = await userById(pending.userId);
        return send(200, session(user!));
      }
      if (method === 'GET' && path === '/verify') {
        const pending = linkTokens.get(query.get('token') ?? '');
        const redirectTo = query.get('redirect_to') || options.publicUrl();
        if (!pending || pending.expires < Date.now()) {
          response.writeHead(303, { location: `${redirectTo}#error=access_denied&error_code=otp_expired&error_description=Email+link+is+invalid+or+has+expired` });
          response.end();
          return;
        }
        linkTokens.delete(query.get('token')!);
        const user = await userById(pending.userId);
        const tokens = session(user!);
        const fragment = new URLSearchParams({
          access_token: tokens.access_token,
          expires_at: String(tokens.expires_at),
          expires_in: String(tokens.expires_in),
          refresh_token: tokens.refresh_token,
          token_type: 'bearer',
          type: 'magiclink',
        });
        response.writeHead(303, { location: `${redirectTo}#${fragment}` });
        response.end();
        return;
      }
      if (method === 'POST' && path === '/token' && query.get('grant_type') === 'refresh_token') {
        const body = await readBody(request);
        const userId = refreshTokens.get(String(body.refresh_token ?? ''));
        if (!userId) return error(send, 400, 'refresh_token_not_found', 'Invalid Refresh Token: Refresh Token Not Found');
        refreshTokens.delete(String(body.refresh_token));
        return send(200, session((await userById(userId))!));
      }
      if (method === 'GET' && path === '/user') {
        const claims = verifyJwt((request.headers.authorization ?? '').replace(/^Bearer\s+/i, ''), jwtSecret);
        const user = claims && typeof claims.sub === 'string' ? await userById(claims.sub) : null;
        if (!user) return error(send, 403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature');
        return send(200, { ...user, aud: 'authenticated', role: 'authenticated', email_confirmed_at: user.created_at });
      }
      if (method === 'POST' && path === '/logout') {
        response.writeHead(204);
        response.end();
        return;
      }
      if (method === 'GET' && path === '/local/outbox') {
        const email = query.get('email')?.toLowerCase();
        return send(200, outbox.filter((mail) => !email || mail.email.toLowerCase() === email));
      }
      return error(send, 404, 'not_found', `The local Auth stand-in does not serve ${method} /auth/v1${path}`);
    },
  };
}

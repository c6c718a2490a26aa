// A local stand-in for the Supabase Auth (GoTrue) endpoints the console uses —
// email one-time codes and magic links, in the PKCE flow and the implicit one —
// like the fake providers stand in for OpenAI: same paths, same request and
// response shapes, no mail server. Users are rows of auth.users (written as
// supabase_auth_admin, as Supabase Auth writes them); sessions are HS256 JWTs
// signed with the project's JWT secret, carrying the user's app_metadata (so
// `auth.jwt() -> 'app_metadata'` works in SQL as on a project). "Sent" mail is
// kept in memory and readable at GET /auth/v1/local/outbox (this stand-in's own
// route, for `npm run dev` and the tests). Served under /auth/v1 by the router.
//
// What GoTrue does, and so this does (github.com/supabase/auth, internal/api/
// verify.go, token.go, pkce.go; internal/models/flow_state.go):
// - POST /otp mails a one-time token twice over: a 6-digit code and a link.
//   They are one token: using either spends both, and a newer mail replaces it.
// - With a code_challenge (supabase-js sends one with `flowType: 'pkce'`), the
//   link's token starts with `pkce_`, and GET /verify does not hand out a
//   session: it redirects to redirect_to with `?code=<auth code>`. Only
//   POST /token?grant_type=pkce with that auth_code and the code_verifier whose
//   challenge was sent turns it into a session: once, within 5 minutes of the
//   link being followed. A wrong verifier is refused and leaves the code as it
//   was (GoTrue destroys the flow state only on success).
// - The emailed code (POST /verify) needs no verifier: it works in any browser.
// - Without a challenge (the implicit flow), GET /verify redirects with the
//   session in the fragment.
import { createHash, randomBytes, randomInt, randomUUID, timingSafeEqual } from 'node:crypto';
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
  /**
   * A sign-in link for `email` (the user created if new) as Auth's admin
   * generate_link makes it: the implicit flow, landing at `redirectTo` with the
   * session in the fragment. A client in PKCE mode (the console) refuses such a link.
   */
  magicLink(email: string, redirectTo: string): Promise<string>;
  outbox: SentMail[];
  close(): Promise<void>;
}

export interface AuthStandInOptions {
  jwtSecret: string;
  authAdminUrl: string;
  publicUrl: () => string;
  log?: (line: string) => void;
  /** The clock (ms since the epoch), for tests of expiry. */
  now?: () => number;
}

const sessionSeconds = 3600;
/** How long a mailed code and link are good for (a project's "Email OTP Expiration"; GoTrue's default is an hour). */
const codeLifetimeMs = 10 * 60_000;
/** How long an auth code is good for once the link gave it out (GoTrue's flow state expiry, 300 s). */
const authCodeLifetimeMs = 5 * 60_000;
const pkcePrefix = 'pkce_';

type ChallengeMethod = 's256' | 'plain';

/** The one-time token a mail carries, as a code and as a link; one per user, as GoTrue keeps one. */
interface PendingSignIn {
  userId: string;
  code: string;
  linkToken: string;
  expires: number;
  /** Present in the PKCE flow: what the link's auth code must be exchanged with. */
  challenge?: { value: string; method: ChallengeMethod };
}

interface AuthCode {
  userId: string;
  challenge: { value: string; method: ChallengeMethod };
  issuedAt: number;
}

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

class AuthError extends Error {
  constructor(readonly status: number, readonly code: string, message: string) {
    super(message);
  }
}

/** GoTrue's checks of the PKCE parameters of a request (RFC 7636 §4.2 for the challenge). */
function readChallenge(body: Record<string, unknown>): PendingSignIn['challenge'] {
  const value = typeof body.code_challenge === 'string' ? body.code_challenge : '';
  const method = typeof body.code_challenge_method === 'string' ? body.code_challenge_method.toLowerCase() : '';
  if (!value && !method) return undefined;
  if (!value || !method) throw new AuthError(400, 'validation_failed', 'PKCE flow requires code_challenge_method and code_challenge');
  if (method !== 's256' && method !== 'plain') throw new AuthError(400, 'validation_failed', `unsupported code_challenge method "${String(body.code_challenge_method)}"`);
  if (value.length < 43 || value.length > 128) throw new AuthError(400, 'validation_failed', 'code challenge has to be between 43 and 128 characters');
  if (!/^[a-zA-Z0-9._~-]+$/.test(value)) throw new AuthError(400, 'validation_failed', 'code challenge can only contain alphanumeric characters, hyphens, periods, underscores and tildes');
  return { value, method };
}

function verifierMatches(challenge: AuthCode['challenge'], verifier: string): boolean {
  const expected = Buffer.from(challenge.value);
  const actual = Buffer.from(challenge.method === 's256' ? createHash('sha256').update(verifier).digest('base64url') : verifier);
  return expected.length === actual.length && timingSafeEqual(expected, actual);
}

export function createAuthStandIn(options: AuthStandInOptions): AuthStandIn {
  const { jwtSecret, authAdminUrl } = options;
  const now = options.now ?? Date.now;
  const pool = new pg.Pool({ connectionString: authAdminUrl, max: 2 });
  // An idle connection the database drops (it stops before the stand-in, on Ctrl-C) is not worth the process.
  pool.on('error', (error) => options.log?.(`auth stand-in: database connection lost: ${error.message}`));
  const pending = new Map<string, PendingSignIn>();
  const authCodes = new Map<string, AuthCode>();
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
      expires_at: Math.floor(now() / 1000) + sessionSeconds,
      refresh_token: refresh,
      user: { ...user, aud: 'authenticated', role: 'authenticated', email_confirmed_at: user.created_at },
    };
  };
  /** A new one-time token for the user, replacing any earlier one; returns its link. */
  const issue = (userId: string, redirectTo: string, challenge?: PendingSignIn['challenge']) => {
    const linkToken = `${challenge ? pkcePrefix : ''}${randomBytes(24).toString('base64url')}`;
    const code = String(randomInt(0, 1_000_000)).padStart(6, '0');
    pending.set(userId, { userId, code, linkToken, expires: now() + codeLifetimeMs, ...(challenge ? { challenge } : {}) });
    const url = new URL(`${options.publicUrl()}/auth/v1/verify`);
    url.searchParams.set('token', linkToken);
    url.searchParams.set('type', 'magiclink');
    url.searchParams.set('redirect_to', redirectTo);
    return { code, link: url.toString() };
  };
  /** Spends a one-time token that is still good: the code and the link of its mail with it. */
  const spend = (entry: PendingSignIn | undefined) => {
    if (!entry || entry.expires < now()) return undefined;
    pending.delete(entry.userId);
    return entry;
  };
  const issueAuthCode = (userId: string, challenge: AuthCode['challenge']) => {
    for (const [code, entry] of authCodes) if (entry.issuedAt + authCodeLifetimeMs < now()) authCodes.delete(code);
    const code = randomUUID();
    authCodes.set(code, { userId, challenge, issuedAt: now() });
    return code;
  };
  /** Where a followed link lands: redirect_to with the auth code in the query (PKCE), or the session in the fragment. */
  const landing = (redirectTo: string, parameters: Record<string, string>, where: 'query' | 'fragment' | 'both') => {
    // Where GoTrue would not redirect (not an allowed URL), it lands on the site URL instead.
    const url = URL.canParse(redirectTo) && /^https?:$/.test(new URL(redirectTo).protocol) ? new URL(redirectTo) : new URL(options.publicUrl());
    if (where !== 'fragment') for (const [name, value] of Object.entries(parameters)) url.searchParams.set(name, value);
    if (where !== 'query') url.hash = new URLSearchParams(parameters).toString();
    return url.toString();
  };
  const fail = (send: (status: number, body: unknown) => void, error: AuthError) => send(error.status, { code: error.status, error_code: error.code, msg: error.message });

  const routes: Record<string, (request: IncomingMessage, response: ServerResponse, query: URLSearchParams, send: (status: number, body: unknown) => void) => Promise<void>> = {
    async 'POST /otp'(request, _response, query, send) {
      const body = await readBody(request);
      const email = typeof body.email === 'string' ? body.email.trim() : '';
      if (!/^[^@\s]+@[^@\s]+$/.test(email)) throw new AuthError(400, 'validation_failed', 'Unable to validate email address: invalid format');
      const challenge = readChallenge(body);
      const user = await userByEmail(email, body.create_user !== false);
      if (!user) throw new AuthError(422, 'otp_disabled', 'Signups not allowed for otp');
      const redirectTo = (query.get('redirect_to') ?? (body.options as { email_redirect_to?: string } | undefined)?.email_redirect_to) || options.publicUrl();
      const mail = { email, ...issue(user.id, redirectTo, challenge), sentAt: new Date(now()).toISOString() };
      outbox.push(mail);
      options.log?.(`auth stand-in: sign-in mail for ${email}: code ${mail.code}, link ${mail.link}`);
      send(200, {});
    },
    // The emailed code: a session straight away, in any browser.
    async 'POST /verify'(request, _response, _query, send) {
      const body = await readBody(request);
      const user = await userByEmail(String(body.email ?? ''), false);
      const entry = user ? pending.get(user.id) : undefined;
      const spent = entry?.code === String(body.token ?? '') ? spend(entry) : undefined;
      if (!spent) throw new AuthError(403, 'otp_expired', 'Token has expired or is invalid');
      send(200, session((await userById(spent.userId))!));
    },
    // The mailed link, followed in a browser.
    async 'GET /verify'(_request, response, query, _send) {
      const token = query.get('token') ?? '';
      const redirectTo = query.get('redirect_to') || options.publicUrl();
      const flow = token.startsWith(pkcePrefix) ? 'pkce' : 'implicit';
      const redirect = (location: string) => {
        response.writeHead(303, { location });
        response.end();
      };
      const spent = token ? spend([...pending.values()].find((entry) => entry.linkToken === token)) : undefined;
      if (!spent) {
        const error = { error: 'access_denied', error_code: 'otp_expired', error_description: 'Email link is invalid or has expired' };
        // GoTrue puts the error in the fragment, and in the query too in the PKCE flow.
        return redirect(landing(redirectTo, error, flow === 'pkce' ? 'both' : 'fragment'));
      }
      if (spent.challenge) return redirect(landing(redirectTo, { code: issueAuthCode(spent.userId, spent.challenge) }, 'query'));
      const tokens = session((await userById(spent.userId))!);
      redirect(landing(redirectTo, {
        access_token: tokens.access_token,
        expires_at: String(tokens.expires_at),
        expires_in: String(tokens.expires_in),
        refresh_token: tokens.refresh_token,
        token_type: 'bearer',
        type: 'magiclink',
      }, 'fragment'));
    },
    async 'POST /token'(request, _response, query, send) {
      const body = await readBody(request);
      const grant = query.get('grant_type');
      if (grant === 'refresh_token') {
        const userId = refreshTokens.get(String(body.refresh_token ?? ''));
        if (!userId) throw new AuthError(400, 'refresh_token_not_found', 'Invalid Refresh Token: Refresh Token Not Found');
        refreshTokens.delete(String(body.refresh_token));
        return send(200, session((await userById(userId))!));
      }
      if (grant === 'pkce') {
        const authCode = typeof body.auth_code === 'string' ? body.auth_code : '';
        const verifier = typeof body.code_verifier === 'string' ? body.code_verifier : '';
        if (!authCode || !verifier) throw new AuthError(400, 'validation_failed', 'invalid request: both auth code and code verifier should be non-empty');
        const entry = authCodes.get(authCode);
        if (!entry) throw new AuthError(404, 'flow_state_not_found', 'invalid flow state, no valid flow state found');
        if (entry.issuedAt + authCodeLifetimeMs < now()) throw new AuthError(422, 'flow_state_expired', 'invalid flow state, flow state has expired');
        if (!verifierMatches(entry.challenge, verifier)) throw new AuthError(400, 'bad_code_verifier', 'code challenge does not match previously saved code verifier');
        authCodes.delete(authCode);
        return send(200, session((await userById(entry.userId))!));
      }
      throw new AuthError(400, 'validation_failed', `The local Auth stand-in does not serve grant_type=${grant}`);
    },
    async 'GET /user'(request, _response, _query, send) {
      const claims = verifyJwt((request.headers.authorization ?? '').replace(/^Bearer\s+/i, ''), jwtSecret);
      const user = claims && typeof claims.sub === 'string' ? await userById(claims.sub) : null;
      if (!user) throw new AuthError(403, 'bad_jwt', 'invalid JWT: unable to parse or verify signature');
      send(200, { ...user, aud: 'authenticated', role: 'authenticated', email_confirmed_at: user.created_at });
    },
    // Signing out ends the user's sessions (all of them: the stand-in does not tell them apart) unless scope=others.
    // Answered through `send`, so a browser's fetch gets the CORS headers and supabase-js clears its session.
    async 'POST /logout'(request, _response, query, send) {
      const claims = verifyJwt((request.headers.authorization ?? '').replace(/^Bearer\s+/i, ''), jwtSecret);
      if (claims && typeof claims.sub === 'string' && query.get('scope') !== 'others') {
        for (const [token, userId] of refreshTokens) if (userId === claims.sub) refreshTokens.delete(token);
      }
      send(204, null);
    },
    async 'GET /local/outbox'(_request, _response, query, send) {
      const email = query.get('email')?.toLowerCase();
      send(200, outbox.filter((mail) => !email || mail.email.toLowerCase() === email));
    },
  };

  return {
    outbox,
    close: () => pool.end(),
    async magicLink(email, redirectTo) {
      const user = await userByEmail(email, true);
      return issue(user!.id, redirectTo).link;
    },
    async handle(request, response, path, query, send) {
      const method = request.method ?? 'GET';
      const route = routes[`${method} ${path}`];
      try {
        if (!route) throw new AuthError(404, 'not_found', `The local Auth stand-in does not serve ${method} /auth/v1${path}`);
        await route(request, response, query, send);
      } catch (error) {
        if (error instanceof AuthError) return fail(send, error);
        throw error;
      }
    },
  };
}

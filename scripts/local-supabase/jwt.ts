import { createHmac, timingSafeEqual } from 'node:crypto';

function base64url(input: string | Buffer): string {
  return Buffer.from(input).toString('base64url');
}

/** Signs an HS256 JWT, the way Supabase signs its legacy API keys and user sessions. */
export function signJwt(payload: Record<string, unknown>, secret: string): string {
  const header = base64url(JSON.stringify({ alg: 'HS256', typ: 'JWT' }));
  const body = base64url(JSON.stringify(payload));
  const signature = createHmac('sha256', secret).update(`${header}.${body}`).digest('base64url');
  return `${header}.${body}.${signature}`;
}

/** The claims of an HS256 JWT signed with `secret` and not expired; null otherwise. */
export function verifyJwt(token: string, secret: string): Record<string, unknown> | null {
  const [header, body, signature] = token.split('.');
  if (!header || !body || !signature) return null;
  const expected = createHmac('sha256', secret).update(`${header}.${body}`).digest();
  const given = Buffer.from(signature, 'base64url');
  if (given.length !== expected.length || !timingSafeEqual(given, expected)) return null;
  const claims = JSON.parse(Buffer.from(body, 'base64url').toString('utf8')) as Record<string, unknown>;
  if (typeof claims.exp === 'number' && claims.exp * 1000 < Date.now()) return null;
  return claims;
}

/** A legacy Supabase API key: a long-lived JWT carrying only a role. */
export function signRoleKey(role: 'anon' | 'service_role', secret: string): string {
  const issuedAt = Math.floor(Date.now() / 1000);
  return signJwt({ iss: 'supabase-local', role, iat: issuedAt, exp: issuedAt + 10 * 365 * 24 * 3600 }, secret);
}

export interface UserJwtOptions {
  email?: string;
  expiresInSeconds?: number;
  /** Set by the operator only (auth.users.raw_app_meta_data): `{role: 'admin'}` makes an operator. */
  appMetadata?: Record<string, unknown>;
}

/** A session token as Supabase Auth issues it for a signed-in user. */
export function signUserJwt(userId: string, secret: string, options: UserJwtOptions = {}): string {
  const { email = `${userId}@example.test`, expiresInSeconds = 3600, appMetadata = { provider: 'email', providers: ['email'] } } = options;
  const issuedAt = Math.floor(Date.now() / 1000);
  return signJwt(
    {
      iss: 'supabase-local/auth/v1',
      aud: 'authenticated',
      role: 'authenticated',
      sub: userId,
      email,
      iat: issuedAt,
      exp: issuedAt + expiresInSeconds,
      aal: 'aal1',
      is_anonymous: false,
      app_metadata: appMetadata,
      user_metadata: {},
    },
    secret,
  );
}

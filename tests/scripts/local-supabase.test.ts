import { createHash, randomBytes, randomUUID } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createClient } from '@supabase/supabase-js';
import pg from 'pg';
import { describe, expect, it } from 'vitest';
import WebSocket from 'ws';
import { createAuthStandIn } from '../../scripts/local-supabase/auth.ts';
import { startLocalSupabase } from '../../scripts/local-supabase/index.ts';
import { startSupabaseRouter } from '../../scripts/local-supabase/router.ts';
import { admin, stack } from '../support/supabase.ts';

const rest = (path: string, headers: Record<string, string> = {}) => fetch(`${stack.supabaseUrl}/rest/v1${path}`, { headers });

describe('the /rest/v1 router', () => {
  it('refuses a request without an apikey, or with an unknown one, as Supabase does', async () => {
    const missing = await rest('/model_prices');
    expect(missing.status).toBe(401);
    expect(await missing.json()).toMatchObject({ message: 'No API key found in request' });
    const unknown = await rest('/model_prices', { apikey: 'sb_publishable_nope' });
    expect(unknown.status).toBe(401);
    expect(await unknown.json()).toMatchObject({ message: 'Invalid API key' });
  });

  it('maps the publishable key to anon and the secret key to the service role', async () => {
    const anonPrices = await rest('/model_prices?select=id&limit=1', { apikey: stack.publishableKey });
    expect(anonPrices.status).toBe(200);
    const anonAccounts = await rest('/accounts?select=id&limit=1', { apikey: stack.publishableKey });
    expect(anonAccounts.status).toBe(401);
    const serviceAccounts = await rest('/accounts?select=id&limit=1', { apikey: stack.secretKey });
    expect(serviceAccounts.status).toBe(200);
  });

  it('accepts the apikey as a query parameter and does not pass it on as a filter', async () => {
    const response = await rest(`/model_prices?select=id&limit=1&apikey=${stack.anonKey}`);
    expect(response.status).toBe(200);
    expect(await response.json()).toHaveLength(1);
  });

  it('answers other paths with 404', async () => {
    expect((await fetch(`${stack.supabaseUrl}/nothing-here`)).status).toBe(404);
  });
});

describe('migrations and seed', () => {
  it('records every migration file as the Supabase CLI does, and the seed once', async () => {
    const files = (await readdir(join(import.meta.dirname, '../../supabase/migrations'))).filter((file) => file.endsWith('.sql')).sort();
    const { rows } = await admin().query<{ version: string; name: string }>('select version, name from supabase_migrations.schema_migrations order by version');
    expect(rows.map((row) => `${row.version}_${row.name}.sql`)).toEqual(files);
    const { rows: seeds } = await admin().query('select path from supabase_migrations.seed_files');
    expect(seeds).toEqual([{ path: 'supabase/seed.sql' }]);
  });

  it('runs the migrations as postgres, which is not a superuser', async () => {
    const { rows: [role] } = await admin().query(`select rolsuper, rolbypassrls from pg_roles where rolname = 'postgres'`);
    expect(role).toEqual({ rolsuper: false, rolbypassrls: true });
    const { rows: [owner] } = await admin().query(`select tableowner from pg_tables where schemaname = 'public' and tablename = 'accounts'`);
    expect(owner.tableowner).toBe('postgres');
  });
});

describe('a persistent stack (npm run dev)', () => {
  it('keeps its data across restarts and applies nothing twice', async () => {
    const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-persist-'));
    try {
      const first = await startLocalSupabase({ dataDir, persistent: true });
      const userId = await first.createUser('kept@example.test');
      await first.stop();

      const second = await startLocalSupabase({ dataDir, persistent: true });
      try {
        const client = new pg.Client({ connectionString: second.adminDatabaseUrl });
        await client.connect();
        const { rows } = await client.query('select balance from public.accounts where user_id = $1', [userId]);
        const { rows: [migrations] } = await client.query('select count(*)::int as n from supabase_migrations.schema_migrations');
        await client.end();
        expect(rows).toHaveLength(1);
        expect(migrations.n).toBeGreaterThan(0);
        const response = await fetch(`${second.supabaseUrl}/rest/v1/model_prices?select=id&id=eq.demo`, { headers: { apikey: second.anonKey } });
        expect(await response.json()).toEqual([{ id: 'demo' }]);
      } finally {
        await second.stop();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });
});

// The Auth stand-in's PKCE flow, as supabase-js drives it with `flowType: 'pkce'`
// and as GoTrue answers it: the mail's link verifies, then redirects with ?code=;
// only the holder of the code verifier can exchange that code, once, within 5 minutes.
describe('the Auth stand-in: PKCE sign-in links', () => {
  const pkceVerifier = () => randomBytes(48).toString('base64url');
  const challengeOf = (verifier: string) => createHash('sha256').update(verifier).digest('base64url');
  const memoryStorage = () => {
    const items = new Map<string, string>();
    return { items, getItem: (key: string) => items.get(key) ?? null, setItem: (key: string, value: string) => void items.set(key, value), removeItem: (key: string) => void items.delete(key) };
  };
  const pkceClient = (storage = memoryStorage()) => ({
    storage,
    client: createClient(stack.supabaseUrl, stack.anonKey, {
      auth: { flowType: 'pkce', storage, persistSession: true, autoRefreshToken: false, detectSessionInUrl: false },
      realtime: { transport: WebSocket as never },
    }),
  });
  const lastMail = async (base: string, email: string) =>
    ((await (await fetch(`${base}/auth/v1/local/outbox?email=${encodeURIComponent(email)}`)).json()) as Array<{ code: string; link: string }>).at(-1)!;
  /** Follows a mailed link as a browser would, up to the redirect: where it lands. */
  const landing = async (link: string) => {
    const response = await fetch(link, { redirect: 'manual' });
    expect(response.status).toBe(303);
    return new URL(response.headers.get('location')!);
  };
  const exchange = (base: string, authCode: string, codeVerifier: string) =>
    fetch(`${base}/auth/v1/token?grant_type=pkce`, { method: 'POST', headers: { apikey: stack.anonKey, 'content-type': 'application/json' }, body: JSON.stringify({ auth_code: authCode, code_verifier: codeVerifier }) });
  const requestMail = (base: string, email: string, body: Record<string, unknown>) =>
    fetch(`${base}/auth/v1/otp?redirect_to=${encodeURIComponent('http://console.test/console/')}`, { method: 'POST', headers: { apikey: stack.anonKey, 'content-type': 'application/json' }, body: JSON.stringify({ email, create_user: true, ...body }) });

  it('signInWithOtp sends the challenge; the link lands with ?code=, which exchangeCodeForSession turns into a session once, and only with the verifier', async () => {
    const email = `pkce-${randomUUID().slice(0, 8)}@example.test`;
    const { client, storage } = pkceClient();
    const { error } = await client.auth.signInWithOtp({ email, options: { emailRedirectTo: 'http://console.test/console/' } });
    expect(error).toBeNull();
    const verifier = [...storage.items.entries()].find(([key]) => key.endsWith('-code-verifier'))![1];

    const landed = await landing((await lastMail(stack.supabaseUrl, email)).link);
    expect(`${landed.origin}${landed.pathname}`).toBe('http://console.test/console/');
    expect(landed.hash).toBe('');
    const code = landed.searchParams.get('code')!;
    expect(code).toMatch(/^[0-9a-f-]{36}$/);

    // Another browser's verifier is refused, as GoTrue refuses it, and the code stays good for the right one.
    const wrong = await exchange(stack.supabaseUrl, code, pkceVerifier());
    expect(wrong.status).toBe(400);
    expect(await wrong.json()).toMatchObject({ error_code: 'bad_code_verifier', msg: 'code challenge does not match previously saved code verifier' });
    // A browser that never asked holds no verifier: supabase-js does not even try.
    expect((await pkceClient().client.auth.exchangeCodeForSession(code)).error?.name).toBe('AuthPKCECodeVerifierMissingError');

    const { data, error: exchangeError } = await client.auth.exchangeCodeForSession(code);
    expect(exchangeError).toBeNull();
    expect(data.session?.user.email).toBe(email);
    const { data: { user } } = await client.auth.getUser();
    expect(user?.email).toBe(email);

    // Single use: the same code and verifier again find nothing.
    const again = await exchange(stack.supabaseUrl, code, verifier);
    expect(again.status).toBe(404);
    expect(await again.json()).toMatchObject({ error_code: 'flow_state_not_found' });
  });

  it('the emailed code signs in anywhere, without the verifier; the code and the link are one token, so using one spends the other', async () => {
    const email = `pkce-${randomUUID().slice(0, 8)}@example.test`;
    const { client } = pkceClient();
    expect((await client.auth.signInWithOtp({ email, options: { emailRedirectTo: 'http://console.test/console/' } })).error).toBeNull();
    const mail = await lastMail(stack.supabaseUrl, email);
    // Another client altogether (no verifier, no storage of the first).
    const elsewhere = pkceClient().client;
    const { data, error } = await elsewhere.auth.verifyOtp({ email, token: mail.code, type: 'email' });
    expect(error).toBeNull();
    expect(data.session?.user.email).toBe(email);
    // The link of the same mail is spent: it lands with GoTrue's error, in the query (PKCE) and the fragment.
    const landed = await landing(mail.link);
    expect(landed.searchParams.get('code')).toBeNull();
    expect(landed.searchParams.get('error_code')).toBe('otp_expired');
    expect(new URLSearchParams(landed.hash.slice(1)).get('error_code')).toBe('otp_expired');

    // And the other way round: a link followed spends the code. A newer mail replaces the older one's code and link.
    expect((await client.auth.signInWithOtp({ email, options: { emailRedirectTo: 'http://console.test/console/' } })).error).toBeNull();
    const older = await lastMail(stack.supabaseUrl, email);
    expect((await client.auth.signInWithOtp({ email, options: { emailRedirectTo: 'http://console.test/console/' } })).error).toBeNull();
    const newer = await lastMail(stack.supabaseUrl, email);
    expect((await landing(older.link)).searchParams.get('error_code')).toBe('otp_expired');
    expect((await landing(newer.link)).searchParams.get('code')).toBeTruthy();
    const spent = await elsewhere.auth.verifyOtp({ email, token: newer.code, type: 'email' });
    expect(spent.error?.code).toBe('otp_expired');
  });

  it('refuses a challenge without its method, an unknown method and a malformed challenge, as GoTrue does', async () => {
    const email = `pkce-${randomUUID().slice(0, 8)}@example.test`;
    const challenge = challengeOf(pkceVerifier());
    for (const body of [{ code_challenge: challenge }, { code_challenge_method: 's256' }, { code_challenge: challenge, code_challenge_method: 'md5' }, { code_challenge: 'short', code_challenge_method: 's256' }]) {
      const response = await requestMail(stack.supabaseUrl, email, body);
      expect(response.status, JSON.stringify(body)).toBe(400);
      expect(await response.json()).toMatchObject({ error_code: 'validation_failed' });
    }
    // supabase-js sends nulls when it is not in PKCE mode: that is the implicit flow, its link lands with the session in the fragment.
    expect((await requestMail(stack.supabaseUrl, email, { code_challenge: null, code_challenge_method: null })).status).toBe(200);
    const landed = await landing((await lastMail(stack.supabaseUrl, email)).link);
    expect(landed.searchParams.get('code')).toBeNull();
    expect(new URLSearchParams(landed.hash.slice(1)).get('access_token')).toBeTruthy();
    // `plain` is GoTrue's other method (supabase-js falls back to it without WebCrypto).
    const plain = pkceVerifier();
    expect((await requestMail(stack.supabaseUrl, email, { code_challenge: plain, code_challenge_method: 'plain' })).status).toBe(200);
    const code = (await landing((await lastMail(stack.supabaseUrl, email)).link)).searchParams.get('code')!;
    expect((await exchange(stack.supabaseUrl, code, plain)).status).toBe(200);
  });

  it('signing out answers a browser (CORS) and ends the session: its refresh token is refused after', async () => {
    const email = `pkce-${randomUUID().slice(0, 8)}@example.test`;
    const { client } = pkceClient();
    expect((await client.auth.signInWithOtp({ email })).error).toBeNull();
    const { data } = await client.auth.verifyOtp({ email, token: (await lastMail(stack.supabaseUrl, email)).code, type: 'email' });
    const refreshToken = data.session!.refresh_token;
    const out = await fetch(`${stack.supabaseUrl}/auth/v1/logout?scope=global`, { method: 'POST', headers: { apikey: stack.anonKey, authorization: `Bearer ${data.session!.access_token}`, origin: 'http://console.test' } });
    expect(out.status).toBe(204);
    expect(out.headers.get('access-control-allow-origin')).toBe('*');
    const refreshed = await fetch(`${stack.supabaseUrl}/auth/v1/token?grant_type=refresh_token`, { method: 'POST', headers: { apikey: stack.anonKey, 'content-type': 'application/json' }, body: JSON.stringify({ refresh_token: refreshToken }) });
    expect(refreshed.status).toBe(400);
    expect(await refreshed.json()).toMatchObject({ error_code: 'refresh_token_not_found' });
  });

  it('a code is good for 5 minutes after the link gave it out, and refused after', async () => {
    let clock = Date.now();
    let routerUrl = '';
    const auth = createAuthStandIn({ jwtSecret: stack.jwtSecret, authAdminUrl: stack.authAdminDatabaseUrl, publicUrl: () => routerUrl, now: () => clock });
    const router = await startSupabaseRouter({
      port: 0,
      postgrestUrl: 'http://127.0.0.1:9',
      keys: { anonKey: stack.anonKey, serviceRoleKey: stack.serviceRoleKey, publishableKey: stack.publishableKey, secretKey: stack.secretKey },
      auth,
    });
    routerUrl = router.url;
    try {
      const email = `pkce-${randomUUID().slice(0, 8)}@example.test`;
      const codeFor = async (verifier: string) => {
        expect((await requestMail(router.url, email, { code_challenge: challengeOf(verifier), code_challenge_method: 's256' })).status).toBe(200);
        // The mail waits: its link is good for as long as its code.
        clock += 9 * 60_000;
        return (await landing((await lastMail(router.url, email)).link)).searchParams.get('code')!;
      };
      const first = pkceVerifier();
      const fresh = await codeFor(first);
      clock += 5 * 60_000 - 1_000;
      expect((await exchange(router.url, fresh, first)).status).toBe(200);

      const second = pkceVerifier();
      const stale = await codeFor(second);
      clock += 5 * 60_000 + 1_000;
      const refused = await exchange(router.url, stale, second);
      expect(refused.status).toBe(422);
      expect(await refused.json()).toMatchObject({ error_code: 'flow_state_expired', msg: 'invalid flow state, flow state has expired' });

      // A link older than its lifetime lands with the error instead of a code.
      expect((await requestMail(router.url, email, { code_challenge: challengeOf(pkceVerifier()), code_challenge_method: 's256' })).status).toBe(200);
      clock += 11 * 60_000;
      const late = await landing((await lastMail(router.url, email)).link);
      expect(late.searchParams.get('code')).toBeNull();
      expect(late.searchParams.get('error_code')).toBe('otp_expired');
    } finally {
      await router.close();
      await auth.close();
    }
  });
});

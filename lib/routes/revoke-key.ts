import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { createApiKeyManager, LedgerError } from '../billing/ledger.ts';
import { GatewayError } from '../errors.ts';
import { readyHoldsOn } from '../env.ts';
import { revocationMarkMs } from '../gateway/rate-limits.ts';

const uuidFormat = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

/**
 * POST /console/keys/{id}/revoke, with the signed-in user's access token as
 * the bearer: revokes the key in the database as that user (revoke_api_key:
 * the account's user, an owner of it, or the member whose key it is), then marks it revoked in Redis,
 * where every instance's next request adopting a hold taken ahead for that key
 * finds the mark and is refused. The answer says whether the revocation is
 * refused everywhere from now on (`refused_at_once`); when the mark could not
 * be written, holds already taken ahead for the key may serve one request each
 * until their window ends (README, "Holds taken ahead").
 */
export async function revokeKey(c: Context<AppEnv>): Promise<Response> {
  const { config, rateLimiter, log } = c.var.services;
  const id = c.req.param('id') ?? '';
  if (!uuidFormat.test(id)) throw new GatewayError(400, 'invalid_request', 'The key id must be a UUID.', { param: 'id' });
  const token = /^Bearer\s+(\S+)$/i.exec(c.req.header('authorization') ?? '')?.[1];
  if (!token) {
    throw new GatewayError(401, 'missing_session', "Sign in first: revoking a key takes the session of its account's user, an owner of it, or the member whose key it is (Authorization: Bearer <access token>).");
  }
  if (!config.SUPABASE_ANON_KEY) throw new GatewayError(503, 'console_not_configured', 'SUPABASE_ANON_KEY is not set: keys cannot be revoked through the gateway.');
  let revoked: { id: string; account_id: string; revoked_at: string };
  try {
    revoked = await createApiKeyManager(c.var.services.asUser(token)).revokeApiKey(id);
  } catch (error) {
    if (error instanceof LedgerError && error.status === 404) throw new GatewayError(404, 'key_not_found', 'No key with this id belongs to your account.', { param: 'id' });
    if (error instanceof LedgerError && (error.status === 401 || error.status === 403)) {
      throw new GatewayError(401, 'invalid_session', `The session was not accepted: ${error.message}`);
    }
    // No answer in time, or one that could not be read: the revocation may have been
    // committed all the same. Revoking again is harmless, and writes the mark.
    log({ level: 'error', event: 'revocation_unconfirmed', keyId: id, error: (error as Error).message });
    throw new GatewayError(503, 'revocation_unconfirmed', 'The database did not confirm the revocation; it may have been made. Revoke the key again to be sure: revoking twice is harmless.');
  }
  let refusedAtOnce = !readyHoldsOn(config) || rateLimiter !== undefined;
  if (rateLimiter) {
    try {
      await rateLimiter.markRevoked({ keyId: revoked.id, accountId: revoked.account_id }, revocationMarkMs);
    } catch (error) {
      refusedAtOnce = false;
      log({ level: 'warn', event: 'revocation_not_marked', keyId: revoked.id, error: (error as Error).message });
    }
  }
  return c.json({
    id: revoked.id,
    revoked_at: revoked.revoked_at,
    refused_at_once: refusedAtOnce,
    ...(refusedAtOnce
      ? {}
      : { note: `A hold already taken ahead for this key may still serve one request on each instance for up to ${config.READY_HOLD_SECONDS} s.` }),
  });
}

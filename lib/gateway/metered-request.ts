import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import type { Authorized } from '../billing/ledger.ts';
import { readyHoldsOn } from '../env.ts';
import { GatewayError } from '../errors.ts';
import { proxyMetered, startUpstream, type ProxyPlan, type StartedUpstream } from './proxy.ts';
import { authorize as authorizeKey, clientIp, coolKey, type AuthorizeInput, type AuthorizeOptions } from './request-helpers.ts';
import { sameUpstreamRequest } from './warm-keys.ts';

/**
 * Authorizes a request and answers it through the upstream that `planFor`
 * describes, metered and settled.
 *
 * For a warm key (authorized on this instance within the minute, with
 * headroom: see warm-keys.ts) the upstream call starts with the last
 * authorization while authorize_request runs, so the database adds no time
 * before the first byte. Nothing reaches the client before the hold is taken:
 * if authorize refuses (or fails), the upstream call is aborted and the
 * refusal is the answer; if it allows a different upstream request (another
 * output cap, say), the speculative call is aborted and the right one sent.
 * What an aborted speculative call can cost the operator is bounded in the
 * README ("Warm keys").
 *
 * `alongside` is a check of the route's own that runs beside all this (the
 * stored response a request continues belongs to its account, say): the hold
 * is not confirmed until it passes, so nothing is sent on before it does, and
 * its refusal is the answer only when the key itself was not refused.
 */
export async function authorizeAndProxy(
  c: Context<AppEnv>,
  input: AuthorizeInput,
  options: AuthorizeOptions,
  planFor: (authorization: Authorized) => ProxyPlan,
  alongside?: Promise<void>,
): Promise<Response> {
  const { services, requestId } = c.var;
  // Awaited after the authorization; until then a rejection is not left unhandled.
  alongside?.catch(() => undefined);
  const authorize = async (...args: Parameters<typeof authorizeKey>) => {
    const authorization = await authorizeKey(...args);
    try {
      await alongside;
    } catch (error) {
      // Refused as a refused key is: cold on this instance, so the next such request starts
      // no upstream call before it is checked, and no hold is taken ahead after this one.
      coolKey(services, input.keyHash);
      throw error;
    }
    return authorization;
  };
  const { keyHash, ...rest } = input;
  const shape = { ...rest, clientIp: clientIp(c) };
  const ahead = readyHoldsOn(services.config);
  const taken = ahead ? services.readyHolds.take(keyHash, shape, input.maxInputTokens) : undefined;
  const again = taken?.again ?? false;
  const ready = taken?.hold;
  if (ready) {
    c.set('requestId', ready.requestId);
    // A hold taken ahead: no database round trip. With Redis, the upstream call starts
    // beside the check of the key's limits and revocation mark (and the route's own
    // check), and nothing reaches the client before they allow it; without either there
    // is nothing to wait for.
    const started = services.rateLimiter || alongside ? startEarly(c, planFor, ready.authorization) : undefined;
    const authorization = await confirm(c, started, 'ready_hold_refused', () => authorize(c, input, { ...options, ahead, again, ready }));
    return started ? proxyMetered(c, authorization, started.plan, started.upstream) : proxyMetered(c, authorization, planFor(authorization));
  }
  const speculation = services.config.SPECULATIVE_UPSTREAM === 'on' ? services.warmKeys.speculate(keyHash, shape) : undefined;
  const started = speculation ? startEarly(c, planFor, speculation.authorization) : undefined;
  if (!speculation || !started) {
    // A plan the last authorization cannot build is built after authorize, as for a cold key.
    speculation?.settled();
    const authorization = await authorize(c, input, { ...options, ahead, again });
    return proxyMetered(c, authorization, planFor(authorization));
  }

  let authorization: Authorized;
  try {
    authorization = await confirm(c, started, 'speculation_aborted', () => authorize(c, input, { ...options, guess: speculation.authorization, ahead, again }));
  } finally {
    speculation.settled();
  }
  if (!sameUpstreamRequest(speculation.authorization, authorization)) {
    started.upstream.abort.abort();
    services.log({ level: 'info', event: 'speculation_resent', requestId });
    return proxyMetered(c, authorization, planFor(authorization));
  }
  return proxyMetered(c, authorization, started.plan, started.upstream);
}

interface EarlyUpstream {
  plan: ProxyPlan;
  upstream: StartedUpstream;
}

/** The upstream call started before the hold is confirmed, with the plan an earlier authorization builds; none when it builds none. */
function startEarly(c: Context<AppEnv>, planFor: (authorization: Authorized) => ProxyPlan, authorization: Authorized): EarlyUpstream | undefined {
  try {
    const plan = planFor(authorization);
    return { plan, upstream: startUpstream(c, plan) };
  } catch {
    return undefined;
  }
}

/** Waits for the hold while an early upstream call runs: a refusal (or failure) aborts that call, logged as `event`. */
async function confirm(c: Context<AppEnv>, started: EarlyUpstream | undefined, event: string, hold: () => Promise<Authorized>): Promise<Authorized> {
  try {
    return await hold();
  } catch (error) {
    if (started) {
      started.upstream.abort.abort();
      c.var.services.log({ level: 'warn', event, requestId: c.var.requestId, reason: error instanceof GatewayError ? error.code : (error as Error).message });
    }
    throw error;
  }
}

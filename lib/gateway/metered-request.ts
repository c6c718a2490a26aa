import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import type { Authorized } from '../billing/ledger.ts';
import { readyHoldsOn } from '../env.ts';
import { GatewayError } from '../errors.ts';
import { proxyMetered, startUpstream, type ProxyPlan, type StartedUpstream } from './proxy.ts';
import { authorize, clientIp, type AuthorizeInput, type AuthorizeOptions } from './request-helpers.ts';
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
 */
export async function authorizeAndProxy(
  c: Context<AppEnv>,
  input: AuthorizeInput,
  options: AuthorizeOptions,
  planFor: (authorization: Authorized) => ProxyPlan,
): Promise<Response> {
  const { services, requestId } = c.var;
  const { keyHash, ...rest } = input;
  const shape = { ...rest, clientIp: clientIp(c) };
  const ahead = readyHoldsOn(services.config);
  const taken = ahead ? services.readyHolds.take(keyHash, shape, input.maxInputTokens) : undefined;
  const again = taken?.again ?? false;
  const ready = taken?.hold;
  if (ready) {
    c.set('requestId', ready.requestId);
    // A hold taken ahead: no database round trip. With Redis, the upstream call starts
    // beside the check of the key's limits and revocation mark, and nothing reaches the
    // client before that check allows it; without Redis there is nothing to wait for.
    let started: { plan: ProxyPlan; upstream: StartedUpstream } | undefined;
    if (services.rateLimiter) {
      try {
        const plan = planFor(ready.authorization);
        started = { plan, upstream: startUpstream(c, plan) };
      } catch {
        // Built after the check instead, as below.
      }
    }
    let authorization: Authorized;
    try {
      authorization = await authorize(c, input, { ...options, ahead, again, ready });
    } catch (error) {
      if (started) {
        started.upstream.abort.abort();
        services.log({ level: 'warn', event: 'ready_hold_refused', requestId: ready.requestId, reason: error instanceof GatewayError ? error.code : (error as Error).message });
      }
      throw error;
    }
    return started ? proxyMetered(c, authorization, started.plan, started.upstream) : proxyMetered(c, authorization, planFor(authorization));
  }
  const speculation = services.config.SPECULATIVE_UPSTREAM === 'on' ? services.warmKeys.speculate(keyHash, shape) : undefined;
  let started: { plan: ProxyPlan; upstream: StartedUpstream } | undefined;
  if (speculation) {
    try {
      const plan = planFor(speculation.authorization);
      started = { plan, upstream: startUpstream(c, plan) };
    } catch {
      // A plan the last authorization cannot build is built after authorize, as for a cold key.
      speculation.settled();
    }
  }
  if (!speculation || !started) {
    const authorization = await authorize(c, input, { ...options, ahead, again });
    return proxyMetered(c, authorization, planFor(authorization));
  }

  let authorization: Authorized;
  try {
    authorization = await authorize(c, input, { ...options, guess: speculation.authorization, ahead, again });
  } catch (error) {
    started.upstream.abort.abort();
    services.log({ level: 'warn', event: 'speculation_aborted', requestId, reason: error instanceof GatewayError ? error.code : (error as Error).message });
    throw error;
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

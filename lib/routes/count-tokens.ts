import type { Context } from 'hono';
import { z } from 'zod';
import type { AppEnv } from '../app-env.ts';
import { isRefusedInput } from '../billing/ledger.ts';
import type { ChannelConfig } from '../env.ts';
import { GatewayError, refusalError } from '../errors.ts';
import { clientIp, providersSpeaking, readJsonBody, readKeyHash, requireModelIdFormat } from '../gateway/request-helpers.ts';
import { abortWhenAborted, forwardableHeaders, sendWithFailover, type UpstreamRequest } from '../gateway/send-upstream.ts';
import { buildAnthropicRequest } from '../providers/anthropic/anthropic-adaptor.ts';
import { buildGeminiRequest } from '../providers/google/gemini-adaptor.ts';
import { channelsFor, type WireFormat } from '../providers/registry.ts';

const namedModel = z.looseObject({ model: z.string().min(1).max(128) });

/**
 * Token counting: checked like a request (key, model, price, the route's
 * provider) in one round trip, counted against the key's requests per minute,
 * answered by the provider, charged nothing and written nowhere.
 */
async function forwardUncharged(c: Context<AppEnv>, model: string, format: WireFormat, build: (channel: ChannelConfig, upstreamModel: string) => UpstreamRequest) {
  const { services, requestId } = c.var;
  const keyHash = await readKeyHash(c);
  requireModelIdFormat(model);
  const result = await services.ledger.authorizeUnchargedCall({ keyHash, model, clientIp: clientIp(c), providers: providersSpeaking(c, format) }).catch((error: unknown) => {
    if (isRefusedInput(error)) {
      throw new GatewayError(400, 'invalid_request', `The request could not be authorized: ${error.message}`);
    }
    throw error;
  });
  if (result.status === 'refused') {
    if (result.code === 'unsupported_provider') throw new GatewayError(400, 'unsupported_provider', `The model ${model} is not served on this route.`, { param: 'model' });
    throw refusalError(result, services.config.TOPUP_URL);
  }
  if (services.rateLimiter) {
    const decision = await services.rateLimiter.check(
      { keyId: result.api_key_id, accountId: result.account_id, requestsPerMinute: result.limits.requests_per_minute, tokensPerMinute: null },
      0,
    );
    c.set('rateLimitHeaders', decision.headers);
    if (!decision.allowed) {
      throw new GatewayError(429, 'rate_limit_exceeded', `Rate limit reached: requests per minute for this key. Retry after ${decision.retryAfterSeconds} s.`, { headers: decision.headers });
    }
  }
  const upstreamAbort = new AbortController();
  abortWhenAborted(c.req.raw.signal, upstreamAbort);
  const answer = await sendWithFailover(channelsFor(services.config, result.model.provider, format) ?? [], (channel) => build(channel, result.model.upstream_model), {
    fetch: services.fetch, signal: upstreamAbort.signal, log: services.log, requestId,
  });
  if (!answer.ok) throw answer.error;
  return new Response(await answer.response.text(), { status: answer.response.status, headers: forwardableHeaders(answer.response.headers) });
}

/** POST /v1/messages/count_tokens (Anthropic). */
export async function anthropicCountTokens(c: Context<AppEnv>): Promise<Response> {
  const request = await readJsonBody(c, namedModel);
  const clientHeaders = { version: c.req.header('anthropic-version'), beta: c.req.header('anthropic-beta') };
  return forwardUncharged(c, request.model, 'anthropic', (channel, upstreamModel) =>
    buildAnthropicRequest(channel, { ...request, model: upstreamModel }, false, clientHeaders, '/v1/messages/count_tokens'),
  );
}

/** POST /v1beta/models/{model}:countTokens (Gemini). */
export async function geminiCountTokens(c: Context<AppEnv>, model: string): Promise<Response> {
  const request = await readJsonBody(c, z.looseObject({}));
  return forwardUncharged(c, model, 'google', (channel, upstreamModel) => buildGeminiRequest(channel, upstreamModel, request, 'countTokens'));
}

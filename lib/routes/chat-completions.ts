import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { GatewayError } from '../errors.ts';
import { proxyMetered, type ProxyPlan } from '../gateway/proxy.ts';
import { authorize, readJsonBody, readKeyHash, refuseUnbilledOptions } from '../gateway/request-helpers.ts';
import { releaseHold } from '../gateway/settle-in-background.ts';
import { boundChatInputTokens } from '../providers/openai/openai-input.ts';
import { chatCompletionRequestSchema } from '../providers/openai/openai-wire.ts';
import { chatPlanFor } from '../providers/registry.ts';

/** POST /v1/chat/completions: any priced model, in OpenAI's format. */
export async function chatCompletions(c: Context<AppEnv>): Promise<Response> {
  const { services, requestId } = c.var;
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, chatCompletionRequestSchema);
  const raw = request as Record<string, unknown>;
  refuseUnbilledOptions([
    [raw.service_tier !== undefined && raw.service_tier !== null && !['auto', 'default'].includes(String(raw.service_tier)), 'service_tier', `service_tier "${String(raw.service_tier)}"`],
    [raw.web_search_options !== undefined && raw.web_search_options !== null, 'web_search_options', 'Web search'],
  ]);
  const requestedCap = request.max_completion_tokens ?? request.max_tokens ?? undefined;
  const authorization = await authorize(c, {
    keyHash,
    model: request.model,
    maxInputTokens: boundChatInputTokens(request),
    maxOutputTokens: requestedCap,
    choices: request.n ?? 1,
    capOutput: requestedCap === undefined,
  });

  let plan: ProxyPlan;
  try {
    plan = chatPlanFor(services.config, request, authorization);
  } catch (error) {
    // A request the upstream's format cannot express: nothing was sent, release the hold.
    releaseHold(services, requestId, (error as Error).message);
    if (error instanceof GatewayError) throw error;
    throw new GatewayError(400, 'invalid_request', (error as Error).message);
  }
  return proxyMetered(c, authorization, plan);
}

import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { GatewayError } from '../errors.ts';
import { authorizeAndProxy } from '../gateway/metered-request.ts';
import { readJsonBody, readKeyHash, refuseUnbilledOptions } from '../gateway/request-helpers.ts';
import { toolUseSystemPromptTokens } from '../providers/anthropic/anthropic-input.ts';
import { boundChatInputTokens } from '../providers/openai/openai-input.ts';
import { chatCompletionRequestSchema } from '../providers/openai/openai-wire.ts';
import { chatPlanFor, providerFormat, providersForChat, translateChat } from '../providers/registry.ts';

/** POST /v1/chat/completions: any priced model, in OpenAI's format. */
export async function chatCompletions(c: Context<AppEnv>): Promise<Response> {
  const { config } = c.var.services;
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, chatCompletionRequestSchema);
  const raw = request as Record<string, unknown>;
  refuseUnbilledOptions([
    [raw.service_tier !== undefined && raw.service_tier !== null && !['auto', 'default'].includes(String(raw.service_tier)), 'service_tier', `service_tier "${String(raw.service_tier)}"`],
    [raw.web_search_options !== undefined && raw.web_search_options !== null, 'web_search_options', 'Web search'],
    // Audio out is billed at a dearer rate than audio in, which the price sheet has no bucket for.
    [Array.isArray(raw.modalities) && raw.modalities.includes('audio'), 'modalities', 'Audio output'],
    [raw.audio !== undefined && raw.audio !== null, 'audio', 'Audio output'],
  ]);
  const translations = translateChat(request);
  const requestedCap = request.max_completion_tokens ?? request.max_tokens ?? undefined;
  // Tools a Claude model may be sent come with the system prompt Anthropic adds for them; the model is not known yet.
  const toolPrompt = (translations.bodies.get('anthropic')?.tools as unknown[] | undefined)?.length ? toolUseSystemPromptTokens : 0;
  return authorizeAndProxy(
    c,
    {
      keyHash,
      model: request.model,
      maxInputTokens: boundChatInputTokens(request) + toolPrompt,
      maxOutputTokens: requestedCap,
      choices: request.n ?? 1,
      capOutput: requestedCap === undefined,
      providers: providersForChat(config, translations),
    },
    {
      unsupportedProvider: (provider) =>
        translations.refusals.get(providerFormat(config, provider)) ??
        new GatewayError(400, 'unsupported_provider', `The model ${request.model} has no upstream channel configured.`, { param: 'model' }),
    },
    (authorization) => chatPlanFor(config, request, authorization, translations),
  );
}

import type { Authorized } from '../billing/ledger.ts';
import type { ChannelConfig } from '../env.ts';
import { GatewayError } from '../errors.ts';
import type { ProxyPlan } from '../gateway/proxy.ts';
import { buildAnthropicRequest } from './anthropic/anthropic-adaptor.ts';
import { anthropicToResponse, createAnthropicToResponsesStream } from './anthropic/anthropic-to-responses.ts';
import { anthropicErrorToOpenAI } from './anthropic/anthropic-to-openai.ts';
import { responsesToAnthropic } from './anthropic/responses-to-anthropic.ts';
import { buildGeminiRequest } from './google/gemini-adaptor.ts';
import { createGeminiToResponsesStream, geminiToResponse } from './google/gemini-to-responses.ts';
import { geminiErrorToOpenAI } from './google/gemini-to-openai.ts';
import { responsesToGemini } from './google/responses-to-gemini.ts';
import { readConversation, toolsByName, type ToolSpec } from './openai/responses-conversation.ts';
import { countResponsesInputTokens } from './openai/responses-input.ts';
import type { ResponsesRequest } from './openai/responses-wire.ts';
import { responsesErrorEvent } from './openai/responses-writer.ts';
import type { WireFormat } from './registry.ts';

/**
 * A Responses request in each other format, done before authorize (as for
 * chat): what a format cannot carry is refused for that format's models
 * without a hold. The model and the output bound go in once authorized.
 */
export interface ResponsesTranslations {
  bodies: Map<WireFormat, (maxOutputTokens: number) => Record<string, unknown>>;
  refusals: Map<WireFormat, GatewayError>;
  tools: Map<string, ToolSpec>;
}

export function translateResponses(request: ResponsesRequest): ResponsesTranslations {
  const translations: ResponsesTranslations = { bodies: new Map(), refusals: new Map(), tools: new Map() };
  const stream = request.stream === true;
  try {
    const conversation = readConversation(request);
    translations.tools = toolsByName(conversation);
    const translators: Array<[WireFormat, (maxOutputTokens: number) => Record<string, unknown>]> = [
      ['anthropic', (maxOutputTokens) => responsesToAnthropic(conversation, maxOutputTokens, stream)],
      ['google', () => responsesToGemini(conversation)],
    ];
    for (const [format, translate] of translators) {
      try {
        // Tried once now, so a refusal comes before the hold; built again with the authorized bound.
        translate(request.max_output_tokens ?? 1);
        translations.bodies.set(format, translate);
      } catch (error) {
        translations.refusals.set(format, asRequestError(error));
      }
    }
  } catch (error) {
    for (const format of ['anthropic', 'google'] as const) translations.refusals.set(format, asRequestError(error));
  }
  return translations;
}

function asRequestError(error: unknown): GatewayError {
  return error instanceof GatewayError ? error : new GatewayError(400, 'invalid_request', (error as Error).message, { param: 'input' });
}

/** POST /v1/responses for a Claude or Gemini model: translated there and back, metered on the provider's usage. */
export function translatedResponsesPlan(
  format: 'anthropic' | 'google',
  request: ResponsesRequest,
  authorization: Authorized,
  channels: ChannelConfig[],
  translations: ResponsesTranslations,
): ProxyPlan {
  const stream = request.stream === true;
  const maxOutputTokens = authorization.max_output_tokens;
  const translated = translations.bodies.get(format)!(maxOutputTokens);
  const { tools } = translations;
  const common = {
    channels,
    stream,
    errorEvent: (error: GatewayError) => responsesErrorEvent(error.code, error.message),
    countPrompt: () => countResponsesInputTokens(request),
  };
  if (format === 'anthropic') {
    const body = { ...translated, model: authorization.model.upstream_model, max_tokens: maxOutputTokens };
    return {
      ...common,
      build: (channel) => buildAnthropicRequest(channel, body, stream),
      createStreamProcessor: () => createAnthropicToResponsesStream(request, tools),
      readBody: (text) => anthropicToResponse(text, request, tools),
      translateError: anthropicErrorToOpenAI,
    };
  }
  const body = { ...translated, generationConfig: { ...(translated.generationConfig as Record<string, unknown>), maxOutputTokens } };
  return {
    ...common,
    build: (channel) => buildGeminiRequest(channel, authorization.model.upstream_model, body, stream),
    createStreamProcessor: () => createGeminiToResponsesStream(request, tools),
    readBody: (text) => geminiToResponse(text, request, tools),
    translateError: geminiErrorToOpenAI,
  };
}

import type { Authorized } from '../../billing/ledger.ts';
import type { ChannelConfig } from '../../env.ts';
import type { ProxyPlan } from '../../gateway/proxy.ts';
import { openAIErrorEvent } from '../openai/openai-adaptor.ts';
import { countChatInputTokens } from '../openai/openai-input.ts';
import type { ChatCompletionRequest } from '../openai/openai-wire.ts';
import { buildGeminiRequest } from './gemini-adaptor.ts';
import { createGeminiToOpenAIStream, geminiErrorToOpenAI, geminiToOpenAICompletion } from './gemini-to-openai.ts';

/** OpenAI-format chat for a Gemini model: translated there and back, metered on Gemini's usage. */
export function geminiChatPlan(request: ChatCompletionRequest, authorization: Authorized, channels: ChannelConfig[], translated: Record<string, unknown>): ProxyPlan {
  const stream = request.stream === true;
  // Translated before authorize (see translateChat); the bound that was held goes in now.
  const generationConfig = { ...(translated.generationConfig as Record<string, unknown>), maxOutputTokens: authorization.max_output_tokens };
  const body = { ...translated, generationConfig };
  return {
    channels,
    stream,
    build: (channel) => buildGeminiRequest(channel, authorization.model.upstream_model, body, stream),
    createStreamProcessor: () =>
      createGeminiToOpenAIStream({ model: request.model, includeUsage: request.stream_options?.include_usage === true }),
    readBody: (text) => geminiToOpenAICompletion(text, request.model),
    errorEvent: (error) => openAIErrorEvent(error.message, error.code),
    translateError: geminiErrorToOpenAI,
    countPrompt: () => countChatInputTokens(request),
  };
}

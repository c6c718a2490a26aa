import type { Authorized } from '../../billing/ledger.ts';
import type { ChannelConfig } from '../../env.ts';
import type { ProxyPlan } from '../../gateway/proxy.ts';
import { openAIErrorEvent } from '../openai/openai-adaptor.ts';
import { countChatInputTokens } from '../openai/openai-input.ts';
import type { ChatCompletionRequest } from '../openai/openai-wire.ts';
import { buildAnthropicRequest } from './anthropic-adaptor.ts';
import { anthropicErrorToOpenAI, anthropicToOpenAICompletion, createAnthropicToOpenAIStream } from './anthropic-to-openai.ts';

/** OpenAI-format chat for a Claude model: translated there and back, metered on Anthropic's usage. */
export function anthropicChatPlan(request: ChatCompletionRequest, authorization: Authorized, channels: ChannelConfig[], translated: Record<string, unknown>): ProxyPlan {
  const stream = request.stream === true;
  // Translated before authorize (see translateChat); the model and the bound that was held go in now.
  const body = { ...translated, model: authorization.model.upstream_model, max_tokens: authorization.max_output_tokens };
  return {
    channels,
    stream,
    build: (channel) => buildAnthropicRequest(channel, body, stream),
    createStreamProcessor: () =>
      createAnthropicToOpenAIStream({ model: request.model, includeUsage: request.stream_options?.include_usage === true }),
    readBody: (text) => anthropicToOpenAICompletion(text, request.model),
    errorEvent: (error) => openAIErrorEvent(error.message, error.code),
    translateError: anthropicErrorToOpenAI,
    countPrompt: () => countChatInputTokens(request),
  };
}

import type { Authorized } from '../../billing/ledger.ts';
import type { ChannelConfig } from '../../env.ts';
import type { ProxyPlan } from '../../gateway/proxy.ts';
import { openAIErrorEvent } from '../openai/openai-adaptor.ts';
import { countChatInputTokens } from '../openai/openai-input.ts';
import type { ChatCompletionRequest } from '../openai/openai-wire.ts';
import { buildAnthropicRequest } from './anthropic-adaptor.ts';
import { anthropicErrorToOpenAI, anthropicToOpenAICompletion, createAnthropicToOpenAIStream } from './anthropic-to-openai.ts';
import { openAIToAnthropic } from './openai-to-anthropic.ts';

/** OpenAI-format chat for a Claude model: translated there and back, metered on Anthropic's usage. */
export function anthropicChatPlan(request: ChatCompletionRequest, authorization: Authorized, channels: ChannelConfig[]): ProxyPlan {
  const stream = request.stream === true;
  // Translate once, up front: a request Anthropic's format cannot express fails before anything is sent.
  const body = openAIToAnthropic(request, authorization.model.upstream_model, authorization.max_output_tokens);
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

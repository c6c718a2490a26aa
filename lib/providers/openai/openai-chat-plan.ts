import type { Authorized } from '../../billing/ledger.ts';
import { parseJsonAs } from '../../parse-json-as.ts';
import type { ChannelConfig } from '../../env.ts';
import type { ProxyPlan, StreamProcessor } from '../../gateway/proxy.ts';
import { convertOpenAIUsage } from './convert-openai-usage.ts';
import { buildOpenAIRequest, openAIErrorEvent, outputCapField, withStandardTier } from './openai-adaptor.ts';
import { createOpenAIChatMeter } from './openai-chat-meter.ts';
import { countChatInputTokens } from './openai-input.ts';
import { chatCompletionSchema, type ChatCompletionRequest } from './openai-wire.ts';

/** The output text of a non-streaming chat completion. */
export function completionText(text: string) {
  const completion = parseJsonAs(chatCompletionSchema, text);
  const delivered: string[] = [];
  for (const choice of completion?.choices ?? []) {
    if (choice.message?.content) delivered.push(choice.message.content);
    if (choice.message?.refusal) delivered.push(choice.message.refusal);
    // Reasoning text of OpenAI-compatible upstreams: `reasoning_content`, or `reasoning` (vLLM, OpenRouter, Ollama, Groq), read
    // loosely (a shape other than text must not lose the usage), and counted once when an upstream sends both.
    const { reasoning_content: reasoningContent, reasoning } = (choice.message ?? {}) as Record<string, unknown>;
    if (typeof reasoningContent === 'string' && reasoningContent) delivered.push(reasoningContent);
    if (typeof reasoning === 'string' && reasoning && reasoning !== reasoningContent) delivered.push(reasoning);
    for (const call of choice.message?.tool_calls ?? []) {
      if (call.function?.name) delivered.push(call.function.name);
      if (call.function?.arguments) delivered.push(call.function.arguments);
    }
  }
  return { completion, delivered };
}

/** OpenAI-format chat to an OpenAI or OpenAI-compatible upstream: forwarded as is, metered. */
export function openAIChatPlan(request: ChatCompletionRequest, authorization: Authorized, channels: ChannelConfig[]): ProxyPlan {
  const stream = request.stream === true;
  return {
    channels,
    stream,
    build: (channel) => {
      const body: Record<string, unknown> = { ...request, model: authorization.model.upstream_model };
      if (stream) body.stream_options = { ...(request.stream_options ?? {}), include_usage: true };
      if (authorization.output_capped) {
        body[outputCapField(channel)] = authorization.max_output_tokens;
        // OpenAI refuses a prediction (Predicted Outputs) beside max_completion_tokens. The cap
        // is the gateway's, for a balance that affords less than the model's bound: the
        // prediction, which only makes the answer come sooner, is what goes.
        delete body.prediction;
      }
      return buildOpenAIRequest(channel, '/chat/completions', withStandardTier(channel, body), stream);
    },
    createStreamProcessor: (): StreamProcessor => {
      const meter = createOpenAIChatMeter({ clientWantsUsage: request.stream_options?.include_usage === true });
      return {
        processEvent: meter.processEvent,
        usage: () => {
          const usage = meter.usage();
          return usage ? convertOpenAIUsage(usage) : null;
        },
        delivered: meter.delivered,
        error: meter.error,
      };
    },
    readBody: (text) => {
      const { completion, delivered } = completionText(text);
      return { body: text, usage: completion?.usage ? convertOpenAIUsage(completion.usage) : null, delivered };
    },
    errorEvent: (error) => openAIErrorEvent(error.message, error.code),
    countPrompt: () => countChatInputTokens(request),
  };
}

import { sseJson } from '../../metering/sse-event-splitter.ts';
import { chatCompletionChunkSchema, type OpenAIUsage } from './openai-wire.ts';

export interface ChatStreamMeter {
  /** Returns the event to forward (unchanged, or without the usage the client did not ask for), or null to drop it. */
  processEvent(event: string): string | null;
  /** The provider's usage, if its final usage chunk arrived. */
  usage(): OpenAIUsage | null;
  /** The output text that reached the gateway: content, refusals, reasoning text and tool-call arguments. */
  delivered(): string[];
  /** The message of an error event the upstream sent in the stream, if any. */
  error(): string | null;
}

/**
 * Meters an OpenAI chat completion stream. The gateway forces
 * `stream_options.include_usage`; when the client did not ask for it, the extra
 * final chunk (choices: []) and the `"usage":null` of the other chunks are taken
 * out again, so the client sees what the upstream would have sent it.
 * A line that does not parse is forwarded as is; it never throws.
 */
export function createOpenAIChatMeter({ clientWantsUsage }: { clientWantsUsage: boolean }): ChatStreamMeter {
  let usage: OpenAIUsage | null = null;
  let error: string | null = null;
  const delivered: string[] = [];

  return {
    processEvent(event) {
      const json = sseJson(event);
      if (json === undefined) return event;
      const upstreamError = (json as { error?: { message?: unknown } } | null)?.error;
      if (upstreamError) {
        error = typeof upstreamError.message === 'string' ? upstreamError.message : 'upstream error event';
        return event;
      }
      const chunk = chatCompletionChunkSchema.safeParse(json);
      if (!chunk.success) return event;
      const { choices, usage: chunkUsage } = chunk.data;
      if (chunkUsage) usage = chunkUsage;
      for (const choice of choices ?? []) {
        const delta = choice.delta;
        if (!delta) continue;
        if (delta.content) delivered.push(delta.content);
        if (delta.refusal) delivered.push(delta.refusal);
        if (delta.reasoning_content) delivered.push(delta.reasoning_content);
        for (const call of delta.tool_calls ?? []) {
          if (call.function?.name) delivered.push(call.function.name);
          if (call.function?.arguments) delivered.push(call.function.arguments);
        }
      }
      if (clientWantsUsage) return event;
      if (Array.isArray(choices) && choices.length === 0 && chunkUsage) return null;
      // Escaped quotes inside strings (\") cannot match: only the top-level key does.
      return event.replace(/,"usage":null/g, '').replace(/"usage":null,/g, '');
    },
    usage: () => usage,
    delivered: () => delivered,
    error: () => error,
  };
}

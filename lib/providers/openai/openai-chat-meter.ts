import { sseJson } from '../../metering/sse-event-splitter.ts';
import { openAIUsageSchema, type OpenAIUsage } from './openai-wire.ts';

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
  const keep = (text: unknown) => {
    if (typeof text === 'string' && text) delivered.push(text);
  };

  return {
    processEvent(event) {
      const json = sseJson(event);
      if (json === undefined) return event;
      const upstreamError = (json as { error?: { message?: unknown } } | null)?.error;
      if (upstreamError) {
        error = typeof upstreamError.message === 'string' ? upstreamError.message : 'upstream error event';
        return event;
      }
      // Read by hand, not by schema: this runs for every event of every stream.
      const chunk = json as { choices?: unknown; usage?: unknown } | null;
      if (typeof chunk !== 'object' || chunk === null) return event;
      if (chunk.usage) {
        const parsed = openAIUsageSchema.safeParse(chunk.usage);
        if (parsed.success) usage = parsed.data;
      }
      const choices = Array.isArray(chunk.choices) ? (chunk.choices as Array<{ delta?: Record<string, unknown> } | null>) : null;
      for (const choice of choices ?? []) {
        const delta = choice?.delta;
        if (!delta || typeof delta !== 'object') continue;
        keep(delta.content);
        keep(delta.refusal);
        keep(delta.reasoning_content);
        // vLLM, OpenRouter, Ollama and Groq name it `reasoning`; an upstream that sends both sends the same text twice.
        if (delta.reasoning !== delta.reasoning_content) keep(delta.reasoning);
        if (Array.isArray(delta.tool_calls)) {
          for (const call of delta.tool_calls as Array<{ function?: { name?: unknown; arguments?: unknown } } | null>) {
            keep(call?.function?.name);
            keep(call?.function?.arguments);
          }
        }
      }
      if (clientWantsUsage) return event;
      if (choices?.length === 0 && chunk.usage) return null;
      // Escaped quotes inside strings (\") cannot match: only the top-level key does.
      return event.includes('"usage":null') ? event.replace(/,"usage":null/g, '').replace(/"usage":null,/g, '') : event;
    },
    usage: () => usage,
    delivered: () => delivered,
    error: () => error,
  };
}

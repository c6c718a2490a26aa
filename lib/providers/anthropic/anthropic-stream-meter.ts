import type { TokenUsage } from '../../billing/token-buckets.ts';
import { forwardAsIs, type StreamProcessor } from '../../gateway/proxy.ts';
import { sseJson } from '../../metering/sse-event-splitter.ts';
import { anthropicAboveStandard, anthropicInputUsage, convertAnthropicUsage, mergeAnthropicUsage } from './convert-anthropic-usage.ts';
import { anthropicStreamEventSchema, type AnthropicStreamEvent, type AnthropicUsage } from './anthropic-wire.ts';

/** Reads Anthropic stream events: cumulative usage, delivered text, errors. */
export function createAnthropicStreamReader() {
  let usage: AnthropicUsage | null = null;
  let final = false;
  let error: string | null = null;
  let searches = 0;
  /** The final message_delta counted the searches itself (0 when they failed: not billed). */
  let searchesCounted = false;
  const delivered: string[] = [];

  return {
    /** Parses one SSE event; null when it carries no Anthropic event. */
    read(event: string): AnthropicStreamEvent | null {
      const parsed = anthropicStreamEventSchema.safeParse(sseJson(event));
      if (!parsed.success) return null;
      const streamEvent = parsed.data;
      switch (streamEvent.type) {
        case 'message_start':
          if (streamEvent.message?.usage) usage = mergeAnthropicUsage(usage, streamEvent.message.usage);
          break;
        case 'content_block_start':
          if (streamEvent.content_block?.type === 'server_tool_use' && streamEvent.content_block.name === 'web_search') searches++;
          if (streamEvent.content_block?.type === 'tool_use' && streamEvent.content_block.name) delivered.push(streamEvent.content_block.name);
          if (streamEvent.content_block?.text) delivered.push(streamEvent.content_block.text);
          break;
        case 'content_block_delta': {
          const delta = streamEvent.delta;
          const text = delta?.text ?? delta?.partial_json ?? delta?.thinking;
          if (text) delivered.push(text);
          break;
        }
        case 'message_delta':
          // Only a message_delta that carries the output count is final usage:
          // message_start's output_tokens is a placeholder (1), not a count.
          if (streamEvent.usage) usage = mergeAnthropicUsage(usage, streamEvent.usage);
          if (typeof streamEvent.usage?.output_tokens === 'number') final = true;
          if (typeof streamEvent.usage?.server_tool_use?.web_search_requests === 'number') searchesCounted = true;
          break;
        case 'error':
          error = streamEvent.error?.message ?? 'upstream error event';
          break;
      }
      return streamEvent;
    },
    usage: (): TokenUsage | null => {
      if (!final || !usage) return null;
      // A count only message_start carried is not the final one: the searches begun count then.
      const { web_search: counted, ...buckets } = convertAnthropicUsage(usage);
      return searchesCounted ? { ...buckets, web_search: counted ?? 0 } : buckets;
    },
    inputUsage: () => (usage ? anthropicInputUsage(usage) : null),
    delivered: () => delivered,
    error: () => error,
    /** Web searches begun, for when the stream ends before its final usage counts them. */
    calls: (): TokenUsage => (searches ? { web_search: searches } : {}),
    /** What the usage so far says ran above the standard rates (see anthropicAboveStandard). */
    aboveStandard: (): string[] => (usage ? anthropicAboveStandard(usage) : []),
  };
}

/** Native streams: forwarded as received, metered on the way. */
export function createAnthropicStreamMeter(): StreamProcessor {
  return forwardAsIs(createAnthropicStreamReader());
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { AnthropicIterationUsage, AnthropicUsage } from './anthropic-wire.ts';

/**
 * Anthropic's input_tokens exclude cache reads and writes; cache writes are
 * split into 5-minute and 1-hour writes when `cache_creation` is present
 * (https://docs.anthropic.com/en/api/messages). Thinking tokens are part of
 * output_tokens and are moved to the reasoning bucket.
 *
 * A stream's message_delta carries a cumulative cache_creation_input_tokens
 * without the split, which message_start gave: writes beyond the split are
 * 5-minute writes. With server-side compaction, the pass that summarizes the
 * conversation is an iteration of its own in `usage.iterations`, billed by
 * Anthropic, and not in the top-level counts, which cover the final pass: it is
 * added (an iteration of type "message", or "fallback_message" in its place, is that
 * final pass, already counted).
 */
export function convertAnthropicUsage(usage: AnthropicUsage): TokenUsage {
  const buckets = bucketsOf(usage);
  for (const iteration of usage.iterations ?? []) {
    // A fallback model's pass that produced the answer comes as "fallback_message" in place of "message": counted alike.
    if (iteration.type === 'message' || iteration.type === 'fallback_message') continue;
    for (const [bucket, count] of Object.entries(bucketsOf(iteration))) {
      const name = bucket as keyof TokenUsage;
      buckets[name] = (buckets[name] ?? 0) + (count ?? 0);
    }
  }
  return buckets;
}

function bucketsOf(usage: AnthropicIterationUsage & Pick<AnthropicUsage, 'server_tool_use'>): TokenUsage {
  const atLeastZero = (count: number) => Math.max(0, count);
  const cacheWrites = usage.cache_creation_input_tokens ?? 0;
  const oneHour = usage.cache_creation?.ephemeral_1h_input_tokens ?? 0;
  const fiveMinutes = Math.max(usage.cache_creation?.ephemeral_5m_input_tokens ?? 0, cacheWrites - oneHour);
  const output = usage.output_tokens ?? 0;
  const thinking = usage.output_tokens_details?.thinking_tokens ?? 0;
  const searches = usage.server_tool_use?.web_search_requests;
  return {
    input: atLeastZero(usage.input_tokens ?? 0),
    cached_input: atLeastZero(usage.cache_read_input_tokens ?? 0),
    cache_write: atLeastZero(fiveMinutes),
    cache_write_1h: atLeastZero(oneHour),
    output: atLeastZero(output - thinking),
    reasoning: atLeastZero(thinking),
    // The web_search server tool, billed per search (usage.server_tool_use); a count of 0
    // is a count too (searches that failed are not billed), not a missing one.
    ...(typeof searches === 'number' ? { web_search: atLeastZero(searches) } : {}),
  };
}

/** message_delta usage is cumulative: its fields replace those of message_start, they are not added. */
export function mergeAnthropicUsage(current: AnthropicUsage | null, update: AnthropicUsage): AnthropicUsage {
  const merged: AnthropicUsage = { ...(current ?? {}) };
  for (const [field, value] of Object.entries(update)) {
    if (value !== null && value !== undefined) (merged as Record<string, unknown>)[field] = value;
  }
  return merged;
}

/** The input side only, as known from message_start. */
export function anthropicInputUsage(usage: AnthropicUsage): TokenUsage {
  const { output: _output, reasoning: _reasoning, web_search: _searches, ...input } = convertAnthropicUsage(usage);
  return input;
}

/**
 * What the usage says ran at rates above the standard ones the price sheet holds: inference
 * kept in the US (1.1× on Claude 4.6 and later, which a workspace's default geography
 * chooses without the request saying so), fast mode, the Priority Tier. The request's own
 * options for these are refused; this is what an operator's workspace set.
 */
export function anthropicAboveStandard(usage: AnthropicUsage): string[] {
  const reported = usage as Record<string, unknown>;
  const above: string[] = [];
  if (reported.inference_geo === 'us') above.push('inference_geo us');
  if (reported.speed === 'fast') above.push('speed fast');
  if (reported.service_tier === 'priority') above.push('service_tier priority');
  return above;
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { ResponsesUsage } from './responses-wire.ts';

/**
 * The Responses API's input_tokens include cached tokens (and cache writes),
 * its output_tokens include reasoning tokens
 * (https://platform.openai.com/docs/api-reference/responses/object#responses/object-usage).
 * Taken apart into the disjoint buckets; every bucket is ≥ 0.
 */
export function convertResponsesUsage(usage: ResponsesUsage): TokenUsage {
  const atLeastZero = (count: number) => Math.max(0, count);
  const cached = usage.input_tokens_details?.cached_tokens ?? 0;
  const cacheWrite = usage.input_tokens_details?.cache_write_tokens ?? 0;
  const reasoning = usage.output_tokens_details?.reasoning_tokens ?? 0;
  return {
    input: atLeastZero((usage.input_tokens ?? 0) - cached - cacheWrite),
    cached_input: atLeastZero(cached),
    cache_write: atLeastZero(cacheWrite),
    output: atLeastZero((usage.output_tokens ?? 0) - reasoning),
    reasoning: atLeastZero(reasoning),
  };
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { OpenAIUsage } from './openai-wire.ts';

/**
 * OpenAI's prompt_tokens include cached and audio tokens, and completion_tokens
 * include reasoning and audio tokens
 * (https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage).
 * The buckets are disjoint, so those parts are taken out; every bucket is ≥ 0.
 */
export function convertOpenAIUsage(usage: OpenAIUsage): TokenUsage {
  const prompt = usage.prompt_tokens ?? 0;
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
  const cacheWrite = usage.prompt_tokens_details?.cache_write_tokens ?? 0;
  const audioIn = usage.prompt_tokens_details?.audio_tokens ?? 0;
  const completion = usage.completion_tokens ?? 0;
  const reasoning = usage.completion_tokens_details?.reasoning_tokens ?? 0;
  const audioOut = usage.completion_tokens_details?.audio_tokens ?? 0;
  const atLeastZero = (count: number) => Math.max(0, count);
  return {
    input: atLeastZero(prompt - cached - cacheWrite - audioIn),
    cached_input: atLeastZero(cached),
    cache_write: atLeastZero(cacheWrite),
    output: atLeastZero(completion - reasoning - audioOut),
    reasoning: atLeastZero(reasoning),
    audio: atLeastZero(audioIn) + atLeastZero(audioOut),
  };
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { OpenAIUsage } from './openai-wire.ts';

/**
 * OpenAI's prompt_tokens include cached and audio tokens, and completion_tokens
 * include reasoning and audio tokens
 * (https://platform.openai.com/docs/api-reference/chat/object#chat/object-usage).
 * The buckets are disjoint, so those parts are taken out; every bucket is ≥ 0.
 *
 * OpenAI-compatible upstreams do not all count alike. Some report reasoning
 * beside completion_tokens rather than inside it (xAI: total_tokens = prompt +
 * completion + reasoning); that is told by the total, or by more reasoning
 * than completion. Some count thinking only in total_tokens (Gemini's
 * OpenAI-compatible endpoint): what the total counts beyond the parts it
 * names is billed as reasoning. OpenAI's own total is prompt + completion, so
 * neither rule changes anything there.
 */
export function convertOpenAIUsage(usage: OpenAIUsage): TokenUsage {
  const prompt = usage.prompt_tokens ?? 0;
  const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
  const cacheWrite = usage.prompt_tokens_details?.cache_write_tokens ?? 0;
  const audioIn = usage.prompt_tokens_details?.audio_tokens ?? 0;
  const completion = usage.completion_tokens ?? 0;
  const reasoning = usage.completion_tokens_details?.reasoning_tokens ?? 0;
  const audioOut = usage.completion_tokens_details?.audio_tokens ?? 0;
  const total = usage.total_tokens ?? null;
  const besideCompletion = reasoning > 0 && (reasoning > completion - audioOut || total === prompt + completion + reasoning);
  const named = prompt + completion + (besideCompletion ? reasoning : 0);
  const unnamed = total !== null && total > named ? total - named : 0;
  const atLeastZero = (count: number) => Math.max(0, count);
  return {
    input: atLeastZero(prompt - cached - cacheWrite - audioIn),
    cached_input: atLeastZero(cached),
    cache_write: atLeastZero(cacheWrite),
    output: atLeastZero(completion - audioOut - (besideCompletion ? 0 : reasoning)),
    reasoning: atLeastZero(reasoning) + unnamed,
    audio: atLeastZero(audioIn) + atLeastZero(audioOut),
  };
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { UsageMetadata } from './gemini-wire.ts';

function modality(details: UsageMetadata['promptTokensDetails'], name: string): number {
  return (details ?? []).filter((detail) => detail.modality === name).reduce((sum, detail) => sum + (detail.tokenCount ?? 0), 0);
}

/**
 * Gemini's promptTokenCount includes cached content; thoughtsTokenCount is not
 * part of candidatesTokenCount, and toolUsePromptTokenCount is apart from the
 * prompt (totalTokenCount = prompt + candidates + toolUse + thoughts)
 * (https://ai.google.dev/api/generate-content#UsageMetadata). Image and audio
 * input are taken from the per-modality details, less what of them was cached,
 * so no token lands in two buckets.
 */
export function convertGeminiUsage(usage: UsageMetadata): TokenUsage {
  const atLeastZero = (count: number) => Math.max(0, count);
  const cached = usage.cachedContentTokenCount ?? 0;
  const image = atLeastZero(modality(usage.promptTokensDetails, 'IMAGE') - modality(usage.cacheTokensDetails, 'IMAGE'));
  const audio = atLeastZero(modality(usage.promptTokensDetails, 'AUDIO') - modality(usage.cacheTokensDetails, 'AUDIO'));
  return {
    input: atLeastZero((usage.promptTokenCount ?? 0) - cached - image - audio) + atLeastZero(usage.toolUsePromptTokenCount ?? 0),
    cached_input: atLeastZero(cached),
    image,
    audio,
    output: atLeastZero(usage.candidatesTokenCount ?? 0),
    reasoning: atLeastZero(usage.thoughtsTokenCount ?? 0),
  };
}

/**
 * What a running usageMetadata (a chunk before the final one) already counts
 * for good: the prompt, and the thoughts so far (cumulative, like every count
 * in it; Google bills them whether or not the stream ends). The candidates are
 * left to the tokenizer, from the output that reached the gateway.
 */
export function geminiInputUsage(usage: UsageMetadata): TokenUsage {
  const { output: _output, ...reported } = convertGeminiUsage(usage);
  return reported;
}

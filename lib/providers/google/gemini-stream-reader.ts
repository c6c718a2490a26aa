import type { TokenUsage } from '../../billing/token-buckets.ts';
import { forwardAsIs, type StreamProcessor } from '../../gateway/proxy.ts';
import { sseJson } from '../../metering/sse-event-splitter.ts';
import { convertGeminiUsage, geminiInputUsage } from './convert-gemini-usage.ts';
import { generateContentResponseSchema, type GenerateContentResponse, type UsageMetadata } from './gemini-wire.ts';

/** The output text of a response (thoughts included: they are billed output). */
export function geminiDelivered(response: GenerateContentResponse): string[] {
  const delivered: string[] = [];
  for (const candidate of response.candidates ?? []) {
    for (const part of candidate.content?.parts ?? []) {
      if (part.text) delivered.push(part.text);
      if (part.functionCall) delivered.push(part.functionCall.name ?? '', JSON.stringify(part.functionCall.args ?? {}));
    }
  }
  return delivered;
}

/** Google Search grounding: the searches a response ran (webSearchQueries), billed per search. */
export function geminiSearches(response: GenerateContentResponse): number {
  return (response.candidates ?? []).reduce((total, candidate) => total + (candidate.groundingMetadata?.webSearchQueries?.length ?? 0), 0);
}

/**
 * Reads Gemini stream chunks. Each chunk's usageMetadata is the running total
 * (the prompt only, until the end), so only one that comes with or after a
 * finishReason is final usage; a stream cut before it has none.
 */
export function createGeminiStreamReader() {
  let usage: UsageMetadata | null = null;
  let finished = false;
  let final = false;
  let error: string | null = null;
  let searches = 0;
  const delivered: string[] = [];

  return {
    read(event: string): GenerateContentResponse | null {
      const json = sseJson(event);
      const upstreamError = (json as { error?: { message?: unknown } } | null)?.error;
      if (upstreamError) {
        error = typeof upstreamError.message === 'string' ? upstreamError.message : 'upstream error';
        return null;
      }
      const parsed = generateContentResponseSchema.safeParse(json);
      if (!parsed.success) return null;
      const chunk = parsed.data;
      if (chunk.candidates?.some((candidate) => candidate.finishReason)) finished = true;
      if (chunk.usageMetadata) {
        usage = chunk.usageMetadata;
        if (finished) final = true;
      }
      delivered.push(...geminiDelivered(chunk));
      searches = Math.max(searches, geminiSearches(chunk));
      return chunk;
    },
    usage: () => (final && usage ? convertGeminiUsage(usage) : null),
    inputUsage: () => (usage ? geminiInputUsage(usage) : null),
    delivered: () => delivered,
    error: () => error,
    calls: (): TokenUsage => (searches ? { web_search: searches } : {}),
  };
}

/** Native streams: forwarded as received, metered on the way. */
export function createGeminiStreamMeter(): StreamProcessor {
  return forwardAsIs(createGeminiStreamReader());
}

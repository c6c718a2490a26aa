import type { TokenUsage } from '../../billing/token-buckets.ts';
import { forwardAsIs, type StreamProcessor } from '../../gateway/proxy.ts';
import { sseJson } from '../../metering/sse-event-splitter.ts';
import { convertGeminiUsage, geminiInputUsage } from './convert-gemini-usage.ts';
import { generateContentResponseSchema, type GenerateContentResponse, type UsageMetadata } from './gemini-wire.ts';

/** The output text of a response, and apart from it the text of its thoughts. */
function deliveredParts(response: GenerateContentResponse): { answer: string[]; thoughts: string[] } {
  const answer: string[] = [];
  const thoughts: string[] = [];
  for (const candidate of response.candidates ?? []) {
    for (const part of candidate.content?.parts ?? []) {
      if (part.text) (part.thought ? thoughts : answer).push(part.text);
      if (part.functionCall) answer.push(part.functionCall.name ?? '', JSON.stringify(part.functionCall.args ?? {}));
    }
  }
  return { answer, thoughts };
}

/** The output text of a response (thoughts included: they are billed output). */
export function geminiDelivered(response: GenerateContentResponse): string[] {
  const { answer, thoughts } = deliveredParts(response);
  return [...thoughts, ...answer];
}

/** Google Search grounding: the searches a response ran (webSearchQueries), billed per search. */
export function geminiSearches(response: GenerateContentResponse): number {
  return (response.candidates ?? []).reduce((total, candidate) => total + (candidate.groundingMetadata?.webSearchQueries?.length ?? 0), 0);
}

/**
 * Reads Gemini stream chunks. Each chunk's usageMetadata is the running total,
 * so only one that comes with or after a finishReason is final usage; a stream
 * cut before it has the prompt and the thoughts so far (see geminiInputUsage).
 * Thought text a reported thoughtsTokenCount already counts is not delivered
 * output as well; thought text after the last such count is.
 */
export function createGeminiStreamReader() {
  let usage: UsageMetadata | null = null;
  let finished = false;
  let final = false;
  let error: string | null = null;
  let searches = 0;
  const delivered: string[] = [];
  let uncountedThoughts: string[] = [];

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
      const { answer, thoughts } = deliveredParts(chunk);
      delivered.push(...answer);
      uncountedThoughts.push(...thoughts);
      if (chunk.usageMetadata) {
        usage = chunk.usageMetadata;
        if (finished) final = true;
        if ((usage.thoughtsTokenCount ?? 0) > 0) uncountedThoughts = [];
      }
      searches = Math.max(searches, geminiSearches(chunk));
      return chunk;
    },
    usage: () => (final && usage ? convertGeminiUsage(usage) : null),
    inputUsage: () => (usage ? geminiInputUsage(usage) : null),
    delivered: () => [...uncountedThoughts, ...delivered],
    error: () => error,
    calls: (): TokenUsage => (searches ? { web_search: searches } : {}),
  };
}

/** Native streams: forwarded as received, metered on the way. */
export function createGeminiStreamMeter(): StreamProcessor {
  return forwardAsIs(createGeminiStreamReader());
}

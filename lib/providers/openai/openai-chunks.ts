import type { TokenUsage } from '../../billing/token-buckets.ts';

/** Buckets back into OpenAI's usage object, for answers translated from other formats. */
export function toOpenAIUsage(usage: TokenUsage) {
  const prompt = (usage.input ?? 0) + (usage.cached_input ?? 0) + (usage.cache_write ?? 0) + (usage.cache_write_1h ?? 0) + (usage.image ?? 0) + (usage.audio ?? 0);
  const completion = (usage.output ?? 0) + (usage.reasoning ?? 0);
  return {
    prompt_tokens: prompt,
    completion_tokens: completion,
    total_tokens: prompt + completion,
    prompt_tokens_details: { cached_tokens: usage.cached_input ?? 0 },
    completion_tokens_details: { reasoning_tokens: usage.reasoning ?? 0 },
  };
}

export interface ChunkDelta {
  role?: 'assistant';
  content?: string;
  tool_calls?: Array<{ index: number; id?: string; type?: 'function'; function: { name?: string; arguments: string } }>;
}

/** Writes OpenAI chat.completion.chunk events for a translated stream. */
export function createChunkWriter({ id, model, includeUsage }: { id: string; model: string; includeUsage: boolean }) {
  const created = Math.floor(Date.now() / 1000);
  const event = (choices: unknown[], usage?: unknown) => {
    const chunk: Record<string, unknown> = { id, object: 'chat.completion.chunk', created, model, choices };
    if (includeUsage) chunk.usage = usage ?? null;
    return `data: ${JSON.stringify(chunk)}\n\n`;
  };
  return {
    delta: (delta: ChunkDelta) => event([{ index: 0, delta, logprobs: null, finish_reason: null }]),
    finish: (reason: string) => event([{ index: 0, delta: {}, logprobs: null, finish_reason: reason }]),
    /** The usage chunk (only when the client asked for it) and the end marker. */
    end: (usage: TokenUsage | null) => (includeUsage && usage ? event([], toOpenAIUsage(usage)) : '') + 'data: [DONE]\n\n',
  };
}

/** A data: URL's media type and base64 payload; null for other URLs. */
export function parseDataUrl(url: string): { mediaType: string; data: string } | null {
  const match = /^data:([^;,]+);base64,(.*)$/s.exec(url);
  return match ? { mediaType: match[1]!, data: match[2]! } : null;
}

/** The text of an OpenAI message content (string or parts). */
export function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) {
    return content
      .map((part) => ((part as { type?: string }).type === 'text' ? String((part as { text?: unknown }).text ?? '') : ''))
      .join('');
  }
  return '';
}

/** Parses streamed or stored tool-call arguments; invalid JSON is an error the caller reports. */
export function parseArguments(text: string | undefined): unknown {
  if (!text) return {};
  try {
    return JSON.parse(text);
  } catch {
    throw new Error(`tool call arguments are not valid JSON: ${text.slice(0, 100)}`);
  }
}

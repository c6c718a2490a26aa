import type { TokenUsage } from '../../billing/token-buckets.ts';
import { z } from 'zod';
import { parseJsonAs } from '../../parse-json-as.ts';
import type { StreamProcessor } from '../../gateway/proxy.ts';
import { openAIErrorBody, openAIErrorEvent } from '../openai/openai-adaptor.ts';
import { createChunkWriter, toOpenAIUsage } from '../openai/openai-chunks.ts';
import { convertGeminiUsage } from './convert-gemini-usage.ts';
import { createGeminiStreamReader, geminiDelivered } from './gemini-stream-reader.ts';
import { generateContentResponseSchema } from './gemini-wire.ts';

const finishReasons: Record<string, string> = {
  STOP: 'stop',
  MAX_TOKENS: 'length',
  SAFETY: 'content_filter',
  RECITATION: 'content_filter',
  BLOCKLIST: 'content_filter',
  PROHIBITED_CONTENT: 'content_filter',
  SPII: 'content_filter',
};

function finishReason(reason: string | null | undefined, calledTools: boolean): string {
  if (calledTools) return 'tool_calls';
  return finishReasons[reason ?? ''] ?? 'stop';
}

/** A non-streaming Gemini response as an OpenAI chat completion. */
export function geminiToOpenAICompletion(text: string, model: string): { body: string; usage: TokenUsage | null; delivered: string[] } {
  const response = parseJsonAs(generateContentResponseSchema, text);
  // Not JSON: passed on, nothing counted; JSON of another shape: its text counts as output.
  if (!response) return { body: text, usage: null, delivered: parseJsonAs(z.unknown(), text) === undefined ? [] : [text] };
  const usage = response.usageMetadata ? convertGeminiUsage(response.usageMetadata) : null;
  const choices = (response.candidates ?? []).map((candidate, index) => {
    const texts: string[] = [];
    const toolCalls: unknown[] = [];
    for (const part of candidate.content?.parts ?? []) {
      if (part.text && !part.thought) texts.push(part.text);
      if (part.functionCall) {
        toolCalls.push({
          id: `call_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`,
          type: 'function',
          function: { name: part.functionCall.name ?? '', arguments: JSON.stringify(part.functionCall.args ?? {}) },
        });
      }
    }
    return {
      index,
      message: { role: 'assistant', content: texts.length ? texts.join('') : null, refusal: null, ...(toolCalls.length ? { tool_calls: toolCalls } : {}) },
      logprobs: null,
      finish_reason: finishReason(candidate.finishReason, toolCalls.length > 0),
    };
  });
  const completion = {
    id: `chatcmpl-${response.responseId ?? crypto.randomUUID()}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model,
    choices,
    ...(usage ? { usage: toOpenAIUsage(usage) } : {}),
  };
  return { body: JSON.stringify(completion), usage, delivered: geminiDelivered(response) };
}

/** A Gemini SSE stream as OpenAI chat.completion.chunk events. */
export function createGeminiToOpenAIStream({ model, includeUsage }: { model: string; includeUsage: boolean }): StreamProcessor {
  const reader = createGeminiStreamReader();
  let writer: ReturnType<typeof createChunkWriter> | undefined;
  let toolCount = 0;
  let finished: string | null = null;

  return {
    processEvent(event) {
      const chunk = reader.read(event);
      if (!chunk) return reader.error() ? openAIErrorEvent(reader.error()!, 'upstream_error') : null;
      let out = '';
      if (!writer) {
        writer = createChunkWriter({ id: `chatcmpl-${chunk.responseId ?? crypto.randomUUID()}`, model, includeUsage });
        out += writer.delta({ role: 'assistant', content: '' });
      }
      const candidate = chunk.candidates?.[0];
      for (const part of candidate?.content?.parts ?? []) {
        if (part.text && !part.thought) out += writer.delta({ content: part.text });
        if (part.functionCall) {
          out += writer.delta({
            tool_calls: [
              {
                index: toolCount++,
                id: `call_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`,
                type: 'function',
                function: { name: part.functionCall.name ?? '', arguments: JSON.stringify(part.functionCall.args ?? {}) },
              },
            ],
          });
        }
      }
      if (candidate?.finishReason && !finished) {
        finished = finishReason(candidate.finishReason, toolCount > 0);
        out += writer.finish(finished);
      }
      return out || null;
    },
    // Gemini has no end-of-message event: the usage chunk and [DONE] follow its last chunk.
    finish: () => (writer && finished ? writer.end(reader.usage()) : ''),
    usage: reader.usage,
    inputUsage: reader.inputUsage,
    delivered: reader.delivered,
    error: reader.error,
  };
}

/** A Google error body in OpenAI's shape. */
export function geminiErrorToOpenAI(status: number, text: string): string {
  let message = `The upstream answered HTTP ${status}.`;
  let code = 'upstream_error';
  try {
    const body = JSON.parse(text) as { error?: { status?: string; message?: string } };
    message = body.error?.message ?? message;
    code = body.error?.status?.toLowerCase() ?? code;
  } catch {
    // not JSON: keep the generic message
  }
  return openAIErrorBody(message, 'upstream_error', code);
}

import type { TokenUsage } from '../../billing/token-buckets.ts';
import { z } from 'zod';
import { parseJsonAs } from '../../parse-json-as.ts';
import type { StreamProcessor } from '../../gateway/proxy.ts';
import { createChunkWriter, toOpenAIUsage } from '../openai/openai-chunks.ts';
import { openAIErrorBody, openAIErrorEvent } from '../openai/openai-adaptor.ts';
import { createAnthropicStreamReader } from './anthropic-stream-meter.ts';
import { anthropicMessageSchema } from './anthropic-wire.ts';
import { anthropicAboveStandard, convertAnthropicUsage } from './convert-anthropic-usage.ts';

const finishReasons: Record<string, string> = {
  end_turn: 'stop',
  stop_sequence: 'stop',
  pause_turn: 'stop',
  max_tokens: 'length',
  tool_use: 'tool_calls',
  refusal: 'content_filter',
};

export function anthropicFinishReason(reason: string | null | undefined): string {
  return finishReasons[reason ?? ''] ?? 'stop';
}

/** A non-streaming Anthropic message as an OpenAI chat completion. */
export function anthropicToOpenAICompletion(text: string, model: string): { body: string; usage: TokenUsage | null; delivered: string[]; aboveStandard?: string[] } {
  const message = parseJsonAs(anthropicMessageSchema, text);
  // Not JSON: passed on, nothing counted; JSON of another shape: its text counts as output.
  if (!message) return { body: text, usage: null, delivered: parseJsonAs(z.unknown(), text) === undefined ? [] : [text] };
  const delivered: string[] = [];
  const texts: string[] = [];
  const toolCalls: unknown[] = [];
  for (const block of message.content ?? []) {
    if (block.type === 'text' && block.text) {
      texts.push(block.text);
      delivered.push(block.text);
    } else if (block.type === 'tool_use') {
      const args = JSON.stringify(block.input ?? {});
      toolCalls.push({ id: block.id, type: 'function', function: { name: block.name, arguments: args } });
      delivered.push(block.name ?? '', args);
    } else if (block.type === 'thinking' && block.thinking) {
      delivered.push(block.thinking);
    }
  }
  const usage = message.usage ? convertAnthropicUsage(message.usage) : null;
  const completion = {
    id: message.id ?? `chatcmpl-${crypto.randomUUID()}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [
      {
        index: 0,
        message: { role: 'assistant', content: texts.length ? texts.join('') : null, refusal: null, ...(toolCalls.length ? { tool_calls: toolCalls } : {}) },
        logprobs: null,
        finish_reason: anthropicFinishReason(message.stop_reason),
      },
    ],
    ...(usage ? { usage: toOpenAIUsage(usage) } : {}),
  };
  return { body: JSON.stringify(completion), usage, delivered, aboveStandard: message.usage ? anthropicAboveStandard(message.usage) : [] };
}

/** An Anthropic stream as OpenAI chat.completion.chunk events. */
export function createAnthropicToOpenAIStream({ model, includeUsage }: { model: string; includeUsage: boolean }): StreamProcessor {
  const reader = createAnthropicStreamReader();
  let writer: ReturnType<typeof createChunkWriter> | undefined;
  const toolIndexes = new Map<number, number>();

  const chunks = () => (writer ??= createChunkWriter({ id: `chatcmpl-${crypto.randomUUID()}`, model, includeUsage }));

  return {
    processEvent(event) {
      const streamEvent = reader.read(event);
      if (!streamEvent) return null;
      switch (streamEvent.type) {
        case 'message_start':
          writer = createChunkWriter({ id: streamEvent.message?.id ?? `chatcmpl-${crypto.randomUUID()}`, model, includeUsage });
          return writer.delta({ role: 'assistant', content: '' });
        case 'content_block_start': {
          const block = streamEvent.content_block;
          if (block?.type !== 'tool_use') return block?.text ? chunks().delta({ content: block.text }) : null;
          const index = toolIndexes.size;
          toolIndexes.set(streamEvent.index ?? 0, index);
          return chunks().delta({ tool_calls: [{ index, id: block.id ?? '', type: 'function', function: { name: block.name ?? '', arguments: '' } }] });
        }
        case 'content_block_delta': {
          const delta = streamEvent.delta;
          if (delta?.type === 'text_delta' && delta.text) return chunks().delta({ content: delta.text });
          if (delta?.type === 'input_json_delta' && delta.partial_json) {
            const index = toolIndexes.get(streamEvent.index ?? 0) ?? 0;
            return chunks().delta({ tool_calls: [{ index, function: { arguments: delta.partial_json } }] });
          }
          return null;
        }
        case 'message_delta':
          return chunks().finish(anthropicFinishReason(streamEvent.delta?.stop_reason));
        case 'message_stop':
          return chunks().end(reader.usage());
        case 'error':
          return openAIErrorEvent(streamEvent.error?.message ?? 'upstream error', streamEvent.error?.type ?? 'upstream_error');
        default:
          return null;
      }
    },
    usage: reader.usage,
    inputUsage: reader.inputUsage,
    aboveStandard: reader.aboveStandard,
    delivered: reader.delivered,
    error: reader.error,
  };
}

/** An Anthropic error body in OpenAI's shape. */
export function anthropicErrorToOpenAI(status: number, text: string): string {
  let message = `The upstream answered HTTP ${status}.`;
  let type = 'upstream_error';
  try {
    const body = JSON.parse(text) as { error?: { type?: string; message?: string } };
    message = body.error?.message ?? message;
    type = body.error?.type ?? type;
  } catch {
    // not JSON: keep the generic message
  }
  return openAIErrorBody(message, type, type);
}

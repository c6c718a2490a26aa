import { z } from 'zod';
import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { BodyResult, StreamProcessor } from '../../gateway/proxy.ts';
import { parseJsonAs } from '../../parse-json-as.ts';
import { encodeReasoningState, type ToolSpec } from '../openai/responses-conversation.ts';
import { createResponsesWriter, responsesErrorEvent, type Ending, type ResponsesWriter } from '../openai/responses-writer.ts';
import type { ResponsesRequest } from '../openai/responses-wire.ts';
import { createAnthropicStreamReader } from './anthropic-stream-meter.ts';
import { anthropicMessageSchema } from './anthropic-wire.ts';
import { anthropicAboveStandard, convertAnthropicUsage } from './convert-anthropic-usage.ts';

function ending(stopReason: string | null | undefined): Ending {
  if (stopReason === 'max_tokens') return { status: 'incomplete', reason: 'max_output_tokens' };
  if (stopReason === 'refusal') return { status: 'incomplete', reason: 'content_filter' };
  return { status: 'completed' };
}

/** A tool_use block's start, as the call the client made the tool for. */
function callOf(block: { id?: string | null; name?: string | null }, tools: Map<string, ToolSpec>) {
  const spec = tools.get(block.name ?? '');
  return { callId: block.id ?? '', name: spec?.name ?? block.name ?? '', namespace: spec?.namespace ?? null, custom: spec?.custom ?? false };
}

function searchQuery(input: unknown): string {
  const query = (input as { query?: unknown } | null)?.query;
  return typeof query === 'string' ? query : '';
}

/** A non-streaming Anthropic message as a Responses API response object. */
export function anthropicToResponse(text: string, request: ResponsesRequest, tools: Map<string, ToolSpec>): BodyResult {
  const message = parseJsonAs(anthropicMessageSchema, text);
  // Not JSON: passed on, nothing counted; JSON of another shape: its text counts as output.
  if (!message) return { body: text, usage: null, delivered: parseJsonAs(z.unknown(), text) === undefined ? [] : [text] };
  const writer = createResponsesWriter(request, request.model);
  const delivered: string[] = [];
  let searches = 0;
  for (const block of message.content ?? []) {
    switch (block.type) {
      case 'text':
        // Consecutive text blocks (one per citation) make one message.
        writer.text(block.text ?? '');
        delivered.push(block.text ?? '');
        break;
      case 'thinking':
        writer.reasoning(block.thinking ?? '');
        if (typeof block.signature === 'string') writer.reasoningState(encodeReasoningState({ provider: 'anthropic', value: block.signature }));
        writer.close();
        delivered.push(block.thinking ?? '');
        break;
      case 'redacted_thinking':
        if (typeof block.data === 'string') writer.reasoningState(encodeReasoningState({ provider: 'anthropic-redacted', value: block.data }));
        writer.close();
        break;
      case 'tool_use': {
        const args = JSON.stringify(block.input ?? {});
        writer.call(callOf(block, tools));
        writer.callArguments(args);
        writer.close();
        delivered.push(block.name ?? '', args);
        break;
      }
      case 'server_tool_use':
        if (block.name === 'web_search') {
          searches++;
          writer.search(searchQuery(block.input));
        }
        break;
    }
  }
  const usage = message.usage ? convertAnthropicUsage(message.usage) : null;
  const body = writer.response(usage, ending(message.stop_reason));
  return { body: JSON.stringify(body), usage, delivered, calls: searches ? { web_search: searches } : {}, aboveStandard: message.usage ? anthropicAboveStandard(message.usage) : [] };
}

/** An Anthropic stream as Responses API events. */
export function createAnthropicToResponsesStream(request: ResponsesRequest, tools: Map<string, ToolSpec>): StreamProcessor {
  const reader = createAnthropicStreamReader();
  const writer: ResponsesWriter = createResponsesWriter(request, request.model);
  let started = false;
  let ended = false;
  let stopReason: string | null | undefined = null;
  /** The kind of each open content block, by index: what its deltas and its stop mean here. */
  const blocks = new Map<number, { type: string; json: string }>();

  const start = () => {
    if (started) return '';
    started = true;
    return writer.start();
  };

  return {
    processEvent(event) {
      const streamEvent = reader.read(event);
      if (!streamEvent) return null;
      const index = streamEvent.index ?? 0;
      switch (streamEvent.type) {
        case 'message_start':
          return start();
        case 'content_block_start': {
          const block = streamEvent.content_block;
          const type = block?.type ?? '';
          blocks.set(index, { type, json: '' });
          let out = start();
          if (type === 'text') out += writer.text(block?.text ?? '');
          else if (type === 'thinking') out += writer.reasoning(block?.thinking ?? '');
          else if (type === 'redacted_thinking' && typeof block?.data === 'string') {
            out += writer.reasoningState(encodeReasoningState({ provider: 'anthropic-redacted', value: block.data }));
          } else if (type === 'tool_use') out += writer.call(callOf(block!, tools));
          return out || null;
        }
        case 'content_block_delta': {
          const delta = streamEvent.delta;
          const block = blocks.get(index);
          if (delta?.type === 'text_delta' && delta.text) return writer.text(delta.text);
          if (delta?.type === 'thinking_delta' && delta.thinking) return writer.reasoning(delta.thinking);
          if (delta?.type === 'signature_delta' && delta.signature) return writer.reasoningState(encodeReasoningState({ provider: 'anthropic', value: delta.signature })) || null;
          if (delta?.type === 'input_json_delta' && delta.partial_json && block) {
            if (block.type === 'tool_use') return writer.callArguments(delta.partial_json) || null;
            block.json += delta.partial_json;
          }
          return null;
        }
        case 'content_block_stop': {
          const block = blocks.get(index);
          blocks.delete(index);
          if (block?.type === 'server_tool_use') {
            let input: unknown = null;
            try {
              input = JSON.parse(block.json || '{}');
            } catch {
              // a query that did not arrive whole: the search is still reported
            }
            return writer.search(searchQuery(input));
          }
          // A text block stays open: the next one (Anthropic starts one per citation) continues the message.
          return block && ['thinking', 'redacted_thinking', 'tool_use'].includes(block.type) ? writer.close() || null : null;
        }
        case 'message_delta':
          stopReason = streamEvent.delta?.stop_reason ?? stopReason;
          return null;
        case 'message_stop':
          ended = true;
          return writer.finish(reader.usage(), ending(stopReason));
        case 'error':
          ended = true;
          return responsesErrorEvent(streamEvent.error?.type ?? 'upstream_error', streamEvent.error?.message ?? 'upstream error');
        default:
          return null;
      }
    },
    // A stream that ends without message_stop was cut short: the client is told, not left waiting for response.completed.
    finish: () => (started && !ended ? responsesErrorEvent('upstream_unavailable', 'The upstream ended the stream before the answer was complete.') : ''),
    usage: reader.usage,
    inputUsage: reader.inputUsage,
    aboveStandard: reader.aboveStandard,
    delivered: reader.delivered,
    error: reader.error,
    calls: (): TokenUsage => reader.calls(),
  };
}

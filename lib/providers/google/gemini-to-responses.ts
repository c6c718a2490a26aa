import { z } from 'zod';
import type { BodyResult, StreamProcessor } from '../../gateway/proxy.ts';
import { parseJsonAs } from '../../parse-json-as.ts';
import { encodeReasoningState, type ToolSpec } from '../openai/responses-conversation.ts';
import { createResponsesWriter, responsesErrorEvent, type Ending, type ResponsesWriter } from '../openai/responses-writer.ts';
import type { ResponsesRequest } from '../openai/responses-wire.ts';
import { convertGeminiUsage } from './convert-gemini-usage.ts';
import { createGeminiStreamReader, geminiDelivered, geminiSearches } from './gemini-stream-reader.ts';
import { generateContentResponseSchema, type GenerateContentResponse } from './gemini-wire.ts';

const filtered = new Set(['SAFETY', 'RECITATION', 'BLOCKLIST', 'PROHIBITED_CONTENT', 'SPII', 'IMAGE_SAFETY']);

function ending(reason: string | null | undefined): Ending {
  if (reason === 'MAX_TOKENS') return { status: 'incomplete', reason: 'max_output_tokens' };
  if (reason && filtered.has(reason)) return { status: 'incomplete', reason: 'content_filter' };
  return { status: 'completed' };
}

type Candidate = NonNullable<GenerateContentResponse['candidates']>[number];

/** One chunk's (or the whole answer's) parts of the first candidate, written as Responses items. */
function writeParts(writer: ResponsesWriter, candidate: Candidate | undefined, tools: Map<string, ToolSpec>): string {
  let out = '';
  for (const part of candidate?.content?.parts ?? []) {
    if (part.thought) {
      if (part.text) out += writer.reasoning(part.text);
      if (part.thoughtSignature) out += writer.reasoningState(encodeReasoningState({ provider: 'google', value: part.thoughtSignature }));
    } else if (part.functionCall) {
      // Gemini needs a call's thought signature back with it: a reasoning item before the call carries it.
      if (part.thoughtSignature) out += writer.reasoningState(encodeReasoningState({ provider: 'google', value: part.thoughtSignature }));
      const name = part.functionCall.name ?? '';
      const spec = tools.get(name);
      out += writer.call({
        callId: `call_${crypto.randomUUID().replaceAll('-', '').slice(0, 24)}`,
        name: spec?.name ?? name,
        namespace: spec?.namespace ?? null,
        custom: spec?.custom ?? false,
      });
      out += writer.callArguments(JSON.stringify(part.functionCall.args ?? {}));
      out += writer.close();
    } else if (part.text) out += writer.text(part.text);
  }
  return out;
}

function writeSearches(writer: ResponsesWriter, candidate: Candidate | undefined): string {
  return (candidate?.groundingMetadata?.webSearchQueries ?? []).map((query) => writer.search(String(query))).join('');
}

/** A non-streaming Gemini response as a Responses API response object (its first candidate). */
export function geminiToResponse(text: string, request: ResponsesRequest, tools: Map<string, ToolSpec>): BodyResult {
  const response = parseJsonAs(generateContentResponseSchema, text);
  // Not JSON: passed on, nothing counted; JSON of another shape: its text counts as output.
  if (!response) return { body: text, usage: null, delivered: parseJsonAs(z.unknown(), text) === undefined ? [] : [text] };
  const writer = createResponsesWriter(request, request.model);
  const candidate = response.candidates?.[0];
  writeParts(writer, candidate, tools);
  writeSearches(writer, candidate);
  const usage = response.usageMetadata ? convertGeminiUsage(response.usageMetadata) : null;
  const searches = geminiSearches(response);
  return {
    body: JSON.stringify(writer.response(usage, ending(candidate?.finishReason))),
    usage,
    delivered: geminiDelivered(response),
    calls: searches ? { web_search: searches } : {},
  };
}

/** A Gemini SSE stream as Responses API events. */
export function createGeminiToResponsesStream(request: ResponsesRequest, tools: Map<string, ToolSpec>): StreamProcessor {
  const reader = createGeminiStreamReader();
  const writer = createResponsesWriter(request, request.model);
  let started = false;
  let finishReason: string | null = null;
  let lastCandidate: Candidate | undefined;

  return {
    processEvent(event) {
      const chunk = reader.read(event);
      if (!chunk) return reader.error() ? responsesErrorEvent('upstream_error', reader.error()!) : null;
      let out = '';
      if (!started) {
        started = true;
        out += writer.start();
      }
      const candidate = chunk.candidates?.[0];
      out += writeParts(writer, candidate, tools);
      if (candidate?.groundingMetadata) lastCandidate = candidate;
      if (candidate?.finishReason && !finishReason) finishReason = candidate.finishReason;
      return out || null;
    },
    // Gemini has no end-of-answer event: its usage may follow the finishReason chunk, so the answer ends with the stream.
    finish: () => {
      if (!started) return '';
      if (!finishReason) return responsesErrorEvent('upstream_unavailable', 'The upstream ended the stream before the answer was complete.');
      return writeSearches(writer, lastCandidate) + writer.finish(reader.usage(), ending(finishReason));
    },
    usage: reader.usage,
    inputUsage: reader.inputUsage,
    delivered: reader.delivered,
    error: reader.error,
    calls: reader.calls,
  };
}

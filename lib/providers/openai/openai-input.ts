import { countTokens, utf8Bytes } from '../../metering/count-tokens.ts';
import type { ChatCompletionRequest, EmbeddingRequest } from './openai-wire.ts';

/**
 * Upper bound of an image's input tokens, for holds only. The dearest OpenAI
 * formula (gpt-4o-mini, high detail, 2048×768: 2833 + 8 × 5667 tokens) stays under it.
 */
export const imageTokenBound = 50_000;

/** Tokens counted for an image when no provider usage exists (a 1024×1024 high-detail image on gpt-4o). */
export const imageTokenEstimate = 765;

/** Per-message framing tokens (role and separators), as OpenAI's cookbook counts them. */
const messageOverhead = 3;
const replyPriming = 3;

type Message = ChatCompletionRequest['messages'][number];

function partText(part: Record<string, unknown>): string | null {
  if (part.type === 'text' && typeof part.text === 'string') return part.text;
  return null;
}

function isImagePart(part: Record<string, unknown>): boolean {
  return part.type === 'image_url' || part.type === 'image';
}

/** The prompt's text pieces, images apart: base64 image data is never treated as text. */
function promptPieces(request: ChatCompletionRequest) {
  const texts: string[] = [];
  let images = 0;
  let opaque = 0;
  const visit = (message: Message) => {
    texts.push(message.role);
    if (message.name) texts.push(message.name);
    if (typeof message.content === 'string') texts.push(message.content);
    else if (Array.isArray(message.content)) {
      for (const part of message.content) {
        const text = partText(part);
        if (text !== null) texts.push(text);
        else if (isImagePart(part)) images += 1;
        else opaque += utf8Bytes(JSON.stringify(part));
      }
    }
    const toolCalls = (message as { tool_calls?: unknown }).tool_calls;
    if (toolCalls) texts.push(JSON.stringify(toolCalls));
  };
  request.messages.forEach(visit);
  if (request.tools) texts.push(JSON.stringify(request.tools));
  const responseFormat = (request as { response_format?: unknown }).response_format;
  if (responseFormat) texts.push(JSON.stringify(responseFormat));
  return { texts, images, opaque };
}

/** A strict upper bound on the request's input tokens, with no tokenizer. */
export function boundChatInputTokens(request: ChatCompletionRequest): number {
  const { texts, images, opaque } = promptPieces(request);
  let bytes = opaque;
  for (const text of texts) bytes += utf8Bytes(text);
  return bytes + images * imageTokenBound + request.messages.length * messageOverhead + replyPriming;
}

/** The prompt's tokens by the tokenizer, for when the provider reported no usage. */
export async function countChatInputTokens(request: ChatCompletionRequest): Promise<{ tokens: number; estimated: boolean }> {
  const { texts, images, opaque } = promptPieces(request);
  const tokens = (await countTokens(texts)) + images * imageTokenEstimate + opaque + request.messages.length * messageOverhead + replyPriming;
  return { tokens, estimated: images > 0 || opaque > 0 };
}

export function boundEmbeddingInputTokens(request: EmbeddingRequest): number {
  const { input } = request;
  if (typeof input === 'string') return utf8Bytes(input);
  let total = 0;
  for (const item of input) {
    if (typeof item === 'string') total += utf8Bytes(item);
    else if (typeof item === 'number') total += 1;
    else total += item.length;
  }
  return total;
}

import { utf8Bytes } from '../../metering/count-tokens.ts';
import { boundPromptTokens, countPromptTokens, inlineFileOf, type InlineFile, type PromptPieces } from '../../metering/prompt-pieces.ts';
import type { ChatCompletionRequest, EmbeddingRequest } from './openai-wire.ts';

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
function promptPieces(request: ChatCompletionRequest): PromptPieces {
  const texts: string[] = [];
  let images = 0;
  let remote = 0;
  let opaque = 0;
  const files: InlineFile[] = [];
  const visit = (message: Message) => {
    texts.push(message.role);
    if (message.name) texts.push(message.name);
    if (typeof message.content === 'string') texts.push(message.content);
    else if (Array.isArray(message.content)) {
      for (const element of message.content as unknown[]) {
        if (!element || typeof element !== 'object') {
          opaque += utf8Bytes(JSON.stringify(element) ?? '');
          continue;
        }
        const part = element as Record<string, unknown>;
        const text = partText(part);
        if (text !== null) texts.push(text);
        else if (isImagePart(part)) images += 1;
        else if (part.type === 'file' && !(part as { file?: { file_data?: unknown } }).file?.file_data) remote += 1;
        else {
          // A file sent inline (a data URL): its bytes, and its pages if it is a PDF.
          const data = part.type === 'file' ? (part as { file?: { file_data?: unknown } }).file?.file_data : undefined;
          if (typeof data === 'string') files.push(inlineFileOf(data));
          opaque += utf8Bytes(JSON.stringify(part));
        }
      }
    } else if (message.content !== undefined && message.content !== null) opaque += utf8Bytes(JSON.stringify(message.content) ?? '');
    const toolCalls = (message as { tool_calls?: unknown }).tool_calls;
    if (toolCalls) texts.push(JSON.stringify(toolCalls));
  };
  request.messages.forEach(visit);
  if (request.tools) texts.push(JSON.stringify(request.tools));
  const responseFormat = (request as { response_format?: unknown }).response_format;
  if (responseFormat) texts.push(JSON.stringify(responseFormat));
  return { texts, images, remote, files, opaqueBytes: opaque };
}

const framing = (request: ChatCompletionRequest) => request.messages.length * messageOverhead + replyPriming;

/** A strict upper bound on the request's input tokens, with no tokenizer. */
export function boundChatInputTokens(request: ChatCompletionRequest): number {
  return boundPromptTokens(promptPieces(request), framing(request));
}

/** The prompt's tokens by the tokenizer, for when the provider reported no usage. */
export function countChatInputTokens(request: ChatCompletionRequest): Promise<{ tokens: number; estimated: boolean }> {
  return countPromptTokens(promptPieces(request), framing(request));
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

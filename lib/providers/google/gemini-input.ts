import { utf8Bytes } from '../../metering/count-tokens.ts';
import { boundPromptTokens, countPromptTokens, type PromptPieces } from '../../metering/prompt-pieces.ts';
import type { GenerateContentRequest } from './gemini-wire.ts';

type Part = GenerateContentRequest['contents'][number]['parts'][number];

function promptPieces(request: GenerateContentRequest): PromptPieces {
  const texts: string[] = [];
  let images = 0;
  let remote = 0;
  let opaque = 0;
  const visit = (part: Part) => {
    if (typeof part.text === 'string') texts.push(part.text);
    else if (part.inlineData) {
      if (part.inlineData.mimeType?.startsWith('image/')) images += 1;
      else opaque += utf8Bytes(part.inlineData.data ?? '');
    } else if (part.functionCall) texts.push(part.functionCall.name ?? '', JSON.stringify(part.functionCall.args ?? {}));
    else if (part.functionResponse) texts.push(part.functionResponse.name ?? '', JSON.stringify(part.functionResponse.response ?? {}));
    else opaque += utf8Bytes(JSON.stringify(part));
  };
  for (const part of request.systemInstruction?.parts ?? []) visit(part);
  for (const content of request.contents) for (const part of content.parts) visit(part);
  if (request.tools) texts.push(JSON.stringify(request.tools));
  return { texts, images, remote, opaqueBytes: opaque };
}

const turnOverhead = 8;

const framing = (request: GenerateContentRequest) => (request.contents.length + 1) * turnOverhead;

/** A strict upper bound on the input tokens (UTF-8 bytes of the text; a fixed bound per image). */
export function boundGeminiInputTokens(request: GenerateContentRequest): number {
  return boundPromptTokens(promptPieces(request), framing(request));
}

export function countGeminiInputTokens(request: GenerateContentRequest): Promise<{ tokens: number; estimated: boolean }> {
  return countPromptTokens(promptPieces(request), framing(request));
}

import { utf8Bytes } from '../../metering/count-tokens.ts';
import { boundPromptTokens, countPromptTokens, type InlineFile, type PromptPieces } from '../../metering/prompt-pieces.ts';
import type { GenerateContentRequest } from './gemini-wire.ts';

type Part = GenerateContentRequest['contents'][number]['parts'][number];
type Media = Pick<Part, 'inlineData' | 'fileData'>;

function promptPieces(request: GenerateContentRequest): PromptPieces {
  const texts: string[] = [];
  let images = 0;
  let remote = 0;
  let opaque = 0;
  const files: InlineFile[] = [];
  // Each field a part holds is counted, so a part that holds more than one is never held short.
  const visitMedia = (media: Media): boolean => {
    if (media.inlineData) {
      if (media.inlineData.mimeType?.startsWith('image/')) images += 1;
      else {
        // Its bytes, and its pages if it is a PDF.
        if (typeof media.inlineData.data === 'string') files.push({ data: media.inlineData.data, mediaType: media.inlineData.mimeType?.toLowerCase() });
        opaque += utf8Bytes(media.inlineData.data ?? '');
      }
    }
    // Google fetches a fileData URI itself (a Files API upload, a YouTube video): its size is unknown here.
    if (media.fileData) remote += 1;
    return Boolean(media.inlineData || media.fileData);
  };
  const visit = (part: Part) => {
    let known = visitMedia(part);
    if (typeof part.text === 'string') {
      texts.push(part.text);
      known = true;
    }
    if (part.functionCall) {
      texts.push(part.functionCall.name ?? '', JSON.stringify(part.functionCall.args ?? {}));
      known = true;
    }
    if (part.functionResponse) {
      texts.push(part.functionResponse.name ?? '', JSON.stringify(part.functionResponse.response ?? {}));
      for (const media of part.functionResponse.parts ?? []) if (!visitMedia(media)) opaque += utf8Bytes(JSON.stringify(media));
      known = true;
    }
    if (!known) opaque += utf8Bytes(JSON.stringify(part));
  };
  for (const part of request.systemInstruction?.parts ?? []) visit(part);
  for (const content of request.contents) for (const part of content.parts) visit(part);
  if (request.tools) texts.push(JSON.stringify(request.tools));
  // Content cached at Google (cachedContents/…) is added to the prompt there, at a size unknown here.
  if (request.cachedContent) remote += 1;
  // A generation resumed by its continuation token: Google puts the output generated so far
  // back in the prompt (billed as input), and only the opaque token says what it is.
  const continuation = (request as { continuationToken?: unknown }).continuationToken;
  if (continuation !== undefined && continuation !== null && continuation !== '') remote += 1;
  return { texts, images, remote, files, opaqueBytes: opaque };
}

const turnOverhead = 8;

const framing = (request: GenerateContentRequest) => (request.contents.length + 1) * turnOverhead;

/** A strict upper bound on the input tokens (UTF-8 bytes of the text; a fixed bound per image and per content of unknown size). */
export function boundGeminiInputTokens(request: GenerateContentRequest): number {
  return boundPromptTokens(promptPieces(request), framing(request));
}

export function countGeminiInputTokens(request: GenerateContentRequest): Promise<{ tokens: number; estimated: boolean }> {
  return countPromptTokens(promptPieces(request), framing(request));
}

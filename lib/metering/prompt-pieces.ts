import { countTokens, utf8Bytes } from './count-tokens.ts';

/**
 * Upper bound of an image's input tokens, for holds only. The dearest OpenAI
 * formula (gpt-4o-mini, high detail, 2048×768: 2833 + 8 × 5667 tokens) stays under it.
 */
export const imageTokenBound = 50_000;

/** Tokens counted for an image when no provider usage exists (a 1024×1024 high-detail image on gpt-4o). */
export const imageTokenEstimate = 765;

/** A prompt taken apart: its text, its images (never read as text) and the bytes of parts of other kinds. */
export interface PromptPieces {
  texts: string[];
  images: number;
  opaqueBytes: number;
}

/** A strict upper bound on the prompt's tokens with no tokenizer: UTF-8 bytes of the text, a fixed bound per image. */
export function boundPromptTokens(pieces: PromptPieces, framingTokens: number): number {
  let bytes = pieces.opaqueBytes;
  for (const text of pieces.texts) bytes += utf8Bytes(text);
  return bytes + pieces.images * imageTokenBound + framingTokens;
}

/** The prompt's tokens by the tokenizer; `estimated` when images or other parts had to be guessed. */
export async function countPromptTokens(pieces: PromptPieces, framingTokens: number): Promise<{ tokens: number; estimated: boolean }> {
  const tokens = (await countTokens(pieces.texts)) + pieces.images * imageTokenEstimate + pieces.opaqueBytes + framingTokens;
  return { tokens, estimated: pieces.images > 0 || pieces.opaqueBytes > 0 };
}

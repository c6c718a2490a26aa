import { countTokens, utf8Bytes } from './count-tokens.ts';

/**
 * Upper bound of an image's input tokens, for holds only. The dearest OpenAI
 * formula (gpt-4o-mini, high detail, 2048×768: 2833 + 8 × 5667 tokens) stays under it.
 */
export const imageTokenBound = 50_000;

/** Tokens counted for an image when no provider usage exists (a 1024×1024 high-detail image on gpt-4o). */
export const imageTokenEstimate = 765;

/**
 * Upper bound, for holds, of content the upstream fetches or keeps itself (a
 * file id, a document or video URL, a cache it holds by name, a stored
 * response or item): its size is unknown here, and a long PDF or video can
 * fill a context window. Held once however many pieces a prompt has: together
 * they fill at most the context window too, the largest of the models served
 * being 1,048,576 tokens (Gemini 2.5 Pro; GPT-4.1 1,047,576), and a
 * conversation that sends back each earlier answer by reference would
 * otherwise hold a million tokens more with every turn.
 */
export const remoteContentTokenBound = 1_048_576;

/** A prompt taken apart: its text, its images (never read as text), remote content, and the bytes of parts of other kinds. */
export interface PromptPieces {
  texts: string[];
  images: number;
  remote?: number;
  opaqueBytes: number;
}

/** A strict upper bound on the prompt's tokens with no tokenizer: UTF-8 bytes of the text, a fixed bound per image. */
export function boundPromptTokens(pieces: PromptPieces, framingTokens: number): number {
  let bytes = pieces.opaqueBytes;
  for (const text of pieces.texts) bytes += utf8Bytes(text);
  return bytes + pieces.images * imageTokenBound + Math.min(pieces.remote ?? 0, 1) * remoteContentTokenBound + framingTokens;
}

/** The prompt's tokens by the tokenizer; `estimated` when images or other parts had to be guessed. */
export async function countPromptTokens(pieces: PromptPieces, framingTokens: number): Promise<{ tokens: number; estimated: boolean }> {
  const tokens = (await countTokens(pieces.texts)) + pieces.images * imageTokenEstimate + pieces.opaqueBytes + framingTokens;
  // Remote content cannot be counted here: it adds nothing, and the count is marked an estimate.
  return { tokens, estimated: pieces.images > 0 || pieces.opaqueBytes > 0 || (pieces.remote ?? 0) > 0 };
}

import type { Tiktoken } from 'js-tiktoken/lite';

let encoder: Promise<Tiktoken> | undefined;

/**
 * Counts tokens with js-tiktoken's cl100k_base, loaded on first use only: the
 * count is a fallback for when a provider did not report usage. cl100k's ranks
 * fit the 1 MB edge bundle; o200k's alone are over it (about 1.1 MB gzip).
 */
export async function countTokens(texts: readonly string[]): Promise<number> {
  encoder ??= Promise.all([import('js-tiktoken/lite'), import('js-tiktoken/ranks/cl100k_base')]).then(
    ([{ Tiktoken }, ranks]) => new Tiktoken(ranks.default),
  );
  const tiktoken = await encoder;
  let total = 0;
  // Special-token strings in user text ("<|endoftext|>") are counted as the plain text they are.
  for (const text of texts) if (text) total += tiktoken.encode(text, [], []).length;
  return total;
}

/** UTF-8 bytes: a strict upper bound on the BPE tokens of a text, at no tokenizer cost. */
export function utf8Bytes(text: string): number {
  let bytes = 0;
  for (let index = 0; index < text.length; index++) {
    const code = text.charCodeAt(index);
    if (code < 0x80) bytes += 1;
    else if (code < 0x800) bytes += 2;
    else if (code >= 0xd800 && code <= 0xdbff) {
      bytes += 4;
      index++;
    } else bytes += 3;
  }
  return bytes;
}

import { getEncoding } from 'js-tiktoken';
import { describe, expect, it } from 'vitest';
import { countTokens, utf8Bytes } from '../../../lib/metering/count-tokens.ts';

describe('countTokens', () => {
  it('counts with cl100k_base, special-token strings in user text as plain text', async () => {
    const encoding = getEncoding('cl100k_base');
    expect(await countTokens(['Hello, world!', ''])).toBe(encoding.encode('Hello, world!').length);
    const sneaky = 'end here <|endoftext|> and go on';
    expect(await countTokens([sneaky])).toBe(encoding.encode(sneaky, [], []).length);
  });
});

describe('utf8Bytes', () => {
  it('counts UTF-8 bytes, surrogate pairs as four', () => {
    for (const text of ['abc', 'Grüße', '東京', '🌍', 'a🌍b']) expect(utf8Bytes(text)).toBe(new TextEncoder().encode(text).length);
  });
});

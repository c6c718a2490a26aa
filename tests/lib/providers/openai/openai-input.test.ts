import { getEncoding } from 'js-tiktoken';
import { describe, expect, it } from 'vitest';
import { imageTokenBound, imageTokenEstimate } from '../../../../lib/metering/prompt-pieces.ts';
import { boundChatInputTokens, countChatInputTokens } from '../../../../lib/providers/openai/openai-input.ts';

const encoding = getEncoding('o200k_base');

describe('boundChatInputTokens', () => {
  it('is at least the real token count for text in any script', () => {
    const texts = ['Hello, world!', 'Grüße aus München — naïve façade', '東京は日本の首都です。', '🌍🚀✨ emoji run', 'const x = () => ({ a: 1 });'];
    for (const text of texts) {
      const request = { model: 'm', messages: [{ role: 'user', content: text }] };
      expect(boundChatInputTokens(request)).toBeGreaterThanOrEqual(encoding.encode(text).length + 3 + 3);
    }
  });

  it('bounds an image by a fixed amount and never reads its base64 as text', () => {
    const image = `data:image/png;base64,${'A'.repeat(400_000)}`;
    const request = { model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'What is this?' }, { type: 'image_url', image_url: { url: image } }] }] };
    const bound = boundChatInputTokens(request);
    expect(bound).toBeGreaterThanOrEqual(imageTokenBound);
    expect(bound).toBeLessThan(imageTokenBound + 100);
  });
});

describe('countChatInputTokens', () => {
  it('counts an image as a fixed estimate, marked as such', async () => {
    const request = { model: 'm', messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: `data:image/png;base64,${'A'.repeat(100_000)}` } }] }] };
    const counted = await countChatInputTokens(request);
    expect(counted.estimated).toBe(true);
    expect(counted.tokens).toBeLessThan(imageTokenEstimate + 20);
  });
});

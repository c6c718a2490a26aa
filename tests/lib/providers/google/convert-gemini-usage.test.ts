import { describe, expect, it } from 'vitest';
import { convertGeminiUsage, geminiInputUsage } from '../../../../lib/providers/google/convert-gemini-usage.ts';

describe('convertGeminiUsage', () => {
  it.each([
    ['plain', { promptTokenCount: 95, candidatesTokenCount: 7 }, { input: 95, cached_input: 0, image: 0, audio: 0, output: 7, reasoning: 0 }],
    [
      'cached content comes out of the prompt; thoughts are billed besides the candidates',
      { promptTokenCount: 1200, cachedContentTokenCount: 1000, candidatesTokenCount: 12, thoughtsTokenCount: 140 },
      { input: 200, cached_input: 1000, image: 0, audio: 0, output: 12, reasoning: 140 },
    ],
    [
      'image and audio by modality, less their cached part; tool-use prompt tokens are input',
      {
        promptTokenCount: 2100, cachedContentTokenCount: 600, candidatesTokenCount: 6, toolUsePromptTokenCount: 50,
        promptTokensDetails: [{ modality: 'TEXT', tokenCount: 300 }, { modality: 'IMAGE', tokenCount: 1290 }, { modality: 'AUDIO', tokenCount: 510 }],
        cacheTokensDetails: [{ modality: 'TEXT', tokenCount: 100 }, { modality: 'IMAGE', tokenCount: 500 }],
      },
      { input: 250, cached_input: 600, image: 790, audio: 510, output: 6, reasoning: 0 },
    ],
  ])('%s', (_name, usage, expected) => {
    const buckets = convertGeminiUsage(usage);
    expect(buckets).toEqual(expected);
  });
});

describe('geminiInputUsage (a running usageMetadata, before the final one)', () => {
  it('keeps the prompt and the thoughts so far (cumulative counts Google bills), leaves the candidates to the tokenizer', () => {
    const running = { promptTokenCount: 1200, cachedContentTokenCount: 1000, candidatesTokenCount: 1, thoughtsTokenCount: 140 };
    expect(geminiInputUsage(running)).toEqual({ input: 200, cached_input: 1000, image: 0, audio: 0, reasoning: 140 });
  });
});

import { describe, expect, it } from 'vitest';
import { convertOpenAIUsage } from '../../../../lib/providers/openai/convert-openai-usage.ts';

describe('convertOpenAIUsage', () => {
  it.each([
    ['plain', { prompt_tokens: 19, completion_tokens: 9 }, { input: 19, cached_input: 0, cache_write: 0, output: 9, reasoning: 0, audio: 0 }],
    [
      'cached tokens come out of the prompt, reasoning out of the completion',
      { prompt_tokens: 2056, completion_tokens: 1234, prompt_tokens_details: { cached_tokens: 1920 }, completion_tokens_details: { reasoning_tokens: 1216 } },
      { input: 136, cached_input: 1920, cache_write: 0, output: 18, reasoning: 1216, audio: 0 },
    ],
    [
      'audio on both sides goes to the audio bucket',
      { prompt_tokens: 100, completion_tokens: 50, prompt_tokens_details: { audio_tokens: 60 }, completion_tokens_details: { audio_tokens: 30 } },
      { input: 40, cached_input: 0, cache_write: 0, output: 20, reasoning: 0, audio: 90 },
    ],
    [
      'inconsistent counts never go negative',
      { prompt_tokens: 10, completion_tokens: 5, prompt_tokens_details: { cached_tokens: 50 }, completion_tokens_details: { reasoning_tokens: 9 } },
      { input: 0, cached_input: 50, cache_write: 0, output: 0, reasoning: 9, audio: 0 },
    ],
    ['missing fields are zero', {}, { input: 0, cached_input: 0, cache_write: 0, output: 0, reasoning: 0, audio: 0 }],
  ])('%s', (_name, usage, expected) => {
    expect(convertOpenAIUsage(usage)).toEqual(expected);
  });
});

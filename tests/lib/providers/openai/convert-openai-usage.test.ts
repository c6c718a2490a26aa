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
      { prompt_tokens: 10, completion_tokens: 5, prompt_tokens_details: { cached_tokens: 50 } },
      { input: 0, cached_input: 50, cache_write: 0, output: 5, reasoning: 0, audio: 0 },
    ],
    [
      // OpenAI: total = prompt + completion, reasoning inside the completion.
      'a total that names no more than prompt and completion changes nothing',
      { prompt_tokens: 100, completion_tokens: 40, total_tokens: 140, completion_tokens_details: { reasoning_tokens: 30 } },
      { input: 100, cached_input: 0, cache_write: 0, output: 10, reasoning: 30, audio: 0 },
    ],
    [
      // xAI: prompt 10,120 (128 cached) + completion 1,499 + reasoning 2,809 = total 14,428.
      'reasoning beside the completion, as the total tells: the completion is all output',
      { prompt_tokens: 10120, completion_tokens: 1499, total_tokens: 14428, prompt_tokens_details: { cached_tokens: 128 }, completion_tokens_details: { reasoning_tokens: 2809 } },
      { input: 9992, cached_input: 128, cache_write: 0, output: 1499, reasoning: 2809, audio: 0 },
    ],
    [
      'more reasoning than completion: beside it, even with no total',
      { prompt_tokens: 10, completion_tokens: 5, completion_tokens_details: { reasoning_tokens: 9 } },
      { input: 10, cached_input: 0, cache_write: 0, output: 5, reasoning: 9, audio: 0 },
    ],
    [
      // Gemini's OpenAI-compatible endpoint: thinking is counted only in the total (758 + 102 + 865 = 1,725).
      'what the total counts beyond the parts it names is reasoning',
      { prompt_tokens: 758, completion_tokens: 102, total_tokens: 1725 },
      { input: 758, cached_input: 0, cache_write: 0, output: 102, reasoning: 865, audio: 0 },
    ],
    ['missing fields are zero', {}, { input: 0, cached_input: 0, cache_write: 0, output: 0, reasoning: 0, audio: 0 }],
  ])('%s', (_name, usage, expected) => {
    expect(convertOpenAIUsage(usage)).toEqual(expected);
  });
});

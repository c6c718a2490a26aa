import { describe, expect, it } from 'vitest';
import { createGeminiStreamReader } from '../../../../lib/providers/google/gemini-stream-reader.ts';
import { readFixture, splitEvents } from '../../../support/fake-upstream.ts';

describe('createGeminiStreamReader, a stream cut before its final usage', () => {
  it('keeps the thoughts the running usageMetadata reported, with the prompt', () => {
    const reader = createGeminiStreamReader();
    reader.read(splitEvents(readFixture('generate-cached-thoughts.chunks.txt', 'google'))[0]!);
    expect(reader.usage()).toBeNull();
    expect(reader.inputUsage()).toEqual({ input: 200, cached_input: 1000, image: 0, audio: 0, reasoning: 140 });
    expect(reader.delivered()).toEqual(['The answer']);
  });

  it('thought text a reported thoughtsTokenCount counts is not delivered output as well; thought text after it is', () => {
    const reader = createGeminiStreamReader();
    reader.read(splitEvents(readFixture('generate-thought-call.chunks.txt', 'google'))[0]!);
    expect(reader.inputUsage()).toEqual({ input: 80, cached_input: 0, image: 0, audio: 0, reasoning: 45 });
    expect(reader.delivered()).toEqual([]);
    const uncounted = { candidates: [{ content: { role: 'model', parts: [{ text: 'Then I check the units.', thought: true }] } }] };
    reader.read(`data: ${JSON.stringify(uncounted)}\n\n`);
    expect(reader.delivered()).toEqual(['Then I check the units.']);
  });
});

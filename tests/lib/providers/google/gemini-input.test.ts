import { describe, expect, it } from 'vitest';
import { imageTokenBound, remoteContentTokenBound } from '../../../../lib/metering/prompt-pieces.ts';
import { boundGeminiInputTokens } from '../../../../lib/providers/google/gemini-input.ts';
import { generateContentRequestSchema } from '../../../../lib/providers/google/gemini-wire.ts';

const bound = (body: Record<string, unknown>) => boundGeminiInputTokens(generateContentRequestSchema.parse(body));

// One turn: (1 + 1) × 8 tokens of framing.
const framing = 16;

describe('boundGeminiInputTokens', () => {
  it('holds a fileData URI (Files API, YouTube) as content of unknown size, in either spelling', () => {
    const uri = 'https://www.youtube.com/watch?v=9hE5-98ZeCg';
    expect(bound({ contents: [{ parts: [{ fileData: { mimeType: 'video/mp4', fileUri: uri } }, { text: 'Summarize.' }] }] })).toBe(remoteContentTokenBound + 10 + framing);
    expect(bound({ contents: [{ parts: [{ file_data: { mime_type: 'video/mp4', file_uri: uri } }, { text: 'Summarize.' }] }] })).toBe(remoteContentTokenBound + 10 + framing);
  });

  it('holds cached content (kept at Google, added to the prompt there) as content of unknown size, in either spelling', () => {
    expect(bound({ cachedContent: 'cachedContents/abc123', contents: [{ parts: [{ text: 'Summarize.' }] }] })).toBe(remoteContentTokenBound + 10 + framing);
    expect(bound({ cached_content: 'cachedContents/abc123', contents: [{ parts: [{ text: 'Summarize.' }] }] })).toBe(remoteContentTokenBound + 10 + framing);
  });

  it('counts the system instruction and inline images written in snake_case', () => {
    const body = {
      system_instruction: { parts: [{ text: 'Be brief.' }] },
      contents: [{ parts: [{ text: 'What is this?' }, { inline_data: { mime_type: 'image/png', data: 'iVBORw0KGgo=' } }] }],
    };
    expect(bound(body)).toBe(9 + 13 + imageTokenBound + framing);
  });

  it('counts the media a function returns (functionResponse.parts) like a part\'s', () => {
    const body = {
      contents: [
        {
          parts: [
            {
              functionResponse: {
                name: 'shot',
                response: {},
                parts: [{ inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } }, { file_data: { file_uri: 'https://generativelanguage.googleapis.com/v1beta/files/abc' } }],
              },
            },
          ],
        },
      ],
    };
    expect(bound(body)).toBe(4 + 2 + imageTokenBound + remoteContentTokenBound + framing);
  });
});

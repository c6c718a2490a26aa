import { describe, expect, it } from 'vitest';
import { camelCaseGeminiFields } from '../../../../lib/providers/google/camel-case-gemini-fields.ts';

describe('camelCaseGeminiFields', () => {
  it('renames the field names billing reads, at every level it reads, and keeps camelCase and unknown fields as sent', () => {
    const read = camelCaseGeminiFields({
      system_instruction: { parts: [{ text: 'Be brief.' }] },
      contents: [
        {
          role: 'user',
          parts: [
            { text: 'What is this?' },
            { inline_data: { mime_type: 'image/png', data: 'iVBORw0KGgo=' } },
            { file_data: { mime_type: 'video/mp4', file_uri: 'https://www.youtube.com/watch?v=9hE5-98ZeCg' }, video_metadata: { start_offset: '10s' } },
          ],
        },
      ],
      generation_config: { max_output_tokens: 100, candidate_count: 2, response_modalities: ['TEXT'], thinking_config: { thinking_budget: 0 } },
      tools: [{ google_search: {} }, { code_execution: {} }],
      cached_content: 'cachedContents/abc123',
      safety_settings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }],
      toolConfig: { functionCallingConfig: { mode: 'AUTO' } },
    });
    expect(read).toEqual({
      body: {
        systemInstruction: { parts: [{ text: 'Be brief.' }] },
        contents: [
          {
            role: 'user',
            parts: [
              { text: 'What is this?' },
              { inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } },
              // Inside fields billing does not read, the names go to Google as written: it reads either spelling.
              { fileData: { mimeType: 'video/mp4', fileUri: 'https://www.youtube.com/watch?v=9hE5-98ZeCg' }, videoMetadata: { start_offset: '10s' } },
            ],
          },
        ],
        generationConfig: { maxOutputTokens: 100, candidateCount: 2, responseModalities: ['TEXT'], thinkingConfig: { thinking_budget: 0 } },
        tools: [{ googleSearch: {} }, { codeExecution: {} }],
        cachedContent: 'cachedContents/abc123',
        safetySettings: [{ category: 'HARM_CATEGORY_HARASSMENT', threshold: 'BLOCK_NONE' }],
        toolConfig: { functionCallingConfig: { mode: 'AUTO' } },
      },
    });
  });

  it('never renames user data: function parameters, arguments and responses, response schemas', () => {
    const parameters = { type: 'OBJECT', properties: { city_name: { type: 'STRING' }, unit_system: { type: 'STRING', enum: ['metric_si'] } }, required: ['city_name'] };
    const schema = { type: 'OBJECT', properties: { first_name: { type: 'STRING' } }, property_ordering: ['first_name'] };
    const read = camelCaseGeminiFields({
      contents: [
        { role: 'user', parts: [{ text: 'Weather?' }] },
        { role: 'model', parts: [{ function_call: { name: 'get_weather', args: { city_name: 'Paris', unit_system: 'metric_si' } } }] },
        {
          role: 'user',
          parts: [
            {
              function_response: {
                name: 'get_weather',
                response: { temp_c: 21, wind_speed: { max_kmh: 30 } },
                parts: [{ inline_data: { mime_type: 'image/png', data: 'iVBORw0KGgo=' } }],
                will_continue: false,
              },
            },
          ],
        },
      ],
      tools: [{ function_declarations: [{ name: 'get_weather', parameters, parameters_json_schema: { properties: { city_name: {} } } }] }],
      generation_config: { response_mime_type: 'application/json', response_schema: schema, response_json_schema: { properties: { last_name: {} } } },
    });
    expect(read).toEqual({
      body: {
        contents: [
          { role: 'user', parts: [{ text: 'Weather?' }] },
          { role: 'model', parts: [{ functionCall: { name: 'get_weather', args: { city_name: 'Paris', unit_system: 'metric_si' } } }] },
          {
            role: 'user',
            parts: [
              {
                functionResponse: {
                  name: 'get_weather',
                  response: { temp_c: 21, wind_speed: { max_kmh: 30 } },
                  parts: [{ inlineData: { mimeType: 'image/png', data: 'iVBORw0KGgo=' } }],
                  willContinue: false,
                },
              },
            ],
          },
        ],
        tools: [{ functionDeclarations: [{ name: 'get_weather', parameters, parameters_json_schema: { properties: { city_name: {} } } }] }],
        generationConfig: { responseMimeType: 'application/json', responseSchema: schema, responseJsonSchema: { properties: { last_name: {} } } },
      },
    });
  });

  it.each([
    [{ generation_config: { temperature: 1 }, generationConfig: { maxOutputTokens: 5 } }, ['generationConfig'], ['generation_config', 'generationConfig']],
    [{ generationConfig: { maxOutputTokens: 5, max_output_tokens: 6 } }, ['generationConfig', 'maxOutputTokens'], ['maxOutputTokens', 'max_output_tokens']],
    [
      { contents: [{ parts: [{ text: 'x' }, { inline_data: { data: 'AA==' }, inlineData: { data: 'AA==' } }] }] },
      ['contents', 0, 'parts', 1, 'inlineData'],
      ['inline_data', 'inlineData'],
    ],
    [{ contents: [{ parts: [{ fileData: { file_uri: 'a', fileUri: 'b' } }] }] }, ['contents', 0, 'parts', 0, 'fileData', 'fileUri'], ['file_uri', 'fileUri']],
    [{ tools: [{ google_search: {}, googleSearch: {} }] }, ['tools', 0, 'googleSearch'], ['google_search', 'googleSearch']],
  ])('a field given in both spellings is reported, with where it is: %j', (body, path, names) => {
    expect(camelCaseGeminiFields(body)).toEqual({ givenTwice: expect.objectContaining({ path, names }) });
  });

  it('a field named like an object\'s own property stays a field', () => {
    const read = camelCaseGeminiFields(JSON.parse('{"contents":[{"parts":[{"text":"x"}]}],"__proto__":{"polluted":true},"constructor":{"max_output_tokens":1}}'));
    expect('body' in read && Object.hasOwn(read.body, '__proto__')).toBe(true);
    expect('body' in read && read.body.constructor).toEqual({ max_output_tokens: 1 });
    expect(({} as Record<string, unknown>).polluted).toBeUndefined();
  });
});

import { describe, expect, it } from 'vitest';
import { remoteContentTokenBound } from '../../../../lib/metering/prompt-pieces.ts';
import { boundResponsesInputTokens } from '../../../../lib/providers/openai/responses-input.ts';
import { responsesRequestSchema } from '../../../../lib/providers/openai/responses-wire.ts';

const bound = (body: Record<string, unknown>) => boundResponsesInputTokens(responsesRequestSchema.parse({ model: 'm', ...body }));
const bytes = (value: unknown) => Buffer.byteLength(JSON.stringify(value));

// Each input item: 3 tokens of framing, and 3 for the request.
const framing = (items: number) => items * 3 + 3;

describe('boundResponsesInputTokens', () => {
  it('holds content stored upstream once however many pieces refer to it: together they fill at most a context window', () => {
    const references = Array.from({ length: 8 }, (_, index) => ({ type: 'item_reference', id: `msg_${index}` }));
    const input = [{ role: 'user', content: 'Hi' }, ...references];
    expect(bound({ input })).toBe(4 + 2 + remoteContentTokenBound + framing(input.length));
    // A continued response and a stored item: still one context window.
    expect(bound({ previous_response_id: 'resp_1', input: references.slice(0, 1) })).toBe(remoteContentTokenBound + framing(1));
    // Nothing stored upstream: no such bound.
    expect(bound({ input: 'Hello' })).toBe(5 + framing(1));
    // At least the largest context window served, which stored content can fill: GPT-4.1's 1,047,576, Gemini 2.5 Pro's 1,048,576.
    expect(bound({ previous_response_id: 'resp_1', input: references })).toBeGreaterThanOrEqual(1_048_576);
  });

  it('holds a reasoning item sent back by its id alone as stored content (the stored reasoning goes into the prompt), one with its encrypted content by its bytes', () => {
    const byId = { type: 'reasoning', id: 'rs_1', summary: [] };
    expect(bound({ input: [byId] })).toBe(bytes(byId) + remoteContentTokenBound + framing(1));
    const carried = { type: 'reasoning', id: 'rs_1', summary: [], encrypted_content: 'gAAAAB…' };
    expect(bound({ input: [carried] })).toBe(bytes(carried) + framing(1));
  });
});

import { describe, expect, it } from 'vitest';
import { imageTokenBound, remoteContentTokenBound } from '../../../../lib/metering/prompt-pieces.ts';
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

  it('holds a tool\'s output of content parts as a message\'s content: text by its bytes, images at the image bound, files by id or URL as remote content, inline files by their bytes', () => {
    const call = { type: 'function_call', call_id: 'call_1', name: 'look', arguments: '{}' };
    const output = (parts: unknown) => ({ type: 'function_call_output', call_id: 'call_1', output: parts });
    // What frames the output: the item's other fields, by their JSON.
    const frame = bytes({ type: 'function_call_output', call_id: 'call_1' });
    const input = (item: unknown) => [call, item];
    const image = { type: 'input_image', image_url: 'https://example.com/chart.png', detail: 'high' };
    expect(bound({ input: input(output([image])) })).toBe(bytes(call) + frame + imageTokenBound + framing(2));
    expect(bound({ input: input(output([{ type: 'input_text', text: 'Chart:' }, image, { ...image, image_url: 'data:image/png;base64,iVBORw0KGgo=' }])) }))
      .toBe(bytes(call) + frame + 6 + 2 * imageTokenBound + framing(2));
    // Files by id or URL, and images by id, are fetched upstream: held once, as any content of unknown size.
    const remote = [{ type: 'input_file', file_id: 'file-1' }, { type: 'input_file', file_url: 'https://example.com/report.pdf' }, { type: 'input_image', file_id: 'file-2' }];
    expect(bound({ input: input(output(remote)) })).toBe(bytes(call) + frame + remoteContentTokenBound + framing(2));
    const inline = { type: 'input_file', filename: 'notes.txt', file_data: 'data:text/plain;base64,aGVsbG8=' };
    expect(bound({ input: input(output([inline])) })).toBe(bytes(call) + frame + bytes(inline) + framing(2));
    // A custom tool's output alike; a computer call's screenshot is an image, or remote content by its file id.
    const custom = { type: 'custom_tool_call_output', call_id: 'call_1', output: [image] };
    expect(bound({ input: [custom] })).toBe(bytes({ type: 'custom_tool_call_output', call_id: 'call_1' }) + imageTokenBound + framing(1));
    const screenshot = (shot: Record<string, unknown>) => ({ type: 'computer_call_output', call_id: 'call_1', output: { type: 'computer_screenshot', ...shot } });
    const screenshotFrame = bytes({ type: 'computer_call_output', call_id: 'call_1' });
    expect(bound({ input: [screenshot({ image_url: 'data:image/png;base64,iVBORw0KGgo=' })] })).toBe(screenshotFrame + imageTokenBound + framing(1));
    expect(bound({ input: [screenshot({ file_id: 'file-3' })] })).toBe(screenshotFrame + remoteContentTokenBound + framing(1));
    // A string output by its bytes, as before.
    const text = output('18°C, clear');
    expect(bound({ input: [text] })).toBe(bytes(text) + framing(1));
  });
});

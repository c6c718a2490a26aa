import { describe, expect, it } from 'vitest';
import { convertAnthropicUsage, mergeAnthropicUsage } from '../../../../lib/providers/anthropic/convert-anthropic-usage.ts';
import { createAnthropicStreamReader } from '../../../../lib/providers/anthropic/anthropic-stream-meter.ts';

describe('convertAnthropicUsage', () => {
  it.each([
    ['plain', { input_tokens: 25, output_tokens: 14 }, { input: 25, cached_input: 0, cache_write: 0, cache_write_1h: 0, output: 14, reasoning: 0 }],
    [
      'cache writes split by TTL; reads apart; input_tokens already excludes both',
      { input_tokens: 25, output_tokens: 14, cache_read_input_tokens: 3000, cache_creation_input_tokens: 1200, cache_creation: { ephemeral_5m_input_tokens: 1000, ephemeral_1h_input_tokens: 200 } },
      { input: 25, cached_input: 3000, cache_write: 1000, cache_write_1h: 200, output: 14, reasoning: 0 },
    ],
    [
      'without the TTL breakdown, every write is a 5-minute write (counted once)',
      { input_tokens: 5, output_tokens: 1, cache_creation_input_tokens: 700 },
      { input: 5, cached_input: 0, cache_write: 700, cache_write_1h: 0, output: 1, reasoning: 0 },
    ],
    [
      'thinking tokens leave the output bucket for the reasoning bucket',
      { input_tokens: 40, output_tokens: 310, output_tokens_details: { thinking_tokens: 290 } },
      { input: 40, cached_input: 0, cache_write: 0, cache_write_1h: 0, output: 20, reasoning: 290 },
    ],
    [
      // A stream's message_delta: cumulative writes (2,600) beside message_start's split (2,000 at 5 minutes).
      'writes beyond a stale TTL split are 5-minute writes',
      { input_tokens: 5, output_tokens: 1, cache_creation_input_tokens: 2600, cache_creation: { ephemeral_5m_input_tokens: 2000, ephemeral_1h_input_tokens: 0 } },
      { input: 5, cached_input: 0, cache_write: 2600, cache_write_1h: 0, output: 1, reasoning: 0 },
    ],
    [
      // Server-side compaction: the summarizing pass (180,000 in, 3,500 out) is billed, and not in the top-level counts.
      'a compaction iteration is added to the final pass; the iteration that is the final pass is not',
      {
        input_tokens: 23000,
        output_tokens: 1000,
        iterations: [
          { type: 'compaction', input_tokens: 180000, output_tokens: 3500, cache_read_input_tokens: 100, cache_creation_input_tokens: 0 },
          { type: 'message', input_tokens: 23000, output_tokens: 1000, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 },
        ],
      },
      { input: 203000, cached_input: 100, cache_write: 0, cache_write_1h: 0, output: 4500, reasoning: 0 },
    ],
    [
      'a fallback model\'s pass in place of the final one is not counted twice',
      {
        input_tokens: 500,
        output_tokens: 40,
        iterations: [
          { type: 'message', input_tokens: 480, output_tokens: 2, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 },
          { type: 'fallback_message', input_tokens: 500, output_tokens: 40, cache_read_input_tokens: 0, cache_creation_input_tokens: 0 },
        ],
      },
      { input: 500, cached_input: 0, cache_write: 0, cache_write_1h: 0, output: 40, reasoning: 0 },
    ],
  ])('%s', (_name, usage, expected) => {
    expect(convertAnthropicUsage(usage)).toEqual(expected);
  });
});

describe('mergeAnthropicUsage', () => {
  it('takes message_delta\'s cumulative counts in place of message_start\'s, never adding them', () => {
    const start = { input_tokens: 25, output_tokens: 1, cache_read_input_tokens: 3000, cache_creation: { ephemeral_5m_input_tokens: 1000, ephemeral_1h_input_tokens: 200 } };
    const merged = mergeAnthropicUsage(start, { input_tokens: 25, output_tokens: 14, cache_read_input_tokens: 3000, cache_creation_input_tokens: null });
    expect(merged).toEqual({ input_tokens: 25, output_tokens: 14, cache_read_input_tokens: 3000, cache_creation: { ephemeral_5m_input_tokens: 1000, ephemeral_1h_input_tokens: 200 } });
  });
});

describe('the web searches a stream is billed for', () => {
  const event = (data: object) => `event: ${(data as { type: string }).type}\ndata: ${JSON.stringify(data)}`;
  const searchBlock = event({ type: 'content_block_start', index: 1, content_block: { type: 'server_tool_use', id: 'srvtoolu_1', name: 'web_search', input: {} } });
  const billed = (events: string[]) => {
    const reader = createAnthropicStreamReader();
    for (const each of events) reader.read(each);
    // As the settlement takes them: the final usage over the searches begun.
    return { ...reader.calls(), ...reader.usage() }.web_search;
  };

  it('the final message_delta\'s count, 0 included (failed searches are not billed)', () => {
    const start = event({ type: 'message_start', message: { usage: { input_tokens: 10, output_tokens: 1 } } });
    expect(billed([start, searchBlock, event({ type: 'message_delta', usage: { output_tokens: 5, server_tool_use: { web_search_requests: 0 } } })])).toBe(0);
    expect(billed([start, searchBlock, searchBlock, event({ type: 'message_delta', usage: { output_tokens: 5, server_tool_use: { web_search_requests: 1 } } })])).toBe(1);
  });

  it('the searches begun when the final usage does not count them, even if message_start did', () => {
    const start = event({ type: 'message_start', message: { usage: { input_tokens: 10, output_tokens: 1, server_tool_use: { web_search_requests: 0 } } } });
    expect(billed([start, searchBlock, event({ type: 'message_delta', usage: { output_tokens: 5 } })])).toBe(1);
  });
});

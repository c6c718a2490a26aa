import { describe, expect, it } from 'vitest';
import { createSseEventSplitter, sseData } from '../../../lib/metering/sse-event-splitter.ts';

const encode = (text: string) => new TextEncoder().encode(text);

describe('createSseEventSplitter', () => {
  it('returns whole events exactly as received, however the bytes are cut', () => {
    const stream = 'data: {"a":"Grüße 🌍"}\n\n: comment\n\ndata: [DONE]\n\n';
    const bytes = encode(stream);
    for (let cut = 1; cut < bytes.length; cut++) {
      const splitter = createSseEventSplitter();
      const events = [...splitter.push(bytes.slice(0, cut)), ...splitter.push(bytes.slice(cut))];
      expect(events.join('') + splitter.flush()).toBe(stream);
      expect(events).toHaveLength(3);
    }
  });

  it('handles CRLF line endings and keeps an unterminated tail for flush', () => {
    const splitter = createSseEventSplitter();
    expect(splitter.push(encode('data: 1\r\n\r\ndata: 2'))).toEqual(['data: 1\r\n\r\n']);
    expect(splitter.flush()).toBe('data: 2');
  });
});

describe('sseData', () => {
  it('joins data lines and ignores comments and other fields', () => {
    expect(sseData('event: x\ndata: a\ndata:b\n\n')).toBe('a\nb');
    expect(sseData(': keep-alive\n\n')).toBeNull();
  });
});

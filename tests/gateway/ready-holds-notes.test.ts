import { afterEach, describe, expect, it, vi } from 'vitest';
import { createReadyHolds } from '../../lib/gateway/ready-holds.ts';

// What the instance notes of a key's requests to decide whether a hold taken
// ahead is worth its two database calls. The calls themselves are counted, not
// made (the gateway tests in ready-holds.test.ts make them for real).

function instance(readySeconds = 5) {
  const asked: Array<number | undefined> = [];
  const readyHolds = createReadyHolds({
    authorizeAhead: (input) => {
      asked.push(input.maxOutputTokens);
      return new Promise(() => {});
    },
    returnHolds: async () => 0,
    readySeconds,
    waitUntil: () => {},
    log: () => {},
  });
  const request = (maxOutputTokens: number) => {
    readyHolds.take('key', { model: 'm', maxOutputTokens }, 10);
    readyHolds.refill({ keyHash: 'key', model: 'm', maxOutputTokens, maxInputTokens: 20 }, true);
  };
  return { asked, readyHolds, request };
}

afterEach(() => {
  vi.useRealTimers();
});

describe('holds taken ahead: which requests earn one', () => {
  it('a request alone in its window takes none; the second within the window does', () => {
    vi.useFakeTimers({ toFake: ['Date'] });
    const { asked, request } = instance(5);
    request(50);
    expect(asked).toEqual([]);
    vi.advanceTimersByTime(5_001);
    request(50);
    expect(asked).toEqual([]);
    vi.advanceTimersByTime(4_000);
    request(50);
    expect(asked).toEqual([50]);
  });

  it('notes at most 32 shapes per key, forgetting the oldest first', () => {
    const { asked, request, readyHolds } = instance();
    for (let cap = 1; cap <= 40; cap++) readyHolds.take('key', { model: 'm', maxOutputTokens: cap }, 10);
    // The first shapes were forgotten: a second request of one is alone again.
    request(1);
    expect(asked).toEqual([]);
    // The latest are still noted.
    request(40);
    expect(asked).toEqual([40]);
  });

  it('a refused key forgets what was noted', () => {
    const { asked, request, readyHolds } = instance();
    request(50);
    readyHolds.forget('key');
    request(50);
    expect(asked).toEqual([]);
  });
});

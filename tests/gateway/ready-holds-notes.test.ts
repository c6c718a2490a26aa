import { afterEach, beforeEach, describe, expect, it, vi } from 'vitest';
import type { Authorization } from '../../lib/billing/ledger.ts';
import { createReadyHolds } from '../../lib/gateway/ready-holds.ts';

// What the instance notes of a key's requests to decide whether a hold taken
// ahead is worth its two database calls, and what it keeps. The calls
// themselves are counted, not made (the gateway tests in ready-holds.test.ts
// make them for real).

const authorized = { status: 'authorized', max_input_tokens: 1_000 } as unknown as Authorization;
const refused = { status: 'refused' } as unknown as Authorization;

function instance(readySeconds = 5, answer: () => Promise<Authorization> = () => new Promise(() => {})) {
  const asked: Array<{ keyHash: string; cap: number | undefined; requestId: string }> = [];
  const returned: string[] = [];
  /** What keepAlive was given, and whether each has settled. */
  const kept: Array<{ settled: boolean }> = [];
  const readyHolds = createReadyHolds({
    authorizeAhead: (input) => {
      asked.push({ keyHash: input.keyHash, cap: input.maxOutputTokens, requestId: input.requestId });
      return answer();
    },
    returnHolds: async (requestIds) => {
      returned.push(...requestIds);
      return requestIds.length;
    },
    readySeconds,
    waitUntil: () => {},
    keepAlive: (promise) => {
      const entry = { settled: false };
      kept.push(entry);
      void promise.then(() => (entry.settled = true));
    },
    log: () => {},
  });
  const shape = (cap: number) => ({ model: 'm', maxOutputTokens: cap });
  /** One authorized request of the key, its answer lasting `lastsMs`; what `take` gave it. */
  const request = (cap: number, { key = 'key', lastsMs = 0 } = {}) => {
    const taken = readyHolds.take(key, shape(cap), 10);
    vi.advanceTimersByTime(lastsMs);
    readyHolds.finished(key, shape(cap));
    readyHolds.refill({ keyHash: key, model: 'm', maxOutputTokens: cap, maxInputTokens: 20 }, taken.again);
    return taken;
  };
  const caps = () => asked.map((each) => each.cap);
  return { asked, caps, returned, kept, readyHolds, request, shape };
}

/** Lets the answers of calls already made arrive. */
const settle = () => new Promise((resolve) => setImmediate(resolve));

beforeEach(() => {
  vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] });
});

afterEach(() => {
  vi.useRealTimers();
});

describe('holds taken ahead: which requests earn one', () => {
  it('a request alone in its window takes none; the second within the window does', () => {
    const { caps, request } = instance(5);
    request(50);
    expect(caps()).toEqual([]);
    vi.advanceTimersByTime(5_001);
    request(50);
    expect(caps()).toEqual([]);
    vi.advanceTimersByTime(4_000);
    request(50);
    expect(caps()).toEqual([50]);
  });

  it('the window counts from when the last request finished: answers longer than the window still earn one', () => {
    const { caps, request } = instance(5);
    // An agent working one request at a time, each answer 15 s long, the next sent half a second later.
    request(50, { lastsMs: 15_000 });
    vi.advanceTimersByTime(500);
    request(50, { lastsMs: 15_000 });
    expect(caps()).toEqual([50]);
  });

  it('a request arriving while another of its shape is answered comes within the window', () => {
    const { caps, readyHolds, request, shape } = instance(5);
    request(50);
    vi.advanceTimersByTime(60_000);
    // Two at once after a long pause: the first is alone, the second arrived as the first did.
    const first = readyHolds.take('key', shape(50), 10);
    const second = readyHolds.take('key', shape(50), 10);
    expect([first.again, second.again]).toEqual([false, true]);
    // Both finish: only the second earns a hold ahead.
    for (const taken of [first, second]) {
      expect(readyHolds.finished('key', shape(50))).toBe(true);
      readyHolds.refill({ keyHash: 'key', model: 'm', maxOutputTokens: 50, maxInputTokens: 20 }, taken.again);
    }
    expect(caps()).toEqual([50]);
  });

  it('a key refused a hold ahead is not asked again for a minute, then is', async () => {
    let answer = refused;
    const { caps, request } = instance(5, async () => answer);
    request(50);
    request(50);
    await settle();
    expect(caps()).toEqual([50]);
    request(50);
    vi.advanceTimersByTime(30_000);
    request(50);
    request(50);
    expect(caps()).toEqual([50]);
    vi.advanceTimersByTime(29_999);
    // Alone in its window, then one that is not, a millisecond before the minute is over.
    request(50);
    request(50);
    expect(caps()).toEqual([50]);
    answer = authorized;
    // The minute is over (counted from the refusal): the next request within the window asks again.
    vi.advanceTimersByTime(2);
    request(50);
    expect(caps()).toEqual([50, 50]);
  });

  it('a refused key forgets what was noted', () => {
    const { caps, request, readyHolds } = instance();
    request(50);
    readyHolds.forget('key');
    request(50);
    expect(caps()).toEqual([]);
  });

  it('a key refused while one of its requests runs: that request, once finished, takes no hold ahead', () => {
    const { caps, request, readyHolds, shape } = instance();
    request(50);
    const taken = readyHolds.take('key', shape(50), 10);
    expect(taken.again).toBe(true);
    // A rate limit crossed by another of the key's requests meanwhile.
    readyHolds.forget('key');
    // As the gateway does once the request's answer is complete.
    const stillNoted = readyHolds.finished('key', shape(50));
    expect(stillNoted).toBe(false);
    readyHolds.refill({ keyHash: 'key', model: 'm', maxOutputTokens: 50, maxInputTokens: 20 }, stillNoted && taken.again);
    expect(caps()).toEqual([]);
    // The key's requests from then on earn one as a new key's would.
    request(50);
    expect(caps()).toEqual([50]);
  });

  it('a refused key gives back the hold it had ready', async () => {
    const { asked, request, readyHolds, returned, shape } = instance(5, async () => authorized);
    request(50);
    request(50);
    await settle();
    expect(asked).toHaveLength(1);
    expect(returned).toEqual([]);
    readyHolds.forget('key');
    await settle();
    expect(returned).toEqual([asked[0]!.requestId]);
    expect(readyHolds.take('key', shape(50), 10).hold).toBeUndefined();
  });
});

describe('holds taken ahead: what the instance keeps', () => {
  it('notes at most 32 shapes per key, the least recently used forgotten first', () => {
    const { caps, request, readyHolds, shape } = instance();
    for (let cap = 1; cap <= 40; cap++) readyHolds.finished('key', shape(cap));
    // The first shapes were forgotten: a second request of one is alone again.
    request(1);
    expect(caps()).toEqual([]);
    // The latest are still noted.
    request(40);
    expect(caps()).toEqual([40]);
    // A shape in use stays noted while others come and go.
    for (let cap = 100; cap <= 140; cap++) {
      request(40);
      readyHolds.finished('key', shape(cap));
    }
    expect(caps()).toEqual([40]);
    const again = readyHolds.take('key', shape(40), 10);
    expect(again.again).toBe(true);
  });

  it('requests with keys that do not exist, or with many other keys, never push out a hold that is ready', async () => {
    const { caps, readyHolds, request, returned, shape } = instance(5, async () => authorized);
    request(50);
    request(50);
    await settle();
    expect(caps()).toEqual([50]);
    // Keys nobody has: take() is called before the key is checked, and notes nothing for them.
    for (let i = 0; i < 20_000; i++) readyHolds.take(`junk-${i}`, shape(50), 10);
    // Many real keys, each used once.
    for (let i = 0; i < 20_000; i++) request(50, { key: `other-${i}` });
    expect(caps()).toEqual([50]);
    expect(returned).toEqual([]);
    const { hold, again } = readyHolds.take('key', shape(50), 10);
    expect(hold?.authorization).toBe(authorized);
    expect(again).toBe(true);
  });

  it('holds ready for many keys at once: when the instance keeps all it may, no more are taken and none is given back', async () => {
    const { asked, readyHolds, request, returned, shape } = instance(5, async () => authorized);
    for (let i = 0; i < 10_001; i++) {
      request(50, { key: `busy-${i}` });
      request(50, { key: `busy-${i}` });
    }
    await settle();
    expect(asked).toHaveLength(10_000);
    expect(asked.at(-1)?.keyHash).toBe('busy-9999');
    expect(returned).toEqual([]);
    expect(readyHolds.take('busy-0', shape(50), 10).hold).toBeDefined();
    // Once one is adopted, its key's place is free again for another.
    request(50, { key: 'busy-10000' });
    await settle();
    expect(asked.at(-1)?.keyHash).toBe('busy-10000');
  });
});

describe('what keeps a serverless instance alive while a hold is ready', () => {
  it('each ready hold is kept alive until it is adopted, or given back at the end of its window', async () => {
    const { kept, returned, request } = instance(5, async () => authorized);
    request(100);
    request(100);
    await settle();
    // One hold ready, nothing adopted yet: the instance is kept alive.
    expect(kept.map((each) => each.settled)).toEqual([false]);
    // The next request adopts it (and takes the next one ahead).
    expect(request(100).hold).toBeDefined();
    await settle();
    expect(kept.map((each) => each.settled)).toEqual([true, false]);
    // Nobody adopts the second: given back when its window ends, and no longer kept alive.
    vi.advanceTimersByTime(5_000);
    await settle();
    expect(returned).toHaveLength(1);
    expect(kept.map((each) => each.settled)).toEqual([true, true]);
  });

  it('a ready hold given back because its key was refused is no longer kept alive either', async () => {
    const { kept, readyHolds, request } = instance(5, async () => authorized);
    request(100);
    request(100);
    await settle();
    readyHolds.forget('key');
    await settle();
    expect(kept.map((each) => each.settled)).toEqual([true]);
  });
});

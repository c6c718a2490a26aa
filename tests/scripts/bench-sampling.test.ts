import { describe, expect, it } from 'vitest';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { sampleInterleaved, threadClient } from '../../scripts/bench/load.ts';

describe('the bench taking rows in turns', () => {
  it('runs one call of each row per round, rotating the order, and keeps only the timed rounds', async () => {
    const calls: string[] = [];
    const row = (name: string) => async (index: number) => {
      calls.push(`${name}${index}`);
      return index * 10;
    };
    const pauses: string[] = [];
    const taken = await sampleInterleaved(
      { a: row('a'), b: row('b'), c: row('c') },
      { warm: 1, count: 3, pause: async () => void pauses.push(calls.at(-1)!) },
    );
    expect(calls).toEqual(['a0', 'b0', 'c0', 'b1', 'c1', 'a1', 'c2', 'a2', 'b2', 'a3', 'b3', 'c3']);
    expect(pauses).toEqual(calls);
    expect(taken).toEqual({ a: [10, 20, 30], b: [10, 20, 30], c: [10, 20, 30] });
  });
});

describe("the bench's client on a thread of its own", () => {
  it('times the first byte even while the event loop it was started from is busy, and the last, and refuses an answer that is not a success', async () => {
    // The first byte 30 ms in, the end 100 ms later; this thread blocks for 200 ms once the headers are out.
    const server = createServer((request, response) => {
      const status = request.url === '/refused' ? 402 : 200;
      setTimeout(() => {
        response.writeHead(status, { 'content-type': 'text/plain' });
        response.write('first');
        setTimeout(() => response.end('last'), 100);
        setTimeout(() => {
          const until = performance.now() + 200;
          while (performance.now() < until);
        }, 5);
      }, 30);
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    const client = threadClient();
    try {
      const time = await client.timeToFirstByte({ url: `${url}/`, headers: {}, body: '{}' });
      expect(time).toBeGreaterThanOrEqual(29);
      expect(time).toBeLessThan(150);
      // The last byte comes 100 ms after the first, at the earliest.
      expect(await client.timeWhole({ url: `${url}/`, headers: {}, body: '{}' })).toBeGreaterThanOrEqual(129);
      await expect(client.timeWhole({ url: `${url}/refused`, headers: {}, body: '{}' })).rejects.toThrow('HTTP 402');
      await expect(client.timeToFirstByte({ url: `${url}/refused`, headers: {}, body: '{}' })).rejects.toThrow('HTTP 402');
    } finally {
      await client.close();
      server.close();
    }
  });
});

import { describe, expect, it } from 'vitest';
import { sampleInterleaved } from '../../scripts/bench/load.ts';

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

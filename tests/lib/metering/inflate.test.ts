import { randomBytes } from 'node:crypto';
import { constants, deflateSync, gzipSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { inflate, InflateError } from '../../../lib/metering/inflate.ts';

// Text that compresses as PDF syntax does (repeats at every distance), and bytes that do not.
const text = (length: number) => Buffer.from(Array.from({ length: Math.ceil(length / 40) }, (_, index) => `${index} 0 obj << /Type /Page /Parent ${index % 7} 0 R >>\n`).join('').slice(0, length), 'latin1');
const inputs = { empty: Buffer.alloc(0), one: Buffer.from('x'), text: text(100_000), random: randomBytes(70_000), mixed: Buffer.concat([text(5_000), randomBytes(3_000), text(5_000)]) };
const settings = {
  'stored (level 0)': { level: 0 },
  'level 1': { level: 1 },
  'level 9': { level: 9 },
  'fixed Huffman codes only': { strategy: constants.Z_FIXED },
  'Huffman only': { strategy: constants.Z_HUFFMAN_ONLY },
  'run lengths': { strategy: constants.Z_RLE },
  'small window': { windowBits: 9, memLevel: 1 },
};

describe('inflate', () => {
  it('inflates what zlib deflates, in every kind of block, byte for byte', () => {
    for (const [setting, options] of Object.entries(settings)) {
      for (const [name, input] of Object.entries(inputs)) {
        expect(Buffer.from(inflate(deflateSync(input, options), 1 << 24)).equals(input), `${name}, ${setting}`).toBe(true);
      }
    }
  });

  it('refuses what is not zlib data, data cut short, and data that inflates past the limit', () => {
    const input = text(50_000);
    expect(() => inflate(gzipSync(input), 1 << 24)).toThrow(InflateError);
    expect(() => inflate(Buffer.from('plain text'), 1 << 24)).toThrow(InflateError);
    const deflated = deflateSync(input);
    expect(() => inflate(deflated.subarray(0, deflated.length >> 1), 1 << 24)).toThrow(InflateError);
    expect(() => inflate(deflated, input.length - 1)).toThrow(InflateError);
    expect(inflate(deflated, input.length).length).toBe(input.length);
  });
});

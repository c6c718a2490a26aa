/**
 * zlib inflation (RFC 1950 around RFC 1951's deflate), synchronous and in plain
 * JavaScript: Vercel's edge runtime has no DecompressionStream, and the holds that
 * need it (the pages of an inline PDF, see pdf-pages.ts) are computed before the
 * request goes anywhere. Decodes one symbol a bit at a time through canonical
 * Huffman codes: slower than a table, fast enough for the small object streams it is for.
 */

/** Not zlib data, corrupt, or more than the caller's limit of bytes. */
export class InflateError extends Error {}

const lengthBase = [3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 15, 17, 19, 23, 27, 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258];
const lengthExtraBits = [0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0];
const distanceBase = [1, 2, 3, 4, 5, 7, 9, 13, 17, 25, 33, 49, 65, 97, 129, 193, 257, 385, 513, 769, 1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577];
const distanceExtraBits = [0, 0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13];
// The order a dynamic block sends its code-length code's lengths in.
const codeLengthOrder = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15];

/** A canonical Huffman code: how many codes of each length, and the symbols in code order. */
interface Code {
  counts: Uint16Array;
  symbols: Uint16Array;
}

function codeOf(lengths: ArrayLike<number>): Code {
  const counts = new Uint16Array(16);
  for (let symbol = 0; symbol < lengths.length; symbol += 1) counts[lengths[symbol]!]! += 1;
  counts[0] = 0;
  // More codes of some length than the lengths before leave room for: no such code.
  let left = 1;
  for (let length = 1; length < 16; length += 1) {
    left = left * 2 - counts[length]!;
    if (left < 0) throw new InflateError('over-subscribed code');
  }
  const offsets = new Uint16Array(16);
  for (let length = 1; length < 15; length += 1) offsets[length + 1] = offsets[length]! + counts[length]!;
  const symbols = new Uint16Array(lengths.length);
  for (let symbol = 0; symbol < lengths.length; symbol += 1) if (lengths[symbol]) symbols[offsets[lengths[symbol]!]!++] = symbol;
  return { counts, symbols };
}

const fixedLiterals = codeOf(Array.from({ length: 288 }, (_, symbol) => (symbol < 144 ? 8 : symbol < 256 ? 9 : symbol < 280 ? 7 : 8)));
const fixedDistances = codeOf(new Array<number>(30).fill(5));

/** The inflated bytes of zlib data; throws InflateError when it is not, or inflates to more than `limit` bytes. */
export function inflate(input: Uint8Array, limit: number): Uint8Array {
  if (input.length < 2 || (input[0]! & 0x0f) !== 8 || ((input[0]! << 8) | input[1]!) % 31 !== 0 || input[1]! & 0x20) throw new InflateError('not zlib data');
  let position = 2;
  let bitBuffer = 0;
  let bitCount = 0;
  let output = new Uint8Array(Math.min(limit, Math.max(1024, input.length * 4)));
  let written = 0;

  const bits = (count: number): number => {
    while (bitCount < count) {
      if (position >= input.length) throw new InflateError('data ends early');
      bitBuffer |= input[position++]! << bitCount;
      bitCount += 8;
    }
    const value = bitBuffer & ((1 << count) - 1);
    bitBuffer >>>= count;
    bitCount -= count;
    return value;
  };
  const room = (more: number) => {
    if (written + more > limit) throw new InflateError('inflates past the limit');
    if (written + more <= output.length) return;
    const larger = new Uint8Array(Math.min(limit, Math.max(written + more, output.length * 2)));
    larger.set(output.subarray(0, written));
    output = larger;
  };
  const decode = (code: Code): number => {
    // Codes are sent most significant bit first: grow the code a bit at a time, and
    // compare it with the first code of each length.
    let value = 0;
    let first = 0;
    let index = 0;
    for (let length = 1; length < 16; length += 1) {
      value |= bits(1);
      const count = code.counts[length]!;
      if (value - first < count) return code.symbols[index + value - first]!;
      index += count;
      first = (first + count) << 1;
      value <<= 1;
    }
    throw new InflateError('no such code');
  };

  for (let last = 0; !last; ) {
    last = bits(1);
    const type = bits(2);
    if (type === 0) {
      // Stored: from the next byte boundary, a length, its complement, the bytes.
      bitBuffer = 0;
      bitCount = 0;
      if (position + 4 > input.length) throw new InflateError('data ends early');
      const length = input[position]! | (input[position + 1]! << 8);
      const complement = input[position + 2]! | (input[position + 3]! << 8);
      position += 4;
      if (length !== (~complement & 0xffff) || position + length > input.length) throw new InflateError('bad stored block');
      room(length);
      output.set(input.subarray(position, position + length), written);
      written += length;
      position += length;
      continue;
    }
    let literals = fixedLiterals;
    let distances = fixedDistances;
    if (type === 2) {
      const literalCount = bits(5) + 257;
      const distanceCount = bits(5) + 1;
      const lengthCodeCount = bits(4) + 4;
      const lengthCodeLengths = new Array<number>(19).fill(0);
      for (let index = 0; index < lengthCodeCount; index += 1) lengthCodeLengths[codeLengthOrder[index]!] = bits(3);
      const lengthCode = codeOf(lengthCodeLengths);
      const lengths: number[] = [];
      while (lengths.length < literalCount + distanceCount) {
        const symbol = decode(lengthCode);
        if (symbol < 16) lengths.push(symbol);
        else {
          if (symbol === 16 && lengths.length === 0) throw new InflateError('repeat with nothing before');
          const [value, repeat] = symbol === 16 ? [lengths.at(-1)!, 3 + bits(2)] : symbol === 17 ? [0, 3 + bits(3)] : [0, 11 + bits(7)];
          if (lengths.length + repeat > literalCount + distanceCount) throw new InflateError('too many lengths');
          for (let index = 0; index < repeat; index += 1) lengths.push(value);
        }
      }
      if (!lengths[256]) throw new InflateError('no end-of-block code');
      literals = codeOf(lengths.slice(0, literalCount));
      distances = codeOf(lengths.slice(literalCount));
    } else if (type !== 1) throw new InflateError('bad block type');
    for (;;) {
      const symbol = decode(literals);
      if (symbol < 256) {
        room(1);
        output[written++] = symbol;
      } else if (symbol === 256) break;
      else {
        const which = symbol - 257;
        if (which >= 29) throw new InflateError('bad length code');
        const length = lengthBase[which]! + bits(lengthExtraBits[which]!);
        const distanceSymbol = decode(distances);
        if (distanceSymbol >= 30) throw new InflateError('bad distance code');
        const distance = distanceBase[distanceSymbol]! + bits(distanceExtraBits[distanceSymbol]!);
        if (distance > written) throw new InflateError('distance before the start');
        room(length);
        // Byte by byte: a copy may overlap what it writes.
        for (let index = 0; index < length; index += 1, written += 1) output[written] = output[written - distance]!;
      }
    }
  }
  return output.subarray(0, written);
}

import { inflate, InflateError } from './inflate.ts';

/**
 * How many pages a PDF sent inline can have, for holds. Every provider bills a PDF
 * by its pages (Anthropic and OpenAI an image and the text of each, Google a fixed
 * count a page), and a PDF's bytes say little about them: pages that share their
 * resources, in compressed object streams, take a few dozen bytes each.
 *
 * The file is read as a PDF reader reads its syntax (strings, comments and escaped
 * names as such; stream data skipped; object streams inflated and read in turn), and
 * the bound is the number of entries in the `/Kids` arrays of its page tree (pages
 * and the nodes above them, in every revision the file keeps) or the number of
 * dictionaries typed `/Page`, whichever is more: a reader that finds pages by either
 * finds no more than that. When the page tree cannot be read so (an encrypted
 * file, an object stream compressed otherwise than by Flate alone, a `/Kids` that is
 * not an array written out, no page tree at all, zlib data that is not, more than
 * `inflatedByteLimit` bytes inflated), the answer is null, and the caller holds the
 * PDF as content of unknown size.
 */

/** The most bytes inflated from one PDF's object streams: beyond it, a compression bomb or not, the pages are not counted. */
export const inflatedByteLimit = 16 * 1024 * 1024;

type Name = { name: string };
type Value = number | Name | Value[] | Dictionary | { ref: true } | { other: true };
type Dictionary = Map<string, Value>;

const isName = (value: Value | undefined): value is Name => typeof value === 'object' && value !== null && 'name' in value;
const isWhite = (code: number) => code === 0 || code === 9 || code === 10 || code === 12 || code === 13 || code === 32;
// ( ) < > [ ] { } / %
const isDelimiter = (code: number) => code === 40 || code === 41 || code === 60 || code === 62 || code === 91 || code === 93 || code === 123 || code === 125 || code === 47 || code === 37;

class Unreadable extends Error {}

/**
 * Whether a dictionary with `/Kids` can be a node of the page tree. Name and number
 * trees (destinations, page labels) and form fields have kids too, by the hundred in
 * a typical file, each marked by keys a page-tree node never has. A node typed
 * `/Pages` counts whatever else it holds.
 */
const otherTreeKeys = ['Limits', 'Names', 'Nums', 'FT', 'T', 'Subtype', 'Fields'];
function isPageTreeNode(dictionary: Dictionary): boolean {
  const type = dictionary.get('Type');
  if (isName(type) && type.name === 'Pages') return true;
  if (type !== undefined) return false;
  return !otherTreeKeys.some((key) => dictionary.has(key));
}

interface Tally {
  kids: number;
  typed: number;
  objectStreams: string[];
}

/** Reads one stretch of PDF syntax (a file, or the inside of an object stream), counting into `tally`. */
function read(text: string, tally: Tally): void {
  // Open containers: each a list of values read so far, and whether it is a dictionary.
  const open: { values: Value[]; dictionary: boolean }[] = [];
  let last: Value | undefined;
  const push = (value: Value) => {
    const top = open.at(-1);
    if (top) top.values.push(value);
    last = value;
  };
  const closeDictionary = (values: Value[]): Dictionary => {
    const dictionary: Dictionary = new Map();
    for (let index = 0; index + 1 < values.length; index += 2) {
      const key = values[index];
      if (isName(key)) dictionary.set(key.name, values[index + 1]!);
    }
    if (dictionary.has('Encrypt')) throw new Unreadable();
    const type = dictionary.get('Type');
    if (isName(type) && type.name === 'Page') tally.typed += 1;
    if (dictionary.has('Kids') && isPageTreeNode(dictionary)) {
      const kids = dictionary.get('Kids');
      if (!Array.isArray(kids)) throw new Unreadable();
      tally.kids += kids.length;
    }
    return dictionary;
  };
  let index = 0;
  while (index < text.length) {
    const code = text.charCodeAt(index);
    if (isWhite(code)) {
      index += 1;
    } else if (code === 37) {
      // A comment, to the end of its line.
      while (index < text.length && text[index] !== '\n' && text[index] !== '\r') index += 1;
    } else if (code === 40) {
      // A literal string: balanced parentheses, a backslash escaping the next byte.
      let depth = 0;
      for (; index < text.length; index += 1) {
        const char = text[index];
        if (char === '\\') index += 1;
        else if (char === '(') depth += 1;
        else if (char === ')' && --depth === 0) break;
      }
      index += 1;
      push({ other: true });
    } else if (code === 60 && text[index + 1] === '<') {
      open.push({ values: [], dictionary: true });
      index += 2;
    } else if (code === 62 && text[index + 1] === '>') {
      const top = open.pop();
      index += 2;
      if (top?.dictionary) push(closeDictionary(top.values));
    } else if (code === 60) {
      // A hex string.
      const end = text.indexOf('>', index);
      index = end < 0 ? text.length : end + 1;
      push({ other: true });
    } else if (code === 91) {
      open.push({ values: [], dictionary: false });
      index += 1;
    } else if (code === 93) {
      const top = open.pop();
      index += 1;
      if (top && !top.dictionary) push(top.values);
    } else if (code === 47) {
      let end = index + 1;
      while (end < text.length && !isWhite(text.charCodeAt(end)) && !isDelimiter(text.charCodeAt(end))) end += 1;
      // #xx in a name stands for the byte xx.
      const name = text.slice(index + 1, end).replace(/#([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
      push({ name });
      index = end;
    } else {
      let end = index + 1;
      while (end < text.length && !isWhite(text.charCodeAt(end)) && !isDelimiter(text.charCodeAt(end))) end += 1;
      const token = text.slice(index, end);
      index = end;
      if (token === 'R') {
        // An indirect reference takes the place of the two numbers before it.
        const values = open.at(-1)?.values;
        if (values && typeof values.at(-1) === 'number' && typeof values.at(-2) === 'number') values.splice(-2, 2);
        push({ ref: true });
      } else if (token === 'stream') {
        const dictionary = last instanceof Map ? last : undefined;
        index = skipStream(text, index, dictionary, tally);
      } else if (/^[+-]?(\d+\.?\d*|\.\d+)$/.test(token)) push(Number(token));
      else push({ other: true });
    }
  }
}

/** Skips a stream's data, keeping an object stream's for reading; the index after `endstream`. */
function skipStream(text: string, index: number, dictionary: Dictionary | undefined, tally: Tally): number {
  if (text[index] === '\r') index += 1;
  if (text[index] === '\n') index += 1;
  const length = dictionary?.get('Length');
  let end = -1;
  // The data's length when it is written in the dictionary and the data ends there; else up to the next `endstream`.
  if (typeof length === 'number' && Number.isInteger(length) && length >= 0 && /^[\r\n]*endstream/.test(text.slice(index + length, index + length + 12))) end = index + length;
  else end = text.indexOf('endstream', index);
  if (end < 0) end = text.length;
  const type = dictionary?.get('Type');
  if (dictionary && ((isName(type) && type.name === 'ObjStm') || (dictionary.has('N') && dictionary.has('First')))) {
    const filter = dictionary.get('Filter') ?? dictionary.get('F');
    const filters = filter === undefined ? [] : Array.isArray(filter) ? filter : [filter];
    if (filters.length > 1 || filters.some((one) => !isName(one) || (one.name !== 'FlateDecode' && one.name !== 'Fl')) || dictionary.has('DecodeParms') || dictionary.has('DP')) throw new Unreadable();
    tally.objectStreams.push(filters.length ? `deflate:${text.slice(index, end)}` : `plain:${text.slice(index, end)}`);
  }
  return end + 'endstream'.length;
}

/** The bytes of a binary string (one character a byte, as atob gives). */
function bytesOf(binary: string): Uint8Array {
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

/** Bytes as a binary string. */
function binaryOf(bytes: Uint8Array): string {
  const parts: string[] = [];
  for (let index = 0; index < bytes.length; index += 8192) parts.push(String.fromCharCode(...bytes.subarray(index, index + 8192)));
  return parts.join('');
}

/**
 * An upper bound on the pages of a PDF given as a binary string (one character a
 * byte), or null when its page tree cannot be read here (see above).
 */
export function pdfPageBound(binary: string): number | null {
  const tally: Tally = { kids: 0, typed: 0, objectStreams: [] };
  let left = inflatedByteLimit;
  try {
    read(binary, tally);
    // Object streams hold objects, never streams: what they hold adds no more of them.
    for (const stream of tally.objectStreams.splice(0)) {
      if (stream.startsWith('plain:')) read(stream.slice('plain:'.length), tally);
      else {
        const inside = inflate(bytesOf(stream.slice('deflate:'.length)), left);
        left -= inside.length;
        read(binaryOf(inside), tally);
      }
    }
  } catch (error) {
    if (error instanceof Unreadable || error instanceof InflateError) return null;
    throw error;
  }
  const pages = Math.max(tally.kids, tally.typed);
  return pages > 0 ? pages : null;
}

/** The binary string of base64 data (whitespace ignored), or null when it is not base64. */
export function decodeBase64(data: string): string | null {
  try {
    return atob(data.replace(/[\t\n\f\r ]/g, ''));
  } catch {
    return null;
  }
}

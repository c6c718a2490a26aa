import { inflate, InflateError } from './inflate.ts';

/**
 * How many pages a PDF sent inline can have, for holds. Every provider bills a PDF
 * by its pages (Anthropic and OpenAI an image and the text of each, Google a fixed
 * count a page), and a PDF's bytes say little about them: pages that share their
 * resources, in compressed object streams, take a few dozen bytes each.
 *
 * A reader finds the pages by the cross-reference table, from wherever the objects
 * are, so the count here does not trust the file's syntax to show them all. It is
 * the largest of, over the file's bytes and the inside of every object stream (found
 * by its dictionary's words, wherever it is, and inflated):
 * - the entries of all `/Kids` arrays, but for those of dictionaries read here as
 *   nodes of another tree (destinations, page labels, form fields: keys a page-tree
 *   node never has, and no `/Count`);
 * - the `/Type /Page` names;
 * - the `/Count` values, but for those read here as an outline's;
 * - a linearized file's page count (`/N`).
 * Names are matched escaped (`/K#69ds`) or not, with comments and any whitespace
 * between tokens. The answer is null, for the caller to hold the PDF as content of
 * unknown size, when the file is encrypted, holds a `/Kids` that is not an array
 * written out or that lists a node twice, an object stream that cannot be inflated,
 * more than `inflatedByteLimit` inflated bytes, syntax nested or long past any real
 * file's, or no page at all.
 *
 * What it does not see: a node of the page tree listed in two different `/Kids`
 * arrays (a reader expands it twice), and a node with neither `/Type /Pages` nor
 * `/Count` that carries another tree's keys.
 */

/**
 * The most bytes inflated from one PDF's object streams: beyond it, a compression
 * bomb or not, the pages are not counted. Files that need more have thousands of
 * pages, past the most a hold distinguishes (a context window's worth).
 */
export const inflatedByteLimit = 4 * 1024 * 1024;

/** Nesting past this, or more values than `valueLimit` in one stretch, is no real file: the pages are not counted. */
const depthLimit = 256;
const valueLimit = 1_000_000;

class Unreadable extends Error {}

/** A name as a pattern matching it written plainly or with any of its characters `#`-escaped. */
function namePattern(name: string): string {
  return [...name].map((char) => `(?:${char.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}|#${char.charCodeAt(0).toString(16).padStart(2, '0')})`).join('').replace(/#([0-9a-f]{2})/g, (_, hex: string) => `#(?:${hex[0]}|${hex[0]!.toUpperCase()})(?:${hex[1]}|${hex[1]!.toUpperCase()})`);
}

// Whitespace (NUL, tab, LF, FF, CR, space) and comments, as a reader skips them between tokens.
// A comment runs to its line's end, so that a run of % is read one way only.
const gap = String.raw`(?:[\0\t\n\f\r ]|%[^\r\n]*(?:[\r\n]|$))*`;
// What ends a name: whitespace, a delimiter, or the end.
const nameEnd = String.raw`(?=[\0\t\n\f\r ()<>\[\]{}/%]|$)`;
const word = (name: string) => `/${namePattern(name)}${nameEnd}`;
const patterns = {
  kids: new RegExp(`${word('Kids')}${gap}`, 'g'),
  page: new RegExp(`${word('Type')}${gap}${word('Page')}`, 'g'),
  count: new RegExp(`${word('Count')}${gap}(\\d+)`, 'g'),
  linearized: new RegExp(`${word('Linearized')}`, 'g'),
  pageCount: new RegExp(`${word('N')}${gap}(\\d+)`),
  encrypt: new RegExp(word('Encrypt')),
  objectStream: new RegExp(`${word('ObjStm')}|${word('First')}`),
  filter: new RegExp(`${word('Filter')}|${word('F')}`),
  flate: new RegExp(`^${gap}(?:${word('FlateDecode')}|${word('Fl')}|\\[${gap}(?:${word('FlateDecode')}|${word('Fl')})${gap}\\])`),
  decodeParms: new RegExp(`${word('DecodeParms')}|${word('DP')}`),
  stream: /(?<!end)stream(?:\r\n|\n|\r)/g,
};

/** Whitespace and delimiters, by byte: what ends a token. */
const ends = new Uint8Array(256);
for (const char of '\0\t\n\f\r ()<>[]{}/%') ends[char.charCodeAt(0)] = 1;

/** Keys of the nodes of name and number trees (destinations, page labels) and of form fields, which a page-tree node never has. */
const otherTreeKeys = ['Limits', 'Names', 'Nums', 'FT', 'T', 'Subtype', 'Fields'];

/**
 * Where, in one stretch of PDF syntax, the words of other trees are: the `/Kids`
 * of a dictionary that is no page-tree node, and the `/Count` of one that has no
 * kids (an outline's). Read token by token; a stretch it cannot read to its end
 * only leaves more for the count to take.
 */
function otherTrees(text: string): Set<number> {
  const other = new Set<number>();
  type Name = { name: string; at: number };
  type Value = Name | { dictionary: Map<string, Name> } | number | 'other';
  const open: { values: Value[]; dictionary: boolean }[] = [];
  let values = 0;
  const push = (value: Value) => {
    if (++values > valueLimit) throw new Unreadable();
    open.at(-1)?.values.push(value);
  };
  const isName = (value: Value | undefined): value is Name => typeof value === 'object' && 'name' in value;
  const close = (items: Value[]) => {
    const keys = new Map<string, Name>();
    const entries = new Map<string, Value>();
    for (let index = 0; index + 1 < items.length; index += 2) {
      const key = items[index];
      if (!isName(key)) return;
      keys.set(key.name, key);
      entries.set(key.name, items[index + 1]!);
    }
    const type = entries.get('Type');
    const typeName = isName(type) ? type.name : undefined;
    const kids = keys.get('Kids');
    const count = keys.get('Count');
    // Another tree's node: a key of its own, no /Count, not typed /Pages.
    const otherTree = typeName !== 'Pages' && !entries.has('Count') && otherTreeKeys.some((key) => entries.has(key));
    if (kids && otherTree) other.add(kids.at);
    if (count && !kids) other.add(count.at);
  };
  let index = 0;
  while (index < text.length) {
    const code = text.charCodeAt(index);
    if (code === 0 || code === 9 || code === 10 || code === 12 || code === 13 || code === 32 || code === 41 || code === 123 || code === 125) index += 1;
    else if (code === 37) {
      while (index < text.length && text[index] !== '\n' && text[index] !== '\r') index += 1;
    } else if (code === 40) {
      let depth = 0;
      for (; index < text.length; index += 1) {
        const char = text[index];
        if (char === '\\') index += 1;
        else if (char === '(') depth += 1;
        else if (char === ')' && --depth === 0) break;
      }
      index += 1;
      push('other');
    } else if (code === 60 && text[index + 1] === '<') {
      if (open.push({ values: [], dictionary: true }) > depthLimit) throw new Unreadable();
      index += 2;
    } else if (code === 62 && text[index + 1] === '>') {
      const top = open.pop();
      index += 2;
      if (top?.dictionary) close(top.values);
      push('other');
    } else if (code === 60) {
      const end = text.indexOf('>', index);
      index = end < 0 ? text.length : end + 1;
      push('other');
    } else if (code === 91) {
      if (open.push({ values: [], dictionary: false }) > depthLimit) throw new Unreadable();
      index += 1;
    } else if (code === 93) {
      open.pop();
      index += 1;
      push('other');
    } else {
      let end = index + 1;
      while (end < text.length && !ends[text.charCodeAt(end) & 0xff]) end += 1;
      const token = text.slice(index, end);
      if (code === 47) {
        const raw = token.slice(1);
        push({ name: raw.length > 127 ? raw : raw.replace(/#([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))), at: index });
      } else if (token === 'R') {
        const top = open.at(-1)?.values;
        if (top && typeof top.at(-1) === 'number' && typeof top.at(-2) === 'number') top.splice(-2, 2);
        push('other');
      } else if (token === 'stream') {
        // Stream data: skipped to its end (what hides in it is counted all the same).
        const end = text.indexOf('endstream', index);
        index = end < 0 ? text.length : end + 'endstream'.length;
        continue;
      } else push(/^[+-]?\d+$/.test(token) ? Number(token) : 'other');
      index = end;
    }
  }
  return other;
}

/** The characters from `start` to the array's closing bracket, comments and strings skipped; null when it never closes. */
function arrayAt(text: string, start: number): string | null {
  let inside = '';
  for (let index = start; index < text.length; index += 1) {
    const char = text[index]!;
    if (char === ']') return inside;
    if (char === '%') {
      while (index < text.length && text[index] !== '\n' && text[index] !== '\r') index += 1;
      inside += ' ';
    } else if (char === '(') {
      let depth = 0;
      for (; index < text.length; index += 1) {
        if (text[index] === '\\') index += 1;
        else if (text[index] === '(') depth += 1;
        else if (text[index] === ')' && --depth === 0) break;
      }
      inside += ' ';
    } else if (char === '[') return null;
    else inside += char;
  }
  return null;
}

interface Tally {
  pages: number;
}

/** Counts one stretch (the file, or an object stream's inside) into `tally`; `other`, where the words of other trees are in it. */
function count(text: string, tally: Tally, other: Set<number>): void {
  let kids = 0;
  for (const match of text.matchAll(patterns.kids)) {
    if (other.has(match.index)) continue;
    const start = match.index + match[0].length;
    if (text[start] !== '[') throw new Unreadable();
    const inside = arrayAt(text, start + 1);
    if (inside === null) throw new Unreadable();
    const listed = new Set<string>();
    const references = /(\d+)[\0\t\n\f\r ]+(\d+)[\0\t\n\f\r ]+R/g;
    for (const reference of inside.matchAll(references)) {
      const key = `${Number(reference[1])} ${Number(reference[2])}`;
      // A node listed twice is expanded twice by a reader: its pages cannot be told from here.
      if (listed.has(key)) throw new Unreadable();
      listed.add(key);
    }
    kids += listed.size + (inside.match(/<</g)?.length ?? 0);
  }
  let typed = 0;
  for (const _ of text.matchAll(patterns.page)) typed += 1;
  let counted = 0;
  for (const match of text.matchAll(patterns.count)) if (!other.has(match.index)) counted = Math.max(counted, Number(match[1]));
  let linearized = 0;
  for (const match of text.matchAll(patterns.linearized)) {
    const pages = patterns.pageCount.exec(text.slice(match.index, match.index + 1024));
    if (pages) linearized = Math.max(linearized, Number(pages[1]));
  }
  tally.pages = Math.max(tally.pages, kids, typed, counted, linearized);
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
 * The file's object streams: every `stream` keyword, wherever it is (in another
 * stream's data too), whose dictionary before it names `/ObjStm` or `/First`. One
 * with no filter is in the file as it is (`at`); a Flate one is inflated when read,
 * within what `budget` has left.
 */
function objectStreams(binary: string, budget: { left: number }): { at?: number; text: () => string }[] {
  const found: { at?: number; text: () => string }[] = [];
  for (const match of binary.matchAll(patterns.stream)) {
    const windowStart = Math.max(0, match.index - 2048, binary.lastIndexOf('endobj', match.index), binary.lastIndexOf('endstream', match.index));
    const dictionary = binary.slice(windowStart, match.index);
    if (!patterns.objectStream.test(dictionary)) continue;
    const start = match.index + match[0].length;
    const filter = patterns.filter.exec(dictionary);
    if (filter) {
      const rest = dictionary.slice(filter.index + filter[0].length);
      if (!patterns.flate.test(rest) || patterns.decodeParms.test(dictionary)) throw new Unreadable();
      found.push({
        text: () => {
          // The inflater stops at the end of its data: no length or `endstream` needed.
          const inside = inflate(bytesOf(binary.slice(start, start + Math.min(binary.length - start, budget.left + 1024 * 1024))), budget.left);
          budget.left -= inside.length;
          return binaryOf(inside);
        },
      });
    } else {
      const end = binary.indexOf('endstream', start);
      const text = binary.slice(start, end < 0 ? binary.length : end);
      found.push({ at: start, text: () => text });
    }
  }
  return found;
}

/**
 * An upper bound on the pages of a PDF given as a binary string (one character a
 * byte), or null when it cannot be told here (see above). Counting stops once it
 * reaches `enough` (the most pages a hold distinguishes), answering at least that.
 */
export function pdfPageBound(binary: string, enough = Infinity): number | null {
  try {
    if (patterns.encrypt.test(binary)) return null;
    const tally: Tally = { pages: 0 };
    const streams = objectStreams(binary, { left: inflatedByteLimit });
    // The words of other trees in the file: read in it, and in the object streams it holds uncompressed.
    const other = otherTrees(binary);
    for (const stream of streams) {
      if (stream.at === undefined) continue;
      for (const at of otherTrees(stream.text())) other.add(stream.at + at);
    }
    count(binary, tally, other);
    for (const stream of streams) {
      if (tally.pages >= enough) break;
      const text = stream.text();
      count(text, tally, otherTrees(text));
    }
    return tally.pages > 0 ? tally.pages : null;
  } catch (error) {
    if (error instanceof Unreadable || error instanceof InflateError) return null;
    throw error;
  }
}

/** The binary string of base64 data (whitespace ignored), or null when it is not base64. */
export function decodeBase64(data: string): string | null {
  try {
    return atob(data.replace(/[\t\n\f\r ]/g, ''));
  } catch {
    return null;
  }
}

import { inflate } from './inflate.ts';

/**
 * How many pages a PDF sent inline can have, for holds. Every provider bills a PDF
 * by its pages (Anthropic and OpenAI an image and the text of each, Google a fixed
 * count a page), and a PDF's bytes say little about them: pages that share their
 * resources, in compressed object streams, take a few dozen bytes each.
 *
 * The pages are counted as a reader finds them: the objects through the file's
 * cross-reference table or stream (and every earlier revision's, by /Prev), the
 * catalog's page tree walked leaf by leaf, a node listed twice counted twice, as
 * readers expand it. Scanning the file's words instead is fooled by objects a reader
 * finds where the syntax hides them (in another stream's data, after a stray
 * parenthesis, behind a dictionary that is not what it looks like). The bound is
 * at least every node's /Count and a linearized file's page count (/N) too, which
 * some readers take at their word.
 *
 * Strict, for what a reader would have to repair or guess at, the answer is null and
 * the caller holds the PDF as content of unknown size: an encrypted file, a table
 * that points elsewhere than at its objects, a reference to another generation than
 * the table's or to a free entry, an object number listed twice in an object
 * stream, a number written otherwise than in whole digits, a key given twice, a page
 * with kids, stream data not on the line after its keyword, a filter other than
 * Flate (with a PNG predictor at most), an unknown kind of cross-reference row, an
 * object defined again later in the file than the table says (readers that rebuild
 * the table take the last), startxref outside the last kilobyte, a loop in the tree, more than `nodeLimit` nodes, more than `inflatedByteLimit`
 * inflated bytes, or no page at all: readers differ on each.
 */

/**
 * The most bytes inflated from one PDF's streams: beyond it, a compression bomb or
 * not, the pages are not counted. Files that need more have thousands of pages,
 * past the most a hold distinguishes (a context window's worth).
 */
export const inflatedByteLimit = 4 * 1024 * 1024;

class Unreadable extends Error {}

type Value = number | boolean | null | Name | Ref | Value[] | Dict | Text;
type Name = { name: string };
type Ref = { ref: number; generation: number };
type Text = { text: true };
type Dict = Map<string, Value> & { streamAt?: number };

const nodeLimit = 100_000;
const isWhite = (code: number) => code === 0 || code === 9 || code === 10 || code === 12 || code === 13 || code === 32;
const ends = new Uint8Array(256);
for (const char of '\0\t\n\f\r ()<>[]{}/%') ends[char.charCodeAt(0)] = 1;
const isName = (value: Value | undefined): value is Name => typeof value === 'object' && value !== null && 'name' in value;
const isRef = (value: Value | undefined): value is Ref => typeof value === 'object' && value !== null && 'ref' in value;
const isDict = (value: Value | undefined): value is Dict => value instanceof Map;

/** A reader of PDF values in one stretch of text (the file, or an object stream's inside). */
class Lexer {
  constructor(private readonly text: string, public at = 0) {}

  private skip(): void {
    const { text } = this;
    while (this.at < text.length) {
      const code = text.charCodeAt(this.at);
      if (isWhite(code)) this.at += 1;
      else if (code === 37) while (this.at < text.length && text[this.at] !== '\n' && text[this.at] !== '\r') this.at += 1;
      else break;
    }
  }

  /** The next token without its value: a delimiter, or a run of regular characters. */
  token(): string {
    this.skip();
    const { text } = this;
    if (this.at >= text.length) throw new Unreadable();
    const char = text[this.at]!;
    if ((char === '<' || char === '>') && text[this.at + 1] === char) {
      this.at += 2;
      return char + char;
    }
    if (ends[text.charCodeAt(this.at)]) {
      this.at += 1;
      return char;
    }
    const start = this.at;
    while (this.at < text.length && !ends[text.charCodeAt(this.at) & 0xff]) this.at += 1;
    return text.slice(start, this.at);
  }

  value(depth = 0): Value {
    if (depth > 64) throw new Unreadable();
    const token = this.token();
    const { text } = this;
    if (token === '/') {
      const start = this.at;
      while (this.at < text.length && !ends[text.charCodeAt(this.at) & 0xff]) this.at += 1;
      return { name: text.slice(start, this.at).replace(/#([0-9A-Fa-f]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16))) };
    }
    if (token === '<<') {
      const dict: Dict = new Map();
      for (;;) {
        const mark = this.at;
        if (this.token() === '>>') break;
        this.at = mark;
        const key = this.value(depth + 1);
        if (!isName(key)) throw new Unreadable();
        const value = this.value(depth + 1);
        // A key given twice: readers differ on which counts.
        if (dict.has(key.name)) throw new Unreadable();
        dict.set(key.name, value);
      }
      return dict;
    }
    if (token === '[') {
      const array: Value[] = [];
      for (;;) {
        const mark = this.at;
        if (this.token() === ']') break;
        this.at = mark;
        array.push(this.value(depth + 1));
      }
      return array;
    }
    if (token === '(') {
      let level = 1;
      for (; this.at < text.length && level > 0; this.at += 1) {
        const char = text[this.at];
        if (char === '\\') this.at += 1;
        else if (char === '(') level += 1;
        else if (char === ')') level -= 1;
      }
      if (level > 0) throw new Unreadable();
      return { text: true };
    }
    if (token === '<') {
      const end = text.indexOf('>', this.at);
      if (end < 0) throw new Unreadable();
      this.at = end + 1;
      return { text: true };
    }
    if (token === 'true' || token === 'false') return token === 'true';
    if (token === 'null') return null;
    if (/^[+-]?(\d+\.?\d*|\.\d+)$/.test(token)) {
      // A reference: two whole numbers and R.
      if (/^\d+$/.test(token)) {
        const mark = this.at;
        try {
          const generation = this.token();
          if (/^\d+$/.test(generation) && this.token() === 'R') return { ref: Number(token), generation: Number(generation) };
        } catch (error) {
          if (!(error instanceof Unreadable)) throw error;
        }
        this.at = mark;
      }
      return Number(token);
    }
    throw new Unreadable();
  }
}

type Entry = { offset: number; generation: number } | { stream: number; index: number; generation: 0 } | { free: true; generation: number };

/** Bytes of a binary string. */
function bytesOf(binary: string): Uint8Array {
  const bytes = new Uint8Array(binary.length);
  for (let index = 0; index < binary.length; index += 1) bytes[index] = binary.charCodeAt(index);
  return bytes;
}

/** Undoes a PNG predictor (Predictor 10 to 15) on rows of `columns` bytes. */
function unpredict(data: Uint8Array, columns: number): Uint8Array {
  const row = columns + 1;
  if (columns <= 0 || data.length % row !== 0) throw new Unreadable();
  const out = new Uint8Array((data.length / row) * columns);
  for (let line = 0; line * row < data.length; line += 1) {
    const filter = data[line * row]!;
    for (let column = 0; column < columns; column += 1) {
      const raw = data[line * row + 1 + column]!;
      const left = column > 0 ? out[line * columns + column - 1]! : 0;
      const up = line > 0 ? out[(line - 1) * columns + column]! : 0;
      const upLeft = line > 0 && column > 0 ? out[(line - 1) * columns + column - 1]! : 0;
      let predicted = 0;
      if (filter === 1) predicted = left;
      else if (filter === 2) predicted = up;
      else if (filter === 3) predicted = (left + up) >> 1;
      else if (filter === 4) {
        const estimate = left + up - upLeft;
        const [a, b, c] = [Math.abs(estimate - left), Math.abs(estimate - up), Math.abs(estimate - upLeft)];
        predicted = a <= b && a <= c ? left : b <= c ? up : upLeft;
      } else if (filter !== 0) throw new Unreadable();
      out[line * columns + column] = (raw + predicted) & 0xff;
    }
  }
  return out;
}

/** Reads a PDF's objects through its cross-reference sections. */
class PdfFile {
  private readonly entries = new Map<number, Entry>();
  private readonly objectStreams = new Map<number, { text: string; objects: { number: number; at: number; end: number }[] }>();
  trailer: Dict | undefined;

  constructor(private readonly binary: string, private budget: number) {
    // Readers look for startxref in the file's last kilobyte; past it, they rebuild the table.
    const at = binary.lastIndexOf('startxref');
    if (at < 0 || binary.length - at > 1024) throw new Unreadable();
    const lexer = new Lexer(binary, at + 'startxref'.length);
    const offset = lexer.value();
    if (typeof offset !== 'number') throw new Unreadable();
    let next: number | undefined = offset;
    while (next !== undefined) next = this.section(next);
    if (!this.trailer) throw new Unreadable();
    this.refuseLaterDefinitions();
  }

  /**
   * A reader that finds the table broken (and readers differ on what is broken: a
   * comment in it, rows not padded, junk after the end) rebuilds it by scanning the
   * file, and takes each object's last definition. A definition later in the file
   * than the one the table gives (or than the object stream holding it) is refused:
   * readers differ on which is the object.
   */
  private refuseLaterDefinitions(): void {
    for (const match of this.binary.matchAll(/(?<![0-9])(\d+)[\0\t\n\f\r ]+\d+[\0\t\n\f\r ]+obj(?![^\0\t\n\f\r ()<>[\]{}/%])/g)) {
      const entry = this.entries.get(Number(match[1]));
      if (!entry || 'free' in entry) continue;
      const location = 'offset' in entry ? entry : this.entries.get(entry.stream);
      if (location && 'offset' in location && match.index > location.offset) throw new Unreadable();
    }
  }

  /** Sections read: each once (a loop of /Prev, or many tables naming one stream, is refused). */
  private readonly sections = new Set<number>();

  /** One cross-reference section: its entries (the newer ones already read win, free ones too), and the offset of the one before. */
  private section(offset: number): number | undefined {
    if (this.sections.has(offset) || this.sections.size > 1_000) throw new Unreadable();
    this.sections.add(offset);
    const lexer = new Lexer(this.binary, offset);
    const mark = lexer.at;
    let trailer: Dict;
    if (lexer.token() === 'xref') {
      for (;;) {
        const before = lexer.at;
        const first = lexer.token();
        if (first === 'trailer') break;
        lexer.at = before;
        const start = lexer.value();
        const count = lexer.value();
        if (typeof start !== 'number' || typeof count !== 'number' || count < 0 || count > 10_000_000) throw new Unreadable();
        // A table numbered from 1 that starts with the head of the free list (65535): some readers number it from 0.
        if (start === 1 && /^[\0\t\n\f\r ]*\d{10} 65535 f/.test(this.binary.slice(lexer.at, lexer.at + 64))) throw new Unreadable();
        for (let index = 0; index < count; index += 1) {
          const position = lexer.value();
          const generation = lexer.value();
          const kind = lexer.token();
          if (typeof position !== 'number' || typeof generation !== 'number' || (kind !== 'n' && kind !== 'f')) throw new Unreadable();
          if (!this.entries.has(start + index)) this.entries.set(start + index, kind === 'n' ? { offset: position, generation } : { free: true, generation });
        }
      }
      const value = lexer.value();
      if (!isDict(value)) throw new Unreadable();
      trailer = value;
      this.trailer ??= trailer;
      // A hybrid file's cross-reference stream, after the table it completes.
      const stream = trailer.get('XRefStm');
      if (typeof stream === 'number') this.section(stream);
    } else {
      lexer.at = mark;
      const { dict, data } = this.streamAt(offset);
      if (!isName(dict.get('Type')) || (dict.get('Type') as Name).name !== 'XRef') throw new Unreadable();
      trailer = dict;
      this.streamEntries(dict, data);
    }
    this.trailer ??= trailer;
    const previous = trailer.get('Prev');
    return typeof previous === 'number' ? previous : undefined;
  }

  private streamEntries(dict: Dict, data: Uint8Array): void {
    const widths = dict.get('W');
    if (!Array.isArray(widths) || widths.length !== 3 || !widths.every((width) => typeof width === 'number' && width >= 0 && width <= 8)) throw new Unreadable();
    const [typeWidth, secondWidth, thirdWidth] = widths as number[];
    const size = dict.get('Size');
    const index = dict.get('Index') ?? [0, size ?? 0];
    if (!Array.isArray(index) || index.length % 2 !== 0) throw new Unreadable();
    const row = typeWidth! + secondWidth! + thirdWidth!;
    // Rows of no bytes would let /Index claim any number of entries.
    if (row === 0) throw new Unreadable();
    const field = (at: number, width: number) => {
      let value = 0;
      for (let byte = 0; byte < width; byte += 1) value = value * 256 + data[at + byte]!;
      return value;
    };
    let at = 0;
    for (let section = 0; section < index.length; section += 2) {
      const [start, count] = [index[section], index[section + 1]];
      if (typeof start !== 'number' || typeof count !== 'number') throw new Unreadable();
      for (let entry = 0; entry < count; entry += 1, at += row) {
        if (at + row > data.length) throw new Unreadable();
        const type = typeWidth ? field(at, typeWidth) : 1;
        const second = field(at + typeWidth!, secondWidth!);
        const third = field(at + typeWidth! + secondWidth!, thirdWidth!);
        if (type > 2) throw new Unreadable();
        if (this.entries.has(start + entry)) continue;
        if (type === 0) this.entries.set(start + entry, { free: true, generation: third });
        else if (type === 1) this.entries.set(start + entry, { offset: second, generation: thirdWidth ? third : 0 });
        else this.entries.set(start + entry, { stream: second, index: third, generation: 0 });
      }
    }
  }

  /** The object (`number generation obj value`) at an offset: the one expected there, or none. */
  private objectAt(offset: number, number?: number, generation?: number): { value: Value; lexer: Lexer } {
    const lexer = new Lexer(this.binary, offset);
    const found = lexer.token();
    const foundGeneration = lexer.token();
    // Whole digits only: readers take "0x2" or "2." for no object number, and look for the object elsewhere.
    if (!/^\d+$/.test(found) || !/^\d+$/.test(foundGeneration) || lexer.token() !== 'obj') throw new Unreadable();
    if ((number !== undefined && Number(found) !== number) || (generation !== undefined && Number(foundGeneration) !== generation)) throw new Unreadable();
    return { value: lexer.value(), lexer };
  }

  /** A stream object at an offset: its dictionary, and its data decoded (Flate, with a PNG predictor at most). */
  private streamAt(offset: number, number?: number): { dict: Dict; data: Uint8Array } {
    const { value, lexer } = this.objectAt(offset, number);
    if (!isDict(value) || lexer.token() !== 'stream') throw new Unreadable();
    // The data starts after the keyword's line end; readers skip spaces before it too, so anything else is refused.
    const start = this.binary.startsWith('\r\n', lexer.at) ? lexer.at + 2 : this.binary[lexer.at] === '\n' ? lexer.at + 1 : -1;
    if (start < 0) throw new Unreadable();
    const length = this.resolve(value.get('Length'));
    if (typeof length !== 'number' || length < 0 || start + length > this.binary.length) throw new Unreadable();
    const raw = bytesOf(this.binary.slice(start, start + length));
    const filter = value.get('Filter');
    const filters = filter === undefined ? [] : Array.isArray(filter) ? filter : [filter];
    if (filters.length > 1 || filters.some((one) => !isName(one) || one.name !== 'FlateDecode')) throw new Unreadable();
    let data = raw;
    if (filters.length) {
      data = inflate(raw, this.budget);
      this.budget -= data.length;
    }
    const parms = value.get('DecodeParms');
    if (parms !== undefined && parms !== null) {
      if (!isDict(parms)) throw new Unreadable();
      const predictor = parms.get('Predictor') ?? 1;
      const colors = parms.get('Colors') ?? 1;
      const bits = parms.get('BitsPerComponent') ?? 8;
      const columns = parms.get('Columns') ?? 1;
      if (predictor !== 1) {
        if (typeof predictor !== 'number' || predictor < 10 || predictor > 15 || colors !== 1 || bits !== 8 || typeof columns !== 'number') throw new Unreadable();
        data = unpredict(data, columns);
      }
    }
    return { dict: value, data };
  }

  private readonly resolved = new Map<number, Value | undefined>();

  /** A value with its reference followed, once; each object is read once. */
  resolve(value: Value | undefined): Value | undefined {
    if (!isRef(value)) return value;
    // A reference to another generation than the table's: readers that key objects by both find an older one.
    const entry = this.entries.get(value.ref);
    if (entry && entry.generation !== value.generation) throw new Unreadable();
    if (!this.resolved.has(value.ref)) this.resolved.set(value.ref, this.read(value));
    return this.resolved.get(value.ref);
  }

  private read(value: Ref): Value | undefined {
    const entry = this.entries.get(value.ref);
    if (!entry) return null;
    if ('free' in entry) throw new Unreadable();
    if ('offset' in entry) return this.objectAt(entry.offset, value.ref, value.generation).value;
    let stream = this.objectStreams.get(entry.stream);
    if (!stream) {
      const location = this.entries.get(entry.stream);
      if (!location || !('offset' in location) || location.generation !== 0) throw new Unreadable();
      const { dict, data } = this.streamAt(location.offset, entry.stream);
      let text = '';
      for (let index = 0; index < data.length; index += 8192) text += String.fromCharCode(...data.subarray(index, index + 8192));
      const count = dict.get('N');
      const first = dict.get('First');
      if (typeof count !== 'number' || typeof first !== 'number') throw new Unreadable();
      const header = new Lexer(text);
      const objects: { number: number; at: number; end: number }[] = [];
      const numbers = new Set<number>();
      for (let index = 0; index < count; index += 1) {
        const number = header.value();
        const at = header.value();
        // A number listed twice: readers differ on which copy counts.
        if (typeof number !== 'number' || typeof at !== 'number' || numbers.has(number)) throw new Unreadable();
        numbers.add(number);
        objects.push({ number, at: first + at, end: text.length });
      }
      // Each object ends where the next begins: read past it, "7" then "0 R" would be a reference.
      const sorted = [...objects].sort((a, b) => a.at - b.at);
      let nextStart = text.length;
      for (let index = sorted.length - 1; index >= 0; ) {
        const at = sorted[index]!.at;
        for (; index >= 0 && sorted[index]!.at === at; index -= 1) sorted[index]!.end = nextStart;
        nextStart = at;
      }
      stream = { text, objects };
      this.objectStreams.set(entry.stream, stream);
    }
    // The object at the index the table gives, which must be the one referred to.
    const object = stream.objects[entry.index];
    if (!object || object.number !== value.ref) throw new Unreadable();
    return new Lexer(stream.text.slice(0, object.end), object.at).value();
  }
}

/** A page count given as a number, whole; one past any real file's is refused. */
function countOf(value: Value | undefined): number {
  if (typeof value !== 'number') return 0;
  if (!Number.isFinite(value) || value > 1e9) throw new Unreadable();
  return Math.max(0, Math.ceil(value));
}

/**
 * An upper bound on the pages of a PDF given as a binary string (one character a
 * byte), or null when it cannot be told here (see above). The walk stops once it
 * reaches `enough` (the most pages a hold distinguishes), answering at least that.
 */
export function pdfPageBound(binary: string, enough = Infinity): number | null {
  try {
    const file = new PdfFile(binary, inflatedByteLimit);
    if (file.trailer!.has('Encrypt')) return null;
    const catalog = file.resolve(file.trailer!.get('Root'));
    if (!isDict(catalog)) return null;
    let pages = 0;
    let counted = 0;
    // A linearized file's first object says how many pages it has.
    const header = Math.max(binary.indexOf('%PDF-'), 0);
    const first = /\d+[\0\t\n\f\r ]+\d+[\0\t\n\f\r ]+obj/.exec(binary.slice(header, header + 1024));
    if (first) {
      try {
        const lexer = new Lexer(binary, header + first.index + first[0].length);
        const linearization = lexer.value();
        if (isDict(linearization) && linearization.has('Linearized')) counted = countOf(linearization.get('N'));
      } catch (error) {
        if (!(error instanceof Unreadable)) throw error;
      }
    }
    let nodes = 0;
    const path = new Set<number>();
    const walk = (reference: Value | undefined): void => {
      if (pages >= enough) return;
      if (++nodes > nodeLimit) throw new Unreadable();
      const number = isRef(reference) ? reference.ref : undefined;
      if (number !== undefined && path.has(number)) throw new Unreadable();
      const node = file.resolve(reference);
      if (!isDict(node)) throw new Unreadable();
      const kids = file.resolve(node.get('Kids'));
      const type = node.get('Type');
      // A page with kids: readers differ on whether it is a page or a node.
      if (kids !== undefined && isName(type) && type.name === 'Page') throw new Unreadable();
      if (kids === undefined) {
        pages += 1;
        return;
      }
      if (!Array.isArray(kids)) throw new Unreadable();
      const count = file.resolve(node.get('Count'));
      counted = Math.max(counted, countOf(count));
      if (number !== undefined) path.add(number);
      for (const kid of kids) walk(kid);
      if (number !== undefined) path.delete(number);
    };
    walk(catalog.get('Pages'));
    const bound = Math.max(pages, counted);
    return bound > 0 ? bound : null;
  } catch {
    // Unreadable, not zlib data, deeper than the stack, or anything else this reader
    // did not expect: a file not counted is held as content of unknown size, and the
    // request is never failed for it.
    return null;
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

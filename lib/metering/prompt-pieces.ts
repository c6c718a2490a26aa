import { countTokens, utf8Bytes } from './count-tokens.ts';
import { decodeBase64, pdfPageBound } from './pdf-pages.ts';

/**
 * Upper bound of an image's input tokens, for holds only. The dearest OpenAI
 * formula (gpt-4o-mini, high detail, 2048×768: 2833 + 8 × 5667 tokens) stays under it.
 */
export const imageTokenBound = 50_000;

/** Tokens counted for an image when no provider usage exists (a 1024×1024 high-detail image on gpt-4o). */
export const imageTokenEstimate = 765;

/**
 * Upper bound, for holds, of content the upstream fetches or keeps itself (a
 * file id, a document or video URL, a cache it holds by name, a stored
 * response or item): its size is unknown here, and a long PDF or video can
 * fill a context window. Held once however many pieces a prompt has: together
 * they fill at most the context window too, the largest of the models served
 * being 1,048,576 tokens (Gemini 2.5 Pro; GPT-4.1 1,047,576), and a
 * conversation that sends back each earlier answer by reference would
 * otherwise hold a million tokens more with every turn.
 */
export const remoteContentTokenBound = 1_048_576;

/**
 * Upper bound, for holds, of one page of a PDF sent inline, beside the PDF's bytes.
 * Each provider bills a page as an image of it and its text (Anthropic: about
 * 1,600 for the image and 1,500 to 3,000 for the text of a page; OpenAI: the page's
 * image at the model's image rate and its text; Google: 258 a page, 560 on Gemini 3).
 * The image bound covers the dearest image (gpt-4o-mini's 25,501 for a 1024×1024
 * page at high detail) with the text of a page twice as dense as any printed one.
 */
export const pdfPageTokenBound = imageTokenBound;

/** A file sent inline, base64: a PDF among them is held by its pages too. */
export interface InlineFile {
  data: string;
  mediaType?: string;
}

/** A prompt taken apart: its text, its images (never read as text), remote content, inline files, and the bytes of parts of other kinds (an inline file's among them). */
export interface PromptPieces {
  texts: string[];
  images: number;
  remote?: number;
  files?: InlineFile[];
  opaqueBytes: number;
}

/** A data URL's media type and base64 data; anything else as base64 data with no type. */
export function inlineFileOf(value: string): InlineFile {
  const dataUrl = /^data:([^;,]*)(?:;[^,]*)?;base64,/i.exec(value);
  return dataUrl ? { data: value.slice(dataUrl[0].length), mediaType: dataUrl[1]!.toLowerCase() } : { data: value };
}

/** What a file's data tells, once decoded and read: whether it is a PDF by its header, and its pages bound (null: not counted). */
interface FileReading {
  header: boolean;
  pages: number | null;
}

/**
 * Readings of files seen before, by their base64 data itself (an exact key: a
 * digest would need an asynchronous call, and a weaker hash could be matched by a
 * crafted file). An agent sends its PDFs again with every turn, and reading one
 * takes milliseconds (4 to 18 for a 263 KB manual); a lookup, a comparison of the
 * data. Least recently used first out, within a bound on the data kept.
 */
const readings = new Map<string, FileReading>();
let readingsChars = 0;
/** The data kept for the readings, at most (characters of base64, a byte each). */
export const pdfReadingsCacheChars = 8 * 1024 * 1024;
/** Files smaller than this are read again each time: as quick as a lookup, and not worth the room. */
const smallestCached = 16 * 1024;

/** How many readings are kept, the characters of data they keep, and whether one of `data` is. */
export function pdfReadingsKept(data?: string): { files: number; chars: number; kept: boolean } {
  return { files: readings.size, chars: readingsChars, kept: data !== undefined && readings.has(data) };
}

function readFile(file: InlineFile, declared: boolean): FileReading | null {
  const cached = readings.get(file.data);
  if (cached) {
    readings.delete(file.data);
    readings.set(file.data, cached);
    return cached;
  }
  const binary = decodeBase64(file.data);
  if (binary === null) return null;
  const header = binary.slice(0, 1024).includes('%PDF-');
  // Only a file read as a PDF is read through (and worth keeping).
  if (!declared && !header) return { header, pages: null };
  const reading = { header, pages: pdfPageBound(binary, Math.ceil(remoteContentTokenBound / pdfPageTokenBound)) };
  if (file.data.length >= smallestCached && file.data.length <= pdfReadingsCacheChars) {
    readings.set(file.data, reading);
    readingsChars += file.data.length;
    for (const [data] of readings) {
      if (readingsChars <= pdfReadingsCacheChars) break;
      readings.delete(data);
      readingsChars -= data.length;
    }
  }
  return reading;
}

/**
 * What the inline PDFs add beyond their bytes: their pages at the page bound, and
 * whether any could not be counted (content of unknown size). A file that is not a
 * PDF (by its declared type, or by the header a PDF reader looks for in its first
 * 1,024 bytes) adds nothing: its bytes bound it.
 */
function pdfPages(files: InlineFile[]): { pages: number; uncounted: boolean } {
  let pages = 0;
  let uncounted = false;
  for (const file of files) {
    const declared = file.mediaType === 'application/pdf';
    const reading = readFile(file, declared);
    if (reading === null || !(declared || reading.header)) {
      uncounted ||= declared;
      continue;
    }
    if (reading.pages === null) uncounted = true;
    else pages += reading.pages;
  }
  return { pages, uncounted };
}

/**
 * A strict upper bound on the prompt's tokens with no tokenizer: UTF-8 bytes of the
 * text, a fixed bound per image, and per page of an inline PDF. Remote content, a PDF
 * whose pages cannot be counted, and the pages of the others together fill at most a
 * context window. `besides`: the same bound without `stored` of the remote pieces (stored
 * content the caller bounds otherwise), from the same reading of the pieces.
 */
export function promptBounds(pieces: PromptPieces, framingTokens: number, stored = 0): { bound: number; besides: number } {
  let bytes = pieces.opaqueBytes;
  for (const text of pieces.texts) bytes += utf8Bytes(text);
  const pdfs = pieces.files?.length ? pdfPages(pieces.files) : { pages: 0, uncounted: false };
  const known = bytes + pieces.images * imageTokenBound + framingTokens;
  const upToWindow = (remote: number) =>
    Math.min((remote > 0 || pdfs.uncounted ? remoteContentTokenBound : 0) + pdfs.pages * pdfPageTokenBound, remoteContentTokenBound);
  const remote = pieces.remote ?? 0;
  return { bound: known + upToWindow(remote), besides: known + upToWindow(remote - stored) };
}

/** The bound of promptBounds alone. */
export function boundPromptTokens(pieces: PromptPieces, framingTokens: number): number {
  return promptBounds(pieces, framingTokens).bound;
}

/** The prompt's tokens by the tokenizer; `estimated` when images or other parts had to be guessed. */
export async function countPromptTokens(pieces: PromptPieces, framingTokens: number): Promise<{ tokens: number; estimated: boolean }> {
  const tokens = (await countTokens(pieces.texts)) + pieces.images * imageTokenEstimate + pieces.opaqueBytes + framingTokens;
  // Remote content cannot be counted here: it adds nothing, and the count is marked an estimate.
  return { tokens, estimated: pieces.images > 0 || pieces.opaqueBytes > 0 || (pieces.remote ?? 0) > 0 };
}

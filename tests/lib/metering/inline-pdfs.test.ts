import { describe, expect, it } from 'vitest';
import { pdfPageTokenBound, pdfReadingsCacheChars, pdfReadingsKept, remoteContentTokenBound } from '../../../lib/metering/prompt-pieces.ts';
import { boundMessagesInputTokens } from '../../../lib/providers/anthropic/anthropic-input.ts';
import { boundGeminiInputTokens } from '../../../lib/providers/google/gemini-input.ts';
import { generateContentRequestSchema } from '../../../lib/providers/google/gemini-wire.ts';
import { boundChatInputTokens } from '../../../lib/providers/openai/openai-input.ts';
import { boundResponsesInputTokens } from '../../../lib/providers/openai/responses-input.ts';
import { responsesRequestSchema } from '../../../lib/providers/openai/responses-wire.ts';
import { buildPdf } from '../../support/pdf.ts';

// A request of each format with one file inline, as each SDK sends a PDF.
const formats = {
  'Chat Completions (file_data, a data URL)': (data: string, type: string) =>
    boundChatInputTokens({ model: 'm', messages: [{ role: 'user', content: [{ type: 'text', text: 'Summarize.' }, { type: 'file', file: { filename: 'a.pdf', file_data: `data:${type};base64,${data}` } }] }] } as never),
  'Responses (input_file, a data URL)': (data: string, type: string) =>
    boundResponsesInputTokens(responsesRequestSchema.parse({ model: 'm', input: [{ role: 'user', content: [{ type: 'input_text', text: 'Summarize.' }, { type: 'input_file', filename: 'a.pdf', file_data: `data:${type};base64,${data}` }] }] })),
  'Messages (a base64 document)': (data: string, type: string) =>
    boundMessagesInputTokens({ model: 'm', max_tokens: 10, messages: [{ role: 'user', content: [{ type: 'document', source: { type: 'base64', media_type: type, data } }, { type: 'text', text: 'Summarize.' }] }] } as never),
  'generateContent (inlineData)': (data: string, type: string) =>
    boundGeminiInputTokens(generateContentRequestSchema.parse({ contents: [{ parts: [{ inlineData: { mimeType: type, data } }, { text: 'Summarize.' }] }] })),
};

const base64 = (bytes: Buffer) => bytes.toString('base64');
// Bytes of the same length that are no PDF, under a type as long: what the request is held at without the pages.
const filler = (data: string) => 'A'.repeat(data.length);
const notPdf = (type: string) => `text/${'x'.repeat(type.length - 5)}`;

describe.each(Object.entries(formats))('an inline PDF in %s', (_, bound) => {
  it('is held by its pages beside its bytes, though a hundred pages take under 2 KB', () => {
    const five = base64(buildPdf({ pages: 5, objectStreams: true }));
    expect((bound(five, 'application/pdf')) - (bound(filler(five), notPdf('application/pdf')))).toBe(5 * pdfPageTokenBound);
    // A PDF declared as something else is known by its header.
    expect((bound(five, 'application/octet-stream')) - (bound(filler(five), notPdf('application/octet-stream')))).toBe(5 * pdfPageTokenBound);
    // Its pages fill at most a context window.
    const hundred = base64(buildPdf({ pages: 100, objectStreams: true }));
    expect(hundred.length).toBeLessThan(2_700);
    expect((bound(hundred, 'application/pdf')) - (bound(filler(hundred), notPdf('application/pdf')))).toBe(remoteContentTokenBound);
  });

  it('is content of unknown size when its pages cannot be counted', () => {
    const encrypted = base64(buildPdf({ pages: 5, trailerExtra: '/Encrypt 9 0 R' }));
    expect((bound(encrypted, 'application/pdf')) - (bound(filler(encrypted), notPdf('application/pdf')))).toBe(remoteContentTokenBound);
    // Declared a PDF, not base64.
    expect((bound('%%%not base64%%%', 'application/pdf')) - (bound('%%%not base64%%%', notPdf('application/pdf')))).toBe(remoteContentTokenBound);
  });
});

describe('inline PDFs and content stored upstream', () => {
  it('fill one context window together', () => {
    const five = base64(buildPdf({ pages: 5 }));
    const file = { type: 'input_file', filename: 'a.pdf', file_data: `data:application/pdf;base64,${five}` };
    const request = (content: object[], more: object = {}) => boundResponsesInputTokens(responsesRequestSchema.parse({ model: 'm', input: [{ role: 'user', content }], ...more }));
    const plain = request([{ ...file, file_data: `data:${notPdf('application/pdf')};base64,${filler(five)}` }, { ...file, file_data: `data:${notPdf('application/pdf')};base64,${filler(five)}` }]);
    expect((request([file, file])) - plain).toBe(10 * pdfPageTokenBound);
    expect((request([file, file], { previous_response_id: 'resp_1' })) - plain).toBe(remoteContentTokenBound);
  });
});

describe('readings of PDFs kept between requests', () => {
  const bound = formats['Messages (a base64 document)'];

  it('a PDF sent again is held as when it was first read, whether declared or known by its header; other data the same way', () => {
    const pdf = base64(buildPdf({ pages: 300 }));
    expect(pdf.length).toBeGreaterThan(16 * 1024);
    const before = pdfReadingsKept().files;
    const first = bound(pdf, 'application/pdf');
    expect(pdfReadingsKept().files).toBe(before + 1);
    expect(bound(pdf, 'application/pdf')).toBe(first);
    expect(pdfReadingsKept().files).toBe(before + 1);
    expect(first - bound(filler(pdf), notPdf('application/pdf'))).toBe(remoteContentTokenBound);
    expect(bound(pdf, 'application/octet-stream') - bound(filler(pdf), notPdf('application/octet-stream'))).toBe(remoteContentTokenBound);
    // Data that is no PDF: content of unknown size when declared one, its bytes alone when not, read first either way.
    const other = base64(Buffer.alloc(20_000, 'not a pdf '));
    const asPdf = bound(other, 'application/pdf') - bound(filler(other), notPdf('application/pdf'));
    const asText = bound(other, 'text/plain') - bound(filler(other), notPdf('text/plain'));
    expect([asPdf, asText]).toEqual([remoteContentTokenBound, 0]);
    const otherAgain = base64(Buffer.alloc(20_000, 'still none '));
    expect(bound(otherAgain, 'text/plain') - bound(filler(otherAgain), notPdf('text/plain'))).toBe(0);
    expect(bound(otherAgain, 'application/pdf') - bound(filler(otherAgain), notPdf('application/pdf'))).toBe(remoteContentTokenBound);
  });

  it('keeps at most its bound of data, the least recently used given up first', () => {
    const padded = (index: number) => base64(buildPdf({ pages: 2 + (index % 3), extra: [`(${String(index).padStart(6, '0')}${'x'.repeat(400_000)})`] }));
    const files = Array.from({ length: 24 }, (_, index) => padded(index));
    expect(files.reduce((sum, data) => sum + data.length, 0)).toBeGreaterThan(pdfReadingsCacheChars);
    // The first file is read again after each other one: used most recently, it is the one kept longest.
    const pages = files.map((data) => {
      const counted = bound(data, 'application/pdf') - bound(filler(data), notPdf('application/pdf'));
      bound(files[0]!, 'application/pdf');
      return counted;
    });
    expect(pages).toEqual(files.map((_, index) => (2 + (index % 3)) * pdfPageTokenBound));
    const kept = pdfReadingsKept();
    expect(kept.chars).toBeLessThanOrEqual(pdfReadingsCacheChars);
    expect(kept.chars).toBeGreaterThan(pdfReadingsCacheChars - files[0]!.length);
    expect(files.map((data) => pdfReadingsKept(data).kept)).toEqual(files.map((_, index) => index === 0 || index >= files.length - (kept.files - 1)));
    // Given up, the second file is read again, to the same bound, and kept once more.
    expect(pdfReadingsKept(files[1]!).kept).toBe(false);
    expect(bound(files[1]!, 'application/pdf') - bound(filler(files[1]!), notPdf('application/pdf'))).toBe(3 * pdfPageTokenBound);
    expect(pdfReadingsKept(files[1]!).kept).toBe(true);
  });
});

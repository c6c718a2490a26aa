import { deflateSync } from 'node:zlib';
import { describe, expect, it } from 'vitest';
import { inflatedByteLimit, pdfPageBound } from '../../../lib/metering/pdf-pages.ts';
import { buildPdf, type PdfOptions } from '../../support/pdf.ts';

const bound = (options: PdfOptions) => pdfPageBound(buildPdf(options).toString('latin1'));

describe('pdfPageBound', () => {
  it('counts the pages of a PDF with a cross-reference table, and of one whose page tree is in a compressed object stream', () => {
    expect(bound({ pages: 3 })).toBe(3);
    const packed = buildPdf({ pages: 100, objectStreams: true });
    // A hundred pages in under 2 KB: held by its bytes, it was held at a few thousand tokens.
    expect(packed.length).toBeLessThan(2_000);
    expect(packed.toString('latin1')).not.toContain('/Type /Page ');
    expect(pdfPageBound(packed.toString('latin1'))).toBe(100);
  });

  it('counts the nodes above the pages too: a bound, never less than the pages', () => {
    // 10 pages under 4 nodes of up to 3: 14 kids in all.
    expect(bound({ pages: 10, fanOut: 3 })).toBe(14);
    expect(bound({ pages: 10, fanOut: 3, objectStreams: true })).toBe(14);
  });

  it('reads names and the space between tokens as a PDF reader does: escaped names, comments, strings that look like syntax', () => {
    expect(bound({ pages: 4, pageTypeName: '/P#61ge', kidsName: '/K#69ds' })).toBe(4);
    expect(bound({ pages: 4, gap: '%a comment\n', objectStreams: true })).toBe(4);
    // Strings holding keywords and brackets, before the page tree: skipped whole (read as syntax, the
    // word "stream" in one would skip what follows as stream data).
    const tricky = ['%PDF-1.7', '1 0 obj << /T (endobj stream >> ] \\) [ obj) /Note <3c3c> >> endobj', '2 0 obj << /Type /Pages /Kids [3 0 R 4 0 R] /Count 2 >> endobj'];
    const pages = ['3 0 obj << /Type /Page /Parent 2 0 R >> endobj', '4 0 obj << /Type /Page /Parent 2 0 R >> endobj'];
    expect(pdfPageBound([...tricky, ...pages].join('\n'))).toBe(2);
  });

  it('leaves out the kids of other trees (destinations, page labels, form fields), which a typical file has by the hundred', () => {
    const names = Array.from({ length: 50 }, (_, index) => `${index + 400} 0 R`).join(' ');
    const extra = [`<< /Kids [${names}] >>`.replace('<<', '<< /Limits [(a) (z)]'), `<< /Nums [0 1] /Kids [${names}] >>`, `<< /FT /Tx /Kids [${names}] >>`];
    expect(bound({ pages: 3, extra })).toBe(3);
    // Untyped, with none of those keys: counted, as a reader walking the tree would take it for a node of it.
    expect(bound({ pages: 3, extra: [`<< /Kids [${names}] >>`] })).toBe(53);
  });

  it('counts every revision a file keeps: an update that adds pages adds to the bound', () => {
    const first = buildPdf({ pages: 2 });
    const update = Buffer.from('\n40 0 obj\n<< /Type /Pages /Kids [41 0 R 42 0 R 43 0 R 44 0 R 45 0 R] /Count 5 >>\nendobj\n', 'latin1');
    expect(pdfPageBound(Buffer.concat([first, update]).toString('latin1'))).toBe(7);
  });

  it('does not trust the syntax to show every object: readers find them by the cross-reference table, wherever they are', () => {
    const tree = (pages: number, first = 3) => [
      `1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj`,
      `2 0 obj << /Type /Pages /Kids [${Array.from({ length: pages }, (_, index) => `${first + index} 0 R`).join(' ')}] /Count ${pages} >> endobj`,
      ...Array.from({ length: pages }, (_, index) => `${first + index} 0 obj << /Type /Page /Parent 2 0 R >> endobj`),
    ].join('\n');
    // The page tree inside the data of a stream nothing uses (the table points into it).
    const hidden = tree(20);
    expect(pdfPageBound(`%PDF-1.7\n90 0 obj << /Length ${hidden.length} >> stream\n${hidden}\nendstream endobj\n`)).toBe(20);
    // A stream whose data says "endstream" and opens a string: read as syntax, the rest of the file is in that string.
    expect(pdfPageBound(`%PDF-1.7\n80 0 obj << /Length 81 0 R >> stream\nq % endstream (\nQ\nendstream endobj\n${tree(20)}`)).toBe(20);
    // A stray token in an object stream's dictionary, which readers skip.
    expect(bound({ pages: 20, objectStreams: true, objectStreamDictionary: '0 /Type /ObjStm /N 22 /First 10 /Filter /FlateDecode' })).toBe(20);
    // A node of the page tree that carries another tree's key: its /Count tells it apart.
    expect(pdfPageBound(tree(20).replace('/Type /Pages', '/T (Pages)'))).toBe(20);
    // Counts that some readers take at their word (pdfinfo and pdftoppm render that many pages).
    expect(pdfPageBound(tree(1).replace('/Count 1', '/Count 50'))).toBe(50);
    expect(pdfPageBound(`%PDF-1.7\n4 0 obj << /Linearized 1 /L 900 /N 500 /T 800 >> endobj\n${tree(1, 5)}`)).toBe(500);
  });

  it('answers null when a node is listed twice in one /Kids array: a reader expands it each time', () => {
    const node = `5 0 obj << /Type /Pages /Parent 2 0 R /Kids [${Array.from({ length: 10 }, (_, index) => `${10 + index} 0 R`).join(' ')}] /Count 10 >> endobj`;
    const pages = Array.from({ length: 10 }, (_, index) => `${10 + index} 0 obj << /Type /Page /Parent 5 0 R >> endobj`);
    const file = ['%PDF-1.7', '2 0 obj << /Type /Pages /Kids [5 0 R 5 0 R] /Count 20 >> endobj', node, ...pages].join('\n');
    expect(pdfPageBound(file)).toBeNull();
  });

  it('answers null for syntax nested past any real file, and stops counting once it has enough', () => {
    expect(pdfPageBound(`%PDF-1.7\n1 0 obj ${'['.repeat(100_000)} endobj`)).toBeNull();
    const thousand = buildPdf({ pages: 1_000, objectStreams: true }).toString('latin1');
    expect(pdfPageBound(thousand)).toBe(1_000);
    expect(pdfPageBound(thousand, 21)).toBeGreaterThanOrEqual(21);
  });

  it('answers null (content of unknown size) when the page tree cannot be read here', () => {
    // Encrypted.
    expect(bound({ pages: 3, trailerExtra: '/Encrypt 9 0 R' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, trailerExtra: '/Encrypt 9 0 R' })).toBeNull();
    // Kids held in an object of their own.
    expect(bound({ pages: 1, extra: ['<< /Type /Pages /Kids 7 0 R /Count 100 >>'] })).toBeNull();
    // An object stream compressed otherwise than by Flate alone, or with a predictor.
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter /LZWDecode' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter [/ASCII85Decode /FlateDecode]' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter /FlateDecode /DecodeParms << /Predictor 12 >>' })).toBeNull();
    // Untyped, known by /N and /First, its filter by the abbreviated name: read.
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/N 5 /First 10 /Filter /Fl' })).toBe(3);
    // Not zlib data.
    const broken = buildPdf({ pages: 3, objectStreams: true }).toString('latin1').replace(/stream\n\x78/, 'stream\n\x00');
    expect(pdfPageBound(broken)).toBeNull();
    // Not a PDF at all, or one with no page tree.
    expect(pdfPageBound('hello')).toBeNull();
    expect(bound({ pages: 0 })).toBeNull();
  });

  it('stops inflating past its limit: a compression bomb is content of unknown size', () => {
    const bomb = deflateSync(Buffer.alloc(inflatedByteLimit + 1_024, 0x20));
    const file = Buffer.concat([
      Buffer.from('%PDF-1.7\n1 0 obj\n<< /Type /Pages /Kids [2 0 R] /Count 1 >>\nendobj\n', 'latin1'),
      Buffer.from(`5 0 obj\n<< /Type /ObjStm /N 1 /First 4 /Filter /FlateDecode /Length ${bomb.length} >>\nstream\n`, 'latin1'),
      bomb,
      Buffer.from('\nendstream\nendobj\n%%EOF\n', 'latin1'),
    ]);
    expect(pdfPageBound(file.toString('latin1'))).toBeNull();
  });
});

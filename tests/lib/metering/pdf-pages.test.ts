import { describe, expect, it } from 'vitest';
import { pdfPageBound } from '../../../lib/metering/pdf-pages.ts';
import { buildPdf, type PdfOptions } from '../../support/pdf.ts';

const bound = (options: PdfOptions) => pdfPageBound(buildPdf(options).toString('latin1'));

/**
 * A file from its body, with a cross-reference table pointing at the first
 * `<n> 0 obj` after a line break for each object number listed (wherever that is:
 * in another stream's data too), and a trailer naming object 1 the catalog.
 */
function withTable(body: string, numbers: number[], trailer = ''): string {
  const file = `%PDF-1.7\n${body}\n`;
  const size = Math.max(...numbers) + 1;
  const offsets = new Map(numbers.map((number) => [number, file.indexOf(`\n${number} 0 obj`) + 1]));
  const rows = Array.from({ length: size }, (_, number) => (offsets.has(number) ? `${String(offsets.get(number)).padStart(10, '0')} 00000 n \n` : '0000000000 65535 f \n'));
  return `${file}xref\n0 ${size}\n${rows.join('')}trailer\n<< /Size ${size} /Root 1 0 R ${trailer} >>\nstartxref\n${file.length}\n%%EOF\n`;
}

/** A catalog (1), a page tree (2) of `pages` pages (3, 4, …), as lines of objects. */
const tree = (pages: number) => [
  '1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj',
  `2 0 obj << /Type /Pages /Kids [${Array.from({ length: pages }, (_, index) => `${3 + index} 0 R`).join(' ')}] /Count ${pages} >> endobj`,
  ...Array.from({ length: pages }, (_, index) => `${3 + index} 0 obj << /Type /Page /Parent 2 0 R >> endobj`),
];
const numbers = (pages: number) => Array.from({ length: pages + 2 }, (_, index) => index + 1);

describe('pdfPageBound', () => {
  it('counts the pages of a PDF with a cross-reference table, and of one whose page tree is in a compressed object stream', () => {
    expect(bound({ pages: 3 })).toBe(3);
    const packed = buildPdf({ pages: 100, objectStreams: true });
    // A hundred pages in under 2 KB: held by its bytes, it was held at a few thousand tokens.
    expect(packed.length).toBeLessThan(2_000);
    expect(packed.toString('latin1')).not.toContain('/Type /Page ');
    expect(pdfPageBound(packed.toString('latin1'))).toBe(100);
  });

  it('walks the tree as a reader does: pages under intermediate nodes, names escaped, comments between tokens', () => {
    expect(bound({ pages: 10, fanOut: 3 })).toBe(10);
    expect(bound({ pages: 10, fanOut: 3, objectStreams: true })).toBe(10);
    expect(bound({ pages: 4, pageTypeName: '/P#61ge', kidsName: '/K#69ds' })).toBe(4);
    expect(bound({ pages: 4, gap: '%a comment\n', objectStreams: true })).toBe(4);
    // Kids given by reference, as an array object of their own.
    const lines = tree(3).map((line) => line.replace('/Kids [3 0 R 4 0 R 5 0 R]', '/Kids 9 0 R'));
    expect(pdfPageBound(withTable([...lines, '9 0 obj [3 0 R 4 0 R 5 0 R] endobj'].join('\n'), [...numbers(3), 9]))).toBe(3);
  });

  it('counts what the catalog\'s tree reaches, not what the file\'s words show: objects where the syntax hides them, and none of another tree', () => {
    // The page tree inside the data of a stream nothing uses, the table pointing into it.
    const hidden = tree(20).join('\n');
    expect(pdfPageBound(withTable(`90 0 obj << /Length ${hidden.length + 2} >> stream\n\n${hidden}\n\nendstream endobj`, numbers(20)))).toBe(20);
    // After a stream whose data says "endstream" and opens a string: read as syntax, the rest of the file is in that string.
    expect(pdfPageBound(withTable(`80 0 obj << /Length 14 >> stream\nq % endstream (\nendstream endobj\n${tree(20).join('\n')}`, numbers(20)))).toBe(20);
    // Kids of other trees (destinations, form fields) and objects the tree does not reach.
    const names = `<< /Limits [(a) (z)] /Kids [${Array.from({ length: 50 }, (_, index) => `${index + 400} 0 R`).join(' ')}] >>`;
    expect(bound({ pages: 3, extra: [names, '<< /Type /Pages /Kids [1 0 R 2 0 R 3 0 R 4 0 R] /Count 4 >>'] })).toBe(3);
  });

  it('counts a node listed twice as twice its pages, as readers expand it, and takes a /Count or a linearized page count at its word', () => {
    const node = `5 0 obj << /Type /Pages /Parent 2 0 R /Kids [${Array.from({ length: 10 }, (_, index) => `${10 + index} 0 R`).join(' ')}] /Count 10 >> endobj`;
    const pages = Array.from({ length: 10 }, (_, index) => `${10 + index} 0 obj << /Type /Page /Parent 5 0 R >> endobj`);
    const shared = ['1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj', '2 0 obj << /Type /Pages /Kids [5 0 R 5 0 R] >> endobj', node, ...pages];
    expect(pdfPageBound(withTable(shared.join('\n'), [1, 2, 5, ...Array.from({ length: 10 }, (_, index) => 10 + index)]))).toBe(20);
    // Some readers (pdfinfo, pdftoppm) report and render as many pages as the root's /Count or a linearized file's /N says.
    expect(pdfPageBound(withTable(tree(1).join('\n').replace('/Count 1', '/Count 50'), numbers(1)))).toBe(50);
    // A count is a whole number of pages, and one past any real file's is refused.
    expect(pdfPageBound(withTable(tree(1).join('\n').replace('/Count 1', '/Count 20.5'), numbers(1)))).toBe(21);
    expect(pdfPageBound(withTable(tree(1).join('\n').replace('/Count 1', `/Count 1${'0'.repeat(400)}`), numbers(1)))).toBeNull();
    expect(pdfPageBound(withTable(`9 0 obj << /Linearized 1 /L 900 /N 500 /T 800 >> endobj\n${tree(1).join('\n')}`, [...numbers(1), 9]))).toBe(500);
  });

  it('stops once it has enough pages', () => {
    const thousand = buildPdf({ pages: 1_000, objectStreams: true }).toString('latin1');
    expect(pdfPageBound(thousand)).toBe(1_000);
    expect(pdfPageBound(thousand, 21)).toBeGreaterThanOrEqual(21);
  });

  it('answers null (content of unknown size) for what a reader would have to repair or guess at', () => {
    // Encrypted.
    expect(bound({ pages: 3, trailerExtra: '/Encrypt 9 0 R' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, trailerExtra: '/Encrypt 9 0 R' })).toBeNull();
    // No cross-reference table, or one that points elsewhere than at the objects.
    expect(pdfPageBound(`%PDF-1.7\n${tree(3).join('\n')}\n%%EOF`)).toBeNull();
    expect(pdfPageBound(buildPdf({ pages: 3 }).toString('latin1').replace(/startxref\n(\d+)/, (_, at: string) => `startxref\n${Number(at) + 7}`))).toBeNull();
    // An object defined again later than the table says: readers that rebuild a table they find broken take the last.
    const later = `${tree(1).join('\n')}\n2 0 obj << /Type /Pages /Kids [${Array.from({ length: 20 }, (_, index) => `${30 + index} 0 R`).join(' ')}] /Count 20 >> endobj`;
    expect(pdfPageBound(withTable(later, numbers(1)))).toBeNull();
    // startxref outside the last kilobyte, where some readers do not look for it.
    expect(pdfPageBound(`${withTable(tree(1).join('\n'), numbers(1))}${' '.repeat(2048)}`)).toBeNull();
    // A key given twice: readers differ on which counts.
    expect(pdfPageBound(withTable(tree(2).join('\n').replace('/Count 2', '/Count 2 /Kids [3 0 R]'), numbers(2)))).toBeNull();
    // A reference to another generation than the table's (readers that key objects by both find an older object).
    expect(pdfPageBound(withTable(tree(2).join('\n').replace('/Pages 2 0 R', '/Pages 2 1 R'), numbers(2)))).toBeNull();
    // A page with kids: readers differ on whether it is a page or a node.
    expect(pdfPageBound(withTable(tree(2).join('\n').replace('3 0 obj << /Type /Page /Parent 2 0 R', '3 0 obj << /Type /Page /Parent 2 0 R /Kids []'), numbers(2)))).toBeNull();
    // A loop in the tree.
    expect(pdfPageBound(withTable(tree(2).join('\n').replace('/Kids [3 0 R 4 0 R]', '/Kids [3 0 R 2 0 R]'), numbers(2)))).toBeNull();
    // An object stream compressed otherwise than by Flate, or with a predictor other than PNG's.
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter /LZWDecode' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter [/ASCII85Decode /FlateDecode]' })).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, objectStreamDictionary: '/Type /ObjStm /N 5 /First 10 /Filter /FlateDecode /DecodeParms << /Predictor 2 >>' })).toBeNull();
    // Not zlib data.
    const broken = buildPdf({ pages: 3, objectStreams: true }).toString('latin1').replace(/stream\n\x78/, 'stream\n\x00');
    expect(pdfPageBound(broken)).toBeNull();
    // Not a PDF at all, or one with no page.
    expect(pdfPageBound('hello')).toBeNull();
    expect(bound({ pages: 0 })).toBeNull();
  });

  it('stops inflating past its limit: a compression bomb is content of unknown size', () => {
    // The page tree in an object stream beside 5 MB of spaces, inflated from a few kilobytes.
    const file = buildPdf({ pages: 3, objectStreams: true, extra: [`(${' '.repeat(5 * 1024 * 1024)})`] });
    expect(file.length).toBeLessThan(20_000);
    expect(pdfPageBound(file.toString('latin1'))).toBeNull();
    expect(bound({ pages: 3, objectStreams: true, extra: [`(${' '.repeat(1024 * 1024)})`] })).toBe(3);
  });
});

import { deflateSync } from 'node:zlib';

/**
 * Builds PDFs for the tests of holds on inline PDFs: a page tree of `pages` pages
 * sharing one content stream, with a cross-reference table, or (objectStreams) with
 * the catalog, the page tree and the pages in a Flate-compressed object stream and a
 * cross-reference stream, as current producers write them. `fanOut` puts the pages
 * under intermediate nodes of that many kids each. `pageTypeName`, `kidsName` and
 * `gap` spell the names and the space after them, for files that escape names and
 * put comments between tokens. `extra` adds objects (after the pages) and
 * `trailerExtra` entries to the trailer.
 */
export interface PdfOptions {
  pages: number;
  objectStreams?: boolean;
  fanOut?: number;
  pageTypeName?: string;
  kidsName?: string;
  gap?: string;
  extra?: string[];
  trailerExtra?: string;
  objectStreamDictionary?: string;
}

export function buildPdf(options: PdfOptions): Buffer {
  const { pages, fanOut, pageTypeName = '/Page', kidsName = '/Kids', gap = ' ', extra = [] } = options;
  // Object numbers: 1 catalog, 2 root of the page tree, 3 content stream, then intermediate nodes, pages, extras.
  const objects = new Map<number, string>();
  const content = 'BT /F1 12 Tf 72 720 Td (A page) Tj ET';
  const pageNumbers: number[] = [];
  let next = 4;
  const groups: number[][] = [];
  const nodeNumbers: number[] = [];
  if (fanOut) {
    for (let start = 0; start < pages; start += fanOut) nodeNumbers.push(next++);
  }
  for (let index = 0; index < pages; index += 1) pageNumbers.push(next++);
  if (fanOut) {
    nodeNumbers.forEach((node, group) => {
      const kids = pageNumbers.slice(group * fanOut, (group + 1) * fanOut);
      groups.push(kids);
      objects.set(node, `<< /Type /Pages /Parent 2 0 R ${kidsName}${gap}[${kids.map((kid) => `${kid} 0 R`).join(' ')}] /Count ${kids.length} >>`);
    });
  }
  const rootKids = fanOut ? nodeNumbers : pageNumbers;
  objects.set(1, '<< /Type /Catalog /Pages 2 0 R >>');
  objects.set(2, `<< /Type /Pages ${kidsName}${gap}[${rootKids.map((kid) => `${kid} 0 R`).join(' ')}] /Count ${pages} >>`);
  pageNumbers.forEach((page, index) => {
    const parent = fanOut ? nodeNumbers[Math.floor(index / fanOut)] : 2;
    objects.set(page, `<< /Type${gap}${pageTypeName} /Parent ${parent} 0 R /MediaBox [0 0 612 792] /Contents 3 0 R >>`);
  });
  for (const object of extra) objects.set(next++, object);
  const size = next;

  const parts: Buffer[] = [Buffer.from('%PDF-1.7\n%\xe2\xe3\xcf\xd3\n', 'latin1')];
  let offset = parts[0]!.length;
  const offsets = new Map<number, number>();
  const write = (text: string | Buffer) => {
    const bytes = typeof text === 'string' ? Buffer.from(text, 'latin1') : text;
    parts.push(bytes);
    offset += bytes.length;
  };
  const writeObject = (number: number, body: string | Buffer) => {
    offsets.set(number, offset);
    write(`${number} 0 obj\n`);
    write(body);
    write('\nendobj\n');
  };
  const stream = (dictionary: string, data: Buffer) => Buffer.concat([Buffer.from(`<< ${dictionary} /Length ${data.length} >>\nstream\n`, 'latin1'), data, Buffer.from('\nendstream', 'latin1')]);
  writeObject(3, stream('', Buffer.from(content, 'latin1')));

  if (!options.objectStreams) {
    for (const [number, body] of [...objects].sort(([a], [b]) => a - b)) writeObject(number, body);
    const xref = offset;
    write(`xref\n0 ${size}\n0000000000 65535 f \n`);
    for (let number = 1; number < size; number += 1) write(`${String(offsets.get(number) ?? 0).padStart(10, '0')} 00000 n \n`);
    write(`trailer\n<< /Size ${size} /Root 1 0 R ${options.trailerExtra ?? ''} >>\nstartxref\n${xref}\n%%EOF\n`);
    return Buffer.concat(parts);
  }

  // The objects (all but the content stream) in one object stream: a header of
  // "number offset" pairs, then the objects one after another.
  const packed = [...objects].sort(([a], [b]) => a - b);
  let header = '';
  let body = '';
  for (const [number, text] of packed) {
    header += `${number} ${body.length} `;
    body += `${text}\n`;
  }
  const objectStream = size;
  const compressed = deflateSync(Buffer.from(header + body, 'latin1'), { level: 9 });
  writeObject(objectStream, stream(options.objectStreamDictionary ?? `/Type /ObjStm /N ${packed.length} /First ${header.length} /Filter /FlateDecode`, compressed));
  // The cross-reference stream: type 1 (offset) for the content and object streams, type 2 (in the object stream) for the rest.
  const xrefNumber = size + 1;
  const entries = Buffer.alloc((size + 2) * 7);
  const entry = (number: number, type: number, field2: number, field3: number) => {
    entries.writeUInt8(type, number * 7);
    entries.writeUInt32BE(field2, number * 7 + 1);
    entries.writeUInt16BE(field3, number * 7 + 5);
  };
  entry(0, 0, 0, 65535);
  entry(3, 1, offsets.get(3)!, 0);
  entry(objectStream, 1, offsets.get(objectStream)!, 0);
  packed.forEach(([number], index) => entry(number, 2, objectStream, index));
  const xref = offset;
  entry(xrefNumber, 1, xref, 0);
  writeObject(xrefNumber, stream(`/Type /XRef /Size ${size + 2} /W [1 4 2] /Root 1 0 R ${options.trailerExtra ?? ''}`, entries));
  write(`startxref\n${xref}\n%%EOF\n`);
  return Buffer.concat(parts);
}

import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createNetServer, type AddressInfo, type Socket } from 'node:net';
import { brotliCompressSync, deflateSync, gzipSync } from 'node:zlib';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createNodeFetch } from '../../node/http-fetch.ts';

// The Node.js function's HTTP client against a real node:http server: what the
// gateway relies on fetch for, it must do the same way.

interface Seen {
  method: string;
  url: string;
  headers: IncomingMessage['headers'];
  body: string;
}

let server: Server;
let base: string;
const seen: Seen[] = [];
const sockets = new Set<Socket>();
const closedRequests: string[] = [];

const handlers: Record<string, (request: IncomingMessage, response: ServerResponse, body: string) => void> = {
  '/echo': (request, response, body) => {
    response.writeHead(201, { 'content-type': 'application/json', 'set-cookie': ['a=1', 'b=2'], 'x-upstream': 'yes' });
    response.end(JSON.stringify({ method: request.method, body, contentType: request.headers['content-type'] }));
  },
  '/gzip': (_request, response) => {
    response.writeHead(200, { 'content-encoding': 'gzip', 'content-type': 'text/plain' });
    response.end(gzipSync('compressed with gzip'));
  },
  '/br': (_request, response) => {
    response.writeHead(200, { 'content-encoding': 'br', 'content-type': 'text/plain' });
    response.end(brotliCompressSync('compressed with brotli'));
  },
  '/deflate': (_request, response) => {
    response.writeHead(200, { 'content-encoding': 'deflate', 'content-type': 'text/plain' });
    response.end(deflateSync('compressed with deflate'));
  },
  '/empty': (_request, response) => {
    response.writeHead(204);
    response.end();
  },
  '/stream': (request, response) => {
    response.writeHead(200, { 'content-type': 'text/event-stream' });
    response.write('data: first\n\n');
    const timer = setTimeout(() => response.end('data: last\n\n'), 300);
    request.socket.once('close', () => {
      clearTimeout(timer);
      closedRequests.push('/stream');
    });
  },
  '/slow': (request, response) => {
    const timer = setTimeout(() => response.end('late'), 2_000);
    request.socket.once('close', () => {
      clearTimeout(timer);
      closedRequests.push('/slow');
    });
  },
  '/redirect-303': (_request, response) => {
    response.writeHead(303, { location: '/echo' });
    response.end();
  },
  '/redirect-307': (_request, response) => {
    response.writeHead(307, { location: `${base}/echo` });
    response.end();
  },
  '/redirect-elsewhere': (_request, response) => {
    // The same server under another origin (localhost instead of 127.0.0.1).
    response.writeHead(307, { location: `${base.replace('127.0.0.1', 'localhost')}/echo` });
    response.end();
  },
  '/redirect-broken': (_request, response) => {
    response.writeHead(302, { location: 'http://[not an address' });
    response.end();
  },
  '/status-600': (_request, response) => {
    response.writeHead(600);
    response.end('odd');
  },
  '/corrupt-gzip': (request, response) => {
    response.writeHead(200, { 'content-encoding': 'gzip', 'content-type': 'text/plain' });
    response.write(Buffer.from('this is not gzip at all'));
    // Kept open: the client must give the connection up itself.
    request.socket.once('close', () => closedRequests.push('/corrupt-gzip'));
  },
};

beforeAll(async () => {
  server = createServer((request, response) => {
    let body = '';
    request.setEncoding('utf8');
    request.on('data', (chunk: string) => (body += chunk));
    request.on('end', () => {
      seen.push({ method: request.method ?? '', url: request.url ?? '', headers: request.headers, body });
      const handler = handlers[new URL(request.url ?? '/', 'http://x').pathname];
      if (handler) handler(request, response, body);
      else {
        response.writeHead(404);
        response.end('no such path');
      }
    });
  });
  server.on('connection', (socket: Socket) => {
    sockets.add(socket);
    socket.once('close', () => sockets.delete(socket));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(async () => {
  server.closeAllConnections();
  await new Promise((resolve) => server.close(resolve));
});

const nodeFetch = createNodeFetch();

describe('node:http fetch', () => {
  it('sends the method, headers and body, and answers status, headers (every set-cookie) and body', async () => {
    const response = await nodeFetch(`${base}/echo`, { method: 'POST', headers: { 'content-type': 'application/json', 'x-custom': 'v' }, body: '{"a":1}' });
    expect(response.status).toBe(201);
    expect(response.headers.get('x-upstream')).toBe('yes');
    expect(response.headers.getSetCookie()).toEqual(['a=1', 'b=2']);
    expect(await response.json()).toEqual({ method: 'POST', body: '{"a":1}', contentType: 'application/json' });
    const request = seen.at(-1)!;
    expect(request.headers['x-custom']).toBe('v');
    expect(request.headers['content-length']).toBe('7');
    expect(request.headers['accept-encoding']).toBe('gzip, deflate, br');
  });

  it('sends byte bodies and URLSearchParams, and gives a string body a text content type as fetch does', async () => {
    await nodeFetch(`${base}/echo`, { method: 'POST', body: new TextEncoder().encode('bytes') });
    expect(seen.at(-1)!.body).toBe('bytes');
    await nodeFetch(`${base}/echo`, { method: 'POST', body: new URLSearchParams({ q: 'x y' }) });
    expect(seen.at(-1)!.body).toBe('q=x+y');
    await nodeFetch(`${base}/echo`, { method: 'POST', body: 'plain' });
    expect(seen.at(-1)!.headers['content-type']).toBe('text/plain;charset=UTF-8');
  });

  it('decodes gzip, brotli and deflate bodies, keeping the content-encoding header, as fetch does', async () => {
    for (const [path, text] of [['/gzip', 'compressed with gzip'], ['/br', 'compressed with brotli'], ['/deflate', 'compressed with deflate']] as const) {
      const [mine, theirs] = await Promise.all([nodeFetch(`${base}${path}`), fetch(`${base}${path}`)]);
      expect(await mine.text()).toBe(text);
      expect(await theirs.text()).toBe(text);
      expect(mine.headers.get('content-encoding')).toBe(theirs.headers.get('content-encoding'));
    }
  });

  it('answers a 204 with no body', async () => {
    const response = await nodeFetch(`${base}/empty`, { method: 'POST', body: '{}' });
    expect(response.status).toBe(204);
    expect(response.body).toBeNull();
  });

  it('streams the body as it arrives', async () => {
    const started = performance.now();
    const response = await nodeFetch(`${base}/stream`);
    const reader = response.body!.getReader();
    const first = await reader.read();
    expect(new TextDecoder().decode(first.value)).toBe('data: first\n\n');
    expect(performance.now() - started).toBeLessThan(250);
    let rest = '';
    for (let chunk = await reader.read(); !chunk.done; chunk = await reader.read()) rest += new TextDecoder().decode(chunk.value);
    expect(rest).toBe('data: last\n\n');
  });

  it('rejects with the signal\'s reason when aborted before the headers, and closes the connection', async () => {
    const controller = new AbortController();
    const pending = nodeFetch(`${base}/slow`, { signal: controller.signal });
    setTimeout(() => controller.abort(new Error('given up')), 50);
    await expect(pending).rejects.toThrow('given up');
    await expect.poll(() => closedRequests.includes('/slow')).toBe(true);
    await expect(nodeFetch(`${base}/echo`, { signal: AbortSignal.abort() })).rejects.toThrow();
  });

  it('errors the body when aborted while it is read, and closes the connection', async () => {
    closedRequests.length = 0;
    const controller = new AbortController();
    const response = await nodeFetch(`${base}/stream`, { signal: controller.signal });
    const reader = response.body!.getReader();
    await reader.read();
    controller.abort(new Error('client left'));
    await expect(reader.read()).rejects.toThrow();
    await expect.poll(() => closedRequests.includes('/stream')).toBe(true);
  });

  it('closes the connection when the body is cancelled', async () => {
    closedRequests.length = 0;
    const response = await nodeFetch(`${base}/stream`);
    await response.body!.cancel();
    await expect.poll(() => closedRequests.includes('/stream')).toBe(true);
  });

  it('follows redirects as fetch does: 303 becomes a GET without a body, 307 resends the POST', async () => {
    const viaSeeOther = await nodeFetch(`${base}/redirect-303`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"x":1}' });
    expect(await viaSeeOther.json()).toEqual({ method: 'GET', body: '' });
    const viaTemporary = await nodeFetch(`${base}/redirect-307`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"x":1}' });
    expect(await viaTemporary.json()).toEqual({ method: 'POST', body: '{"x":1}', contentType: 'application/json' });
  });

  it('never sends credentials to another origin when redirected; manual and error redirects as fetch has them', async () => {
    const credentials = { authorization: 'Bearer secret', apikey: 'service-key', 'x-api-key': 'key', 'content-type': 'application/json' };
    await (await nodeFetch(`${base}/redirect-307`, { method: 'POST', headers: credentials, body: '{}' })).text();
    expect(seen.at(-1)!.headers.authorization).toBe('Bearer secret');
    const elsewhere = await nodeFetch(`${base}/redirect-elsewhere`, { method: 'POST', headers: credentials, body: '{}' });
    expect(((await elsewhere.json()) as { method: string }).method).toBe('POST');
    const request = seen.at(-1)!;
    expect(request.headers.host).toMatch(/^localhost:/);
    expect([request.headers.authorization, request.headers.apikey, request.headers['x-api-key']]).toEqual([undefined, undefined, undefined]);
    const manual = await nodeFetch(`${base}/redirect-303`, { redirect: 'manual' });
    expect(manual.status).toBe(303);
    await expect(nodeFetch(`${base}/redirect-303`, { redirect: 'error' })).rejects.toThrow(TypeError);
  });

  it('fails the fetch, and nothing else, for an answer fetch cannot represent: a status of 600, a malformed redirect', async () => {
    await expect(nodeFetch(`${base}/status-600`)).rejects.toThrow(TypeError);
    await expect(nodeFetch(`${base}/redirect-broken`)).rejects.toThrow(TypeError);
    expect((await nodeFetch(`${base}/echo`, { method: 'POST', body: '{}' })).status).toBe(201);
  });

  it('a corrupt compressed body fails the read and frees the connection', async () => {
    closedRequests.length = 0;
    const response = await nodeFetch(`${base}/corrupt-gzip`);
    await expect(response.text()).rejects.toThrow();
    await expect.poll(() => closedRequests.includes('/corrupt-gzip')).toBe(true);
  });

  it('sends once more on a new connection when a kept-alive one turns out closed as it is reused', async () => {
    // A server that answers the first request of each connection and drops the connection at the second.
    let connections = 0;
    const flaky = createNetServer((socket) => {
      connections++;
      let requests = 0;
      socket.on('data', (chunk) => {
        if (!chunk.toString('latin1').includes('\r\n\r\n')) return;
        requests++;
        if (requests === 1) socket.write('HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: keep-alive\r\n\r\nok');
        else socket.destroy();
      });
    });
    await new Promise<void>((resolve) => flaky.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(flaky.address() as AddressInfo).port}/`;
    try {
      const client = createNodeFetch();
      expect(await (await client(url)).text()).toBe('ok');
      expect(await (await client(url)).text()).toBe('ok');
      expect(connections).toBe(2);
    } finally {
      await new Promise((resolve) => flaky.close(resolve));
    }
  });

  it('keeps connections alive between calls', async () => {
    const before = sockets.size;
    for (let index = 0; index < 5; index++) await (await nodeFetch(`${base}/echo`, { method: 'POST', body: '{}' })).text();
    expect(sockets.size).toBeLessThanOrEqual(before + 1);
  });

  it('rejects with a TypeError when nothing listens, as fetch does', async () => {
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const { port } = closed.address() as AddressInfo;
    await new Promise((resolve) => closed.close(resolve));
    await expect(nodeFetch(`http://127.0.0.1:${port}/`)).rejects.toThrow(TypeError);
  });

  it('hands what it does not send itself (a streamed request body) to the runtime\'s fetch', async () => {
    const body = new ReadableStream({
      start(controller) {
        controller.enqueue(new TextEncoder().encode('streamed'));
        controller.close();
      },
    });
    const response = await nodeFetch(`${base}/echo`, { method: 'POST', body, duplex: 'half' } as RequestInit);
    expect(((await response.json()) as { body: string }).body).toBe('streamed');
  });
});

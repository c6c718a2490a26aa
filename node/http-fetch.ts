// A fetch for the Node.js runtime built on node:http(s), for the gateway's own
// outbound calls (PostgREST, Upstash, the model providers). Node's global
// fetch (undici) spends several times more CPU per call than node:http on the
// small JSON round trips the gateway makes two or three of per request; this
// one keeps the same contract for what the gateway sends: string or byte
// bodies, an AbortSignal (before and after the headers), a streamed response
// body, gzip/deflate/br decoded as fetch decodes them, redirects followed
// (or not: `redirect: 'manual' | 'error'`) without credentials to another
// origin, and a failed fetch for whatever the server answers that fetch
// cannot represent. Anything else (a streamed request body, a Request object
// with a body) goes to the global fetch. Only the Node.js entry and the bench use it; code in
// lib/ and api/index.ts stays on web-standard fetch for the edge.
import { Agent as HttpAgent, request as httpRequest, type IncomingMessage } from 'node:http';
import { Agent as HttpsAgent, request as httpsRequest } from 'node:https';
import { createBrotliDecompress, createGunzip, createInflate, constants as zlib } from 'node:zlib';
import { pipeline, type Readable } from 'node:stream';
import { nullBodyStatuses } from '../lib/fetch-with-deadline.ts';

const redirectStatuses = new Set([301, 302, 303, 307, 308]);
const maxRedirects = 20;
const idleSocketMs = 4_000;
/** Headers that carry credentials: never sent on to another origin by a redirect. */
const credentialHeaders = ['authorization', 'proxy-authorization', 'cookie', 'apikey', 'x-api-key', 'x-goog-api-key'];

type Body = string | Uint8Array | null;

interface Sent {
  method: string;
  headers: Headers;
  body: Body;
  signal: AbortSignal | null | undefined;
  redirect: RequestRedirect;
}

/** The body as bytes or a string, or `undefined` when only the global fetch can send it. */
function simpleBody(body: BodyInit | null | undefined): Body | undefined {
  if (body == null) return null;
  if (typeof body === 'string') return body;
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  if (ArrayBuffer.isView(body)) return new Uint8Array(body.buffer, body.byteOffset, body.byteLength);
  if (body instanceof URLSearchParams) return body.toString();
  return undefined;
}

function decoded(response: IncomingMessage): Readable {
  const encoding = (response.headers['content-encoding'] ?? '').trim().toLowerCase();
  // Lenient flushing, as browsers and undici are: a body cut at a block boundary still yields what arrived.
  const flush = { flush: zlib.Z_SYNC_FLUSH, finishFlush: zlib.Z_SYNC_FLUSH };
  const decoder =
    encoding === 'gzip' || encoding === 'x-gzip'
      ? createGunzip(flush)
      : encoding === 'deflate'
        ? createInflate(flush)
        : encoding === 'br'
          ? createBrotliDecompress({ flush: zlib.BROTLI_OPERATION_FLUSH, finishFlush: zlib.BROTLI_OPERATION_FLUSH })
          : undefined;
  if (!decoder) return response;
  // Either side failing ends both: a corrupt body frees its connection.
  pipeline(response, decoder, () => {});
  return decoder;
}

/** A web stream over a Node stream, with backpressure: the source is paused while the reader is behind. */
function webStream(source: Readable, onCancel: (reason: unknown) => void): ReadableStream<Uint8Array> {
  // Once the reader cancelled, or the stream closed or failed, nothing more reaches the controller.
  let finished = false;
  return new ReadableStream<Uint8Array>(
    {
      start(controller) {
        source.on('data', (chunk: Buffer) => {
          if (finished) return;
          controller.enqueue(new Uint8Array(chunk.buffer, chunk.byteOffset, chunk.byteLength));
          if ((controller.desiredSize ?? 1) <= 0) source.pause();
        });
        source.once('end', () => {
          if (finished) return;
          finished = true;
          controller.close();
        });
        source.on('error', (error) => {
          if (finished) return;
          finished = true;
          controller.error(error);
        });
      },
      pull() {
        source.resume();
      },
      cancel(reason) {
        finished = true;
        onCancel(reason);
      },
    },
    { highWaterMark: 16 },
  );
}

function abortError(signal: AbortSignal): unknown {
  return signal.reason ?? new DOMException('This operation was aborted', 'AbortError');
}

/** Sockets kept open per host. */
const maxSockets = 256;

export function createNodeFetch(): typeof fetch {
  // Idle sockets close after 4 s (undici's default) or sooner when the server's Keep-Alive says so,
  // so a socket the server has already dropped is rarely reused.
  const agents = {
    'http:': new HttpAgent({ keepAlive: true, maxSockets, timeout: idleSocketMs }),
    'https:': new HttpsAgent({ keepAlive: true, maxSockets, timeout: idleSocketMs }),
  };

  function send(url: URL, init: Sent, redirects: number, retried = false): Promise<Response> {
    const { method, headers, body, signal, redirect } = init;
    return new Promise<Response>((resolve, reject) => {
      if (signal?.aborted) return reject(abortError(signal));
      const outgoing: Record<string, string> = {};
      headers.forEach((value, name) => (outgoing[name] = value));
      outgoing['accept-encoding'] ??= 'gzip, deflate, br';
      if (body !== null) outgoing['content-length'] = String(typeof body === 'string' ? Buffer.byteLength(body) : body.byteLength);
      const secure = url.protocol === 'https:';
      let settled = false;
      let response: IncomingMessage | undefined;
      const finish = () => signal?.removeEventListener('abort', onAbort);
      const fail = (error: unknown) => {
        finish();
        request.destroy();
        response?.destroy();
        if (settled) return;
        settled = true;
        reject(new TypeError('fetch failed', { cause: error }));
      };
      const onAbort = () => {
        const reason = abortError(signal!);
        request.destroy(reason as Error);
        response?.destroy(reason as Error);
        if (!settled) {
          settled = true;
          reject(reason);
        }
      };
      const onResponse = (incoming: IncomingMessage) => {
        response = incoming;
        incoming.once('close', finish);
        const status = incoming.statusCode ?? 0;
        const location = incoming.headers.location;
        if (redirectStatuses.has(status) && location !== undefined && redirect !== 'manual') {
          incoming.resume();
          finish();
          // A Location that is no URL throws here: the fetch fails (see the catch below).
          const target = new URL(location, url);
          settled = true;
          if (redirect === 'error') return reject(new TypeError('fetch failed: redirected where redirects are refused'));
          if (redirects >= maxRedirects) return reject(new TypeError('fetch failed: too many redirects'));
          if (target.protocol !== 'http:' && target.protocol !== 'https:') return reject(new TypeError(`fetch failed: redirected to ${target.protocol}`));
          // 303, and 301/302 after a POST, become a GET without a body, as fetch does.
          const asGet = status === 303 || ((status === 301 || status === 302) && method === 'POST');
          const next = new Headers(headers);
          if (asGet) for (const name of ['content-type', 'content-length', 'content-encoding']) next.delete(name);
          if (target.origin !== url.origin) for (const name of credentialHeaders) next.delete(name);
          send(target, { ...init, method: asGet ? 'GET' : method, headers: next, body: asGet ? null : body }, redirects + 1).then(resolve, reject);
          return;
        }
        const responseHeaders = new Headers();
        for (let index = 0; index < incoming.rawHeaders.length; index += 2) {
          responseHeaders.append(incoming.rawHeaders[index]!, incoming.rawHeaders[index + 1]!);
        }
        let stream: ReadableStream<Uint8Array> | null = null;
        if (nullBodyStatuses.has(status) || method === 'HEAD') incoming.resume();
        else {
          const source = decoded(incoming);
          stream = webStream(source, (reason) => {
            finish();
            source.destroy();
            incoming.destroy(reason instanceof Error ? reason : undefined);
          });
        }
        // A status fetch cannot represent (outside 200-599) is a failed fetch, as with undici.
        const answer = new Response(stream, { status, statusText: incoming.statusMessage ?? '', headers: responseHeaders });
        settled = true;
        resolve(answer);
      };
      const request = (secure ? httpsRequest : httpRequest)(url, { method, headers: outgoing, agent: agents[secure ? 'https:' : 'http:'] }, (incoming) => {
        try {
          onResponse(incoming);
        } catch (error) {
          fail(error);
        }
      });
      request.on('error', (error: NodeJS.ErrnoException) => {
        finish();
        if (settled) return;
        // A kept-alive socket the server closed as it was reused: nothing reached the server, so once more on a new one.
        if (!retried && request.reusedSocket && error.code === 'ECONNRESET' && !signal?.aborted) {
          settled = true;
          send(url, init, redirects, true).then(resolve, reject);
          return;
        }
        settled = true;
        reject(new TypeError('fetch failed', { cause: error }));
      });
      signal?.addEventListener('abort', onAbort, { once: true });
      request.end(body ?? undefined);
    });
  }

  return function nodeFetch(input, init) {
    if (input instanceof Request && (init?.body !== undefined || input.body !== null)) return fetch(input, init);
    const body = simpleBody(init?.body);
    if (body === undefined) return fetch(input, init);
    const url = new URL(input instanceof Request ? input.url : String(input));
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return fetch(input, init);
    const headers = new Headers(input instanceof Request ? input.headers : undefined);
    new Headers(init?.headers).forEach((value, name) => headers.set(name, value));
    if (typeof body === 'string' && !headers.has('content-type')) headers.set('content-type', 'text/plain;charset=UTF-8');
    const method = (init?.method ?? (input instanceof Request ? input.method : 'GET')).toUpperCase();
    const signal = init?.signal ?? (input instanceof Request ? input.signal : undefined);
    const redirect = init?.redirect ?? (input instanceof Request ? input.redirect : 'follow');
    return send(url, { method, headers, body, signal, redirect }, 0);
  };
}

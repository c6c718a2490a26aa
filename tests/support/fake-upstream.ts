import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

export type Provider = 'openai' | 'anthropic' | 'google';

const fixtureRoot = join(import.meta.dirname, '../fixtures');

export function readFixture(name: string, provider: Provider = 'openai'): string {
  return readFileSync(join(fixtureRoot, provider, name), 'utf8');
}

const errorBodies: Record<Provider, (status: number) => unknown> = {
  openai: (status) => ({ error: { message: `Scripted failure ${status}`, type: 'server_error', param: null, code: null } }),
  anthropic: (status) => ({ type: 'error', error: { type: status === 529 ? 'overloaded_error' : status >= 500 ? 'api_error' : 'invalid_request_error', message: `Scripted failure ${status}` } }),
  google: (status) => ({ error: { code: status, message: `Scripted failure ${status}`, status: status >= 500 ? 'INTERNAL' : 'INVALID_ARGUMENT' } }),
};

/** Which API a request is for, its model and whether it streams, from its path and body. */
function classify(path: string, body: Record<string, unknown>): { provider: Provider; model: string; stream: boolean } {
  if (path.startsWith('/v1/messages')) return { provider: 'anthropic', model: String(body.model ?? ''), stream: body.stream === true };
  const gemini = /^\/v1beta\/models\/([^:?]+):(\w+)/.exec(path);
  if (gemini) return { provider: 'google', model: decodeURIComponent(gemini[1]!), stream: gemini[2] === 'streamGenerateContent' };
  return { provider: 'openai', model: String(body.model ?? ''), stream: body.stream === true };
}

/** How the fake answers requests for one upstream model. */
export interface Scenario {
  /** Fixture base name: `<name>.chunks.txt` for streams, `<name>.json` otherwise. */
  fixture: string;
  /** Answer with this HTTP status and an error body in the provider's shape instead. */
  status?: number;
  /** A Retry-After header on that error answer. */
  retryAfter?: string;
  /** Wait this long before sending the response headers. */
  headerDelayMs?: number;
  /** Wait this long between stream events. */
  eventDelayMs?: number;
  /** Drop the connection after this many events. */
  disconnectAfterEvents?: number;
  /** More response headers, as a provider sends about the account that called it (its organization, its rate limits). */
  headers?: Record<string, string>;
}

export interface RecordedRequest {
  provider: Provider;
  path: string;
  model: string;
  body: Record<string, unknown>;
  headers: IncomingMessage['headers'];
  receivedAt: number;
  eventsSent: number;
  clientClosed: boolean;
}

/**
 * OpenAI's stream without `stream_options.include_usage`: no final usage chunk
 * and no `"usage":null` on the other chunks — what OpenAI sends such a client.
 */
export function withoutUsage(stream: string): string {
  return splitEvents(stream)
    .filter((event) => !/"choices":\[\],"usage":\{/.test(event))
    .map((event) => event.replace(/,"usage":null/g, ''))
    .join('');
}

function randomHex(length: number): string {
  let hex = '';
  while (hex.length < length) hex += crypto.randomUUID().replaceAll('-', '');
  return hex.slice(0, length);
}

export function splitEvents(stream: string): string[] {
  return stream.split(/(?<=\r\n\r\n|\n\n)/).filter((event) => event.length > 0);
}

/**
 * A stand-in for the OpenAI, Anthropic and Gemini APIs that replays fixtures
 * written in each one's wire format, by the path a request arrives on.
 */
export async function startFakeUpstream() {
  const scenarios = new Map<string, Scenario>();
  const requests: RecordedRequest[] = [];

  const server = createServer(async function handle(request: IncomingMessage, response: ServerResponse) {
    let raw = '';
    for await (const chunk of request) raw += chunk;
    const body = JSON.parse(raw || '{}') as Record<string, unknown>;
    const { provider, model, stream: streaming } = classify(request.url ?? '', body);
    const record: RecordedRequest = {
      provider, path: request.url ?? '', model, body, headers: request.headers, receivedAt: performance.now(), eventsSent: 0, clientClosed: false,
    };
    requests.push(record);
    response.on('close', () => {
      if (!response.writableFinished) record.clientClosed = true;
    });

    // A stored response, retrieved (the Responses API's GET /v1/responses/{id}).
    const stored = request.method === 'GET' ? /^\/v1\/responses\/([^/?]+)/.exec(request.url ?? '') : null;
    if (stored) {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ ...JSON.parse(readFixture('responses-basic.json')), id: stored[1] }));
      return;
    }
    // Token counting, as each provider answers it (a rough count: a token per 4 bytes of the body).
    const counted = Math.ceil(Buffer.byteLength(raw) / 4);
    if (request.url?.startsWith('/v1/messages/count_tokens')) {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ input_tokens: counted }));
      return;
    }
    if (/:countTokens/.test(request.url ?? '')) {
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ totalTokens: counted, promptTokensDetails: [{ modality: 'TEXT', tokenCount: counted }] }));
      return;
    }
    const scenario = scenarios.get(model) ?? { fixture: request.url?.endsWith('/embeddings') ? 'embeddings' : model };
    if (scenario.headerDelayMs) await new Promise((resolve) => setTimeout(resolve, scenario.headerDelayMs));
    if (scenario.status) {
      response.writeHead(scenario.status, { 'content-type': 'application/json', ...(scenario.retryAfter ? { 'retry-after': scenario.retryAfter } : {}) });
      response.end(JSON.stringify(errorBodies[provider](scenario.status)));
      return;
    }
    // Each response the Responses API stores has an id of its own, and so has each of its output items.
    const freshIds = (text: string) => {
      if (!request.url?.startsWith('/v1/responses')) return text;
      const items = new Map<string, string>();
      return text
        .replace(/resp_[0-9a-f]{48}/g, `resp_${randomHex(48)}`)
        .replace(/\b(rs|msg|fc|ws)_[0-9a-f]{16,}/g, (id, prefix: string) => items.get(id) ?? items.set(id, `${prefix}_${randomHex(id.length - prefix.length - 1)}`).get(id)!);
    };
    if (!streaming) {
      response.writeHead(200, { 'content-type': 'application/json', 'x-upstream-processing-ms': '42', ...scenario.headers });
      response.end(freshIds(readFixture(`${scenario.fixture}.json`, provider)));
      return;
    }
    let stream = freshIds(readFixture(`${scenario.fixture}.chunks.txt`, provider));
    const options = body.stream_options as { include_usage?: boolean } | undefined;
    // Chat streams only (the Responses API always reports usage, in response.completed).
    if (provider === 'openai' && !request.url?.startsWith('/v1/responses') && options?.include_usage !== true) stream = withoutUsage(stream);
    response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-upstream-processing-ms': '7', ...scenario.headers });
    for (const event of splitEvents(stream)) {
      if (record.clientClosed) return;
      if (scenario.disconnectAfterEvents !== undefined && record.eventsSent >= scenario.disconnectAfterEvents) {
        response.socket?.destroy();
        return;
      }
      response.write(event);
      record.eventsSent += 1;
      if (scenario.eventDelayMs) await new Promise((resolve) => setTimeout(resolve, scenario.eventDelayMs));
    }
    response.end();
  });

  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    scenarios,
    requests,
    /** Requests whose body named this upstream model. */
    requestsFor: (model: string) => requests.filter((request) => request.model === model),
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

export type FakeUpstream = Awaited<ReturnType<typeof startFakeUpstream>>;

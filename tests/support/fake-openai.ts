import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { join } from 'node:path';

const fixtureDir = join(import.meta.dirname, '../fixtures/openai');

export function readFixture(name: string): string {
  return readFileSync(join(fixtureDir, name), 'utf8');
}

/** How the fake answers requests for one upstream model. */
export interface Scenario {
  /** Fixture base name: `<name>.chunks.txt` for streams, `<name>.json` otherwise. */
  fixture: string;
  /** Answer with this HTTP status and an OpenAI error body instead. */
  status?: number;
  /** Wait this long before sending the response headers. */
  headerDelayMs?: number;
  /** Wait this long between stream events. */
  eventDelayMs?: number;
  /** Drop the connection after this many events. */
  disconnectAfterEvents?: number;
}

export interface RecordedRequest {
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

export function splitEvents(stream: string): string[] {
  return stream.split(/(?<=\n\n)/).filter((event) => event.length > 0);
}

/** A stand-in for OpenAI's API that replays fixtures in OpenAI's wire format. */
export async function startFakeOpenAI() {
  const scenarios = new Map<string, Scenario>();
  const requests: RecordedRequest[] = [];

  const server = createServer(async function handle(request: IncomingMessage, response: ServerResponse) {
    let raw = '';
    for await (const chunk of request) raw += chunk;
    const body = JSON.parse(raw || '{}') as Record<string, unknown>;
    const model = String(body.model ?? '');
    const record: RecordedRequest = {
      path: request.url ?? '', model, body, headers: request.headers, receivedAt: performance.now(), eventsSent: 0, clientClosed: false,
    };
    requests.push(record);
    response.on('close', () => {
      if (!response.writableFinished) record.clientClosed = true;
    });

    const scenario = scenarios.get(model) ?? { fixture: request.url?.endsWith('/embeddings') ? 'embeddings' : model };
    if (scenario.headerDelayMs) await new Promise((resolve) => setTimeout(resolve, scenario.headerDelayMs));
    if (scenario.status) {
      response.writeHead(scenario.status, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: { message: `Scripted failure ${scenario.status}`, type: 'server_error', param: null, code: null } }));
      return;
    }
    if (body.stream !== true) {
      response.writeHead(200, { 'content-type': 'application/json', 'openai-processing-ms': '42' });
      response.end(readFixture(`${scenario.fixture}.json`));
      return;
    }
    let stream = readFixture(`${scenario.fixture}.chunks.txt`);
    const options = body.stream_options as { include_usage?: boolean } | undefined;
    if (options?.include_usage !== true) stream = withoutUsage(stream);
    response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'openai-processing-ms': '7' });
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

export type FakeOpenAI = Awaited<ReturnType<typeof startFakeOpenAI>>;

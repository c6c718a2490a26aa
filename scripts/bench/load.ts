// Load generation and latency injection for `npm run bench`.
import { spawn, type ChildProcess } from 'node:child_process';
import { createServer, connect, type Server, type Socket } from 'node:net';
import type { AddressInfo } from 'node:net';
import { Agent, request as httpRequest } from 'node:http';
import { join } from 'node:path';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { Worker } from 'node:worker_threads';
import { createNodeFetch } from '../../node/http-fetch.ts';

export interface LoadResult {
  requestsPerSecond: number;
  p50: number;
  p99: number;
  errors: number;
  firstError?: string;
}

export interface LoadRequest {
  url: string;
  headers: Record<string, string>;
  body: string;
}

/** One POST over a kept-alive connection of `agent`; resolves with the status and the whole body. */
function post(agent: Agent, { url, headers, body }: LoadRequest): Promise<{ status: number; text: string }> {
  return new Promise((resolve, reject) => {
    const request = httpRequest(url, { method: 'POST', agent, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, (response) => {
      let text = '';
      response.setEncoding('utf8');
      response.on('data', (chunk: string) => (text += chunk));
      response.on('end', () => resolve({ status: response.statusCode ?? 0, text }));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

/** Milliseconds for one whole request over `agent` (sent to the last byte of the answer); rejects unless 200. */
export async function timeWhole(agent: Agent, request: LoadRequest): Promise<number> {
  const sent = performance.now();
  const { status, text } = await post(agent, request);
  if (status !== 200) throw new Error(`HTTP ${status} ${text.slice(0, 200)}`);
  return performance.now() - sent;
}

/**
 * Timings of several rows taken in turns: one call of each row per round, the
 * order rotated every round, so the rows meet the machine alike. A noisy VM
 * drifts over minutes; rows measured one after another would compare one
 * minute's gateway with another minute's upstream. Each row's `index` counts
 * its own calls (warm-up included); the options apply to every call as in
 * sampleSequentially.
 */
export async function sampleInterleaved<Name extends string>(
  rows: Record<Name, (index: number) => Promise<number>>,
  { warm, count, pause, period = 0 }: { warm: number; count: number; pause?: (() => Promise<unknown>) | undefined; period?: number },
): Promise<Record<Name, number[]>> {
  const names = Object.keys(rows) as Name[];
  const times = Object.fromEntries(names.map((name) => [name, [] as number[]])) as Record<Name, number[]>;
  for (let round = 0; round < warm + count; round++) {
    for (let turn = 0; turn < names.length; turn++) {
      const name = names[(round + turn) % names.length]!;
      const started = performance.now();
      const time = await rows[name](round);
      if (round >= warm) times[name].push(time);
      await pause?.();
      const rest = period - (performance.now() - started);
      if (rest > 0) await new Promise((resolve) => setTimeout(resolve, rest));
    }
  }
  return times;
}

/**
 * Timings of `count` calls of `run`, one after another, after `warm` untimed ones
 * (`index` counts every call, warm-up included); `pause` runs untimed after each
 * timed call. With a period, each request starts that long after the one before,
 * whatever the pause took: rows measured alike sit idle alike (an idle VM answers
 * more slowly). The one-row case of sampleInterleaved.
 */
export async function sampleSequentially(
  run: (index: number) => Promise<number>,
  options: { warm: number; count: number; pause?: (() => Promise<unknown>) | undefined; period?: number },
): Promise<number[]> {
  return (await sampleInterleaved({ row: run }, options)).row;
}

/** A pause of `ms` milliseconds, for sampleSequentially. */
export const pauseOf = (ms: number) => () => new Promise((resolve) => setTimeout(resolve, ms));

/** The outbound HTTP client of the bench's gateways and bare proxies: the Node.js function's, or Node's fetch with BENCH_FETCH=global. */
export function benchOutboundFetch(): typeof fetch {
  return process.env.BENCH_FETCH === 'global' ? (input, init) => fetch(input, init) : createNodeFetch();
}

/** `concurrency` clients, each sending its next request when the last is answered, for `seconds`. */
export async function runLoad(concurrency: number, seconds: number, next: (index: number) => LoadRequest): Promise<LoadResult> {
  const agent = new Agent({ keepAlive: true, maxSockets: concurrency });
  const latencies: number[] = [];
  let errors = 0;
  let firstError: string | undefined;
  let issued = 0;
  const started = performance.now();
  const until = started + seconds * 1000;
  const client = async () => {
    while (performance.now() < until) {
      const request = next(issued++);
      const sent = performance.now();
      try {
        const { status, text } = await post(agent, request);
        if (status !== 200) {
          errors++;
          firstError ??= `${status} ${text.slice(0, 200)}`;
        } else latencies.push(performance.now() - sent);
      } catch (error) {
        errors++;
        firstError ??= (error as Error).message;
      }
    }
  };
  await Promise.all(Array.from({ length: concurrency }, client));
  const elapsed = (performance.now() - started) / 1000;
  agent.destroy();
  const sorted = latencies.sort((a, b) => a - b);
  const at = (q: number) => sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] ?? NaN;
  return { requestsPerSecond: latencies.length / elapsed, p50: at(0.5), p99: at(0.99), errors, ...(firstError ? { firstError } : {}) };
}

export interface BenchProcess {
  url: string;
  pid: number;
  stop: () => Promise<void>;
}

/** A script of scripts/bench/ in its own process, printing {"port": n} when it listens; resolves with its URL. */
async function startBenchProcess(script: string, environment: Record<string, string>, profile: string[] = []): Promise<BenchProcess> {
  const child: ChildProcess = spawn(process.execPath, [...profile, '--import', 'tsx', join(import.meta.dirname, script)], {
    env: { ...process.env, ...environment },
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const port = await new Promise<number>((resolve, reject) => {
    let output = '';
    child.stdout!.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      const match = /\{"port":(\d+)\}/.exec(output);
      if (match) resolve(Number(match[1]));
    });
    child.once('exit', (code) => reject(new Error(`${script} exited with ${code}`)));
  });
  return {
    url: `http://127.0.0.1:${port}`,
    pid: child.pid!,
    stop: () =>
      new Promise<void>((resolve) => {
        child.once('exit', () => resolve());
        child.kill('SIGTERM');
      }),
  };
}

/** The gateway in its own process (scripts/bench/gateway-process.ts); resolves with its URL. */
export function startGatewayProcess(environment: Record<string, string>): Promise<BenchProcess> {
  // BENCH_CPU_PROFILE=<folder>: the gateway process writes a V8 CPU profile there when it stops.
  const profile = process.env.BENCH_CPU_PROFILE ? ['--cpu-prof', '--cpu-prof-dir', process.env.BENCH_CPU_PROFILE] : [];
  return startBenchProcess('gateway-process.ts', { BENCH_GATEWAY_ENV: JSON.stringify(environment) }, profile);
}

/** A stand-in service (scripts/bench/service-process.ts) in its own process. */
export function startServiceProcess(environment: Record<string, string>): Promise<BenchProcess> {
  return startBenchProcess('service-process.ts', environment);
}

/** The bare proxy (scripts/bench/bare-proxy.ts) in its own process, forwarding to `upstream`; with `node`, the node:http proxy there. */
export function startBareProxyProcess(upstream: string, kind: 'hono' | 'node' = 'hono'): Promise<BenchProcess> {
  return startBenchProcess('bare-proxy.ts', { BENCH_BARE_PROXY_UPSTREAM: upstream, BENCH_BARE_PROXY_KIND: kind });
}

/**
 * A TCP proxy in front of `target` that holds every chunk for `oneWayMs` in
 * each direction: the database made that much farther away.
 */
export async function startDelayProxy(target: URL, oneWayMs: number): Promise<{ url: string; close: () => Promise<void> }> {
  const sockets = new Set<Socket>();
  const delayed = (from: Socket, to: Socket) => {
    from.on('data', (chunk) => setTimeout(() => to.write(chunk), oneWayMs));
    from.on('end', () => setTimeout(() => to.end(), oneWayMs));
    from.on('error', () => to.destroy());
  };
  const server: Server = createServer((client) => {
    const upstream = connect(Number(target.port), target.hostname);
    sockets.add(client).add(upstream);
    delayed(client, upstream);
    delayed(upstream, client);
    client.on('close', () => sockets.delete(client));
    upstream.on('close', () => sockets.delete(upstream));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = new URL(target);
  url.port = String((server.address() as AddressInfo).port);
  return {
    url: url.toString().replace(/\/$/, ''),
    close: () =>
      new Promise<void>((resolve) => {
        for (const socket of sockets) socket.destroy();
        server.close(() => resolve());
      }),
  };
}

/** Milliseconds from sending `request` to the first byte of the response body (the body is then read to its end). */
export function timeToFirstByte(agent: Agent, { url, headers, body }: LoadRequest): Promise<number> {
  return new Promise((resolve, reject) => {
    const sent = performance.now();
    let first = 0;
    const request = httpRequest(url, { method: 'POST', agent, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, (response) => {
      response.on('data', () => {
        first ||= performance.now() - sent;
      });
      response.on('end', () => (response.statusCode === 200 ? resolve(first) : reject(new Error(`HTTP ${response.statusCode}`))));
      response.on('error', reject);
    });
    request.on('error', reject);
    request.end(body);
  });
}

/**
 * An HTTP client on a thread of its own, for timing a gateway that runs in the
 * bench's process. A client on the gateway's event loop reads its answer only
 * after whatever the gateway queued before it (a short answer is complete, and the
 * work that follows an answer begun, by the time the client's read comes round), so
 * it counts that work as if it delayed the answer; a real client, in a process of
 * its own, does not. Each row of a comparison should use the same client.
 * `timeToFirstByte`: to the first byte of the body; `timeWhole`: to its last.
 * Both reject unless the answer is 200.
 */
export function threadClient(): {
  timeToFirstByte: (request: LoadRequest) => Promise<number>;
  timeWhole: (request: LoadRequest) => Promise<number>;
  close: () => Promise<number>;
} {
  const worker = new Worker(
    `const { parentPort } = require('node:worker_threads');
     const { Agent, request } = require('node:http');
     const agent = new Agent({ keepAlive: true, maxSockets: 1 });
     parentPort.on('message', ({ id, url, headers, body }) => {
       const sent = performance.now();
       let first = 0;
       const failed = (error) => parentPort.postMessage({ id, error: String(error && error.message || error) });
       const outgoing = request(url, { method: 'POST', agent, headers: { ...headers, 'content-length': Buffer.byteLength(body) } }, (response) => {
         response.on('data', () => { first ||= performance.now() - sent; });
         response.on('end', () => response.statusCode === 200 ? parentPort.postMessage({ id, first, whole: performance.now() - sent }) : failed('HTTP ' + response.statusCode));
         response.on('error', failed);
       });
       outgoing.on('error', failed);
       outgoing.end(body);
     });`,
    { eval: true },
  );
  let next = 0;
  type Timing = { first: number; whole: number };
  const waiting = new Map<number, { resolve: (timing: Timing) => void; reject: (error: Error) => void }>();
  worker.on('message', ({ id, first, whole, error }: { id: number; first?: number; whole?: number; error?: string }) => {
    const call = waiting.get(id);
    waiting.delete(id);
    if (error !== undefined) call?.reject(new Error(error));
    else call?.resolve({ first: first!, whole: whole! });
  });
  worker.on('error', (error) => {
    for (const call of waiting.values()) call.reject(error);
    waiting.clear();
  });
  const send = (request: LoadRequest) =>
    new Promise<Timing>((resolve, reject) => {
      const id = next++;
      waiting.set(id, { resolve, reject });
      worker.postMessage({ id, ...request });
    });
  return {
    timeToFirstByte: async (request) => (await send(request)).first,
    timeWhole: async (request) => (await send(request)).whole,
    close: () => worker.terminate(),
  };
}

/**
 * CPU time (ms) so far of the machine's processes, grouped: those named in `processes`
 * (name → pid), PostgREST, PostgreSQL, redis-server, and this process. Linux only.
 */
export function cpuByComponent(processes: Record<string, number>): Record<string, number> | undefined {
  if (!existsSync('/proc/self/stat')) return undefined;
  const totals: Record<string, number> = { ...Object.fromEntries(Object.keys(processes).map((name) => [name, 0])), PostgREST: 0, PostgreSQL: 0, Redis: 0, 'bench process': 0 };
  const named = new Map(Object.entries(processes).map(([name, pid]) => [pid, name]));
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    let stat: string;
    try {
      stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
    } catch {
      continue;
    }
    const name = stat.slice(stat.indexOf('(') + 1, stat.lastIndexOf(')'));
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    // utime and stime, in clock ticks (100 per second on Linux).
    const milliseconds = (Number(fields[11]) + Number(fields[12])) * 10;
    const pid = Number(entry);
    const group =
      named.has(pid) ? named.get(pid) : pid === process.pid ? 'bench process' : name === 'postgrest' ? 'PostgREST' : name === 'postgres' ? 'PostgreSQL' : name === 'redis-server' ? 'Redis' : undefined;
    if (group) totals[group]! += milliseconds;
  }
  return totals;
}

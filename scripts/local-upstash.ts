// A local stand-in for Upstash Redis: a real `redis-server` (Debian package)
// behind an HTTP endpoint that speaks Upstash's REST protocol — POST / with one
// command as a JSON array, /pipeline and /multi-exec with several, a Bearer
// token, and base64-encoded strings when the client sends Upstash-Encoding.
// Like Upstash, it accepts the `allow-key-locking` script flag, which plain
// Redis refuses: it is taken out before the script reaches redis-server.
import { spawn, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { createClient } from 'redis';
import { freePort } from './local-supabase/index.ts';
import { killWithParent } from './kill-with-parent.ts';

const redisServerPaths = ['/usr/bin/redis-server', '/usr/local/bin/redis-server'];

export function redisServerPath(): string | undefined {
  return redisServerPaths.find((path) => existsSync(path));
}

export interface LocalUpstash {
  url: string;
  token: string;
  redisPort: number;
  /** Stops redis-server only (the endpoint keeps answering, with errors), to test Redis being down. */
  stopRedis: () => Promise<void>;
  stop: () => Promise<void>;
}

type Reply = string | number | null | Reply[] | Buffer | boolean;

function encodeReply(reply: unknown, base64: boolean): unknown {
  if (reply === null || reply === undefined) return null;
  if (typeof reply === 'number' || typeof reply === 'boolean') return reply;
  if (Buffer.isBuffer(reply)) return base64 ? reply.toString('base64') : reply.toString('utf8');
  if (typeof reply === 'string') return base64 ? Buffer.from(reply, 'utf8').toString('base64') : reply;
  if (Array.isArray(reply)) return reply.map((item) => encodeReply(item, base64));
  return String(reply);
}

/** Script flags Upstash accepts that plain Redis refuses (@upstash/ratelimit ≥ 2.1 sends this one). */
const upstashOnlyFlags = new Set(['allow-key-locking']);

/** The script with Upstash-only shebang flags taken out, as Redis will take it. */
export function withoutUpstashFlags(script: string): string {
  const match = /^#!lua flags=([^\n]*)/.exec(script);
  if (!match) return script;
  const flags = match[1]!.split(',').map((flag) => flag.trim()).filter((flag) => flag && !upstashOnlyFlags.has(flag));
  return script.replace(match[0], flags.length ? `#!lua flags=${flags.join(',')}` : '#!lua');
}

const sha1 = (text: string) => createHash('sha1').update(text).digest('hex');

async function startRedisServer(port: number): Promise<ChildProcess> {
  const binary = redisServerPath();
  if (!binary) throw new Error('redis-server is not installed (Debian: apt-get install redis-server)');
  const child = spawn(binary, ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no'], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  await new Promise<void>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`redis-server did not start:\n${output}`)), 10_000);
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
      if (output.includes('Ready to accept connections')) {
        clearTimeout(timer);
        resolve();
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`redis-server exited with ${code}:\n${output}`));
    });
  });
  killWithParent(child);
  return child;
}

export async function startLocalUpstash(options: { port?: number; token?: string } = {}): Promise<LocalUpstash> {
  const token = options.token ?? `local-${crypto.randomUUID()}`;
  const redisPort = await freePort();
  const redisProcess = await startRedisServer(redisPort);
  const redis = createClient({ url: `redis://127.0.0.1:${redisPort}`, socket: { reconnectStrategy: false } });
  redis.on('error', () => {});
  await redis.connect();

  // Scripts are stored without Upstash-only flags; the client still names them
  // by the SHA1 of what it sent, so those names are mapped.
  const scriptNames = new Map<string, string>();
  const translate = (args: string[]): { args: string[]; reply?: (result: unknown) => unknown } => {
    const name = args[0]!.toUpperCase();
    if ((name === 'EVAL' || name === 'EVAL_RO') && args[1]) {
      const stripped = withoutUpstashFlags(args[1]);
      scriptNames.set(sha1(args[1]), sha1(stripped));
      return { args: [args[0]!, stripped, ...args.slice(2)] };
    }
    if ((name === 'EVALSHA' || name === 'EVALSHA_RO') && args[1]) {
      return { args: [args[0]!, scriptNames.get(args[1].toLowerCase()) ?? args[1], ...args.slice(2)] };
    }
    if (name === 'SCRIPT' && args[1]?.toUpperCase() === 'LOAD' && args[2]) {
      const original = sha1(args[2]);
      const stripped = withoutUpstashFlags(args[2]);
      scriptNames.set(original, sha1(stripped));
      return { args: [args[0]!, args[1], stripped], reply: () => original };
    }
    return { args };
  };

  const run = async (command: unknown): Promise<{ result?: unknown; error?: string }> => {
    if (!Array.isArray(command) || command.length === 0) return { error: 'ERR a command is a non-empty JSON array' };
    const { args, reply } = translate(command.map((part) => (typeof part === 'string' ? part : JSON.stringify(part))));
    try {
      const result = await redis.sendCommand(args);
      return { result: reply ? reply(result) : result };
    } catch (error) {
      return { error: (error as Error).message };
    }
  };

  const server: Server = createServer(async (request, response) => {
    const send = (status: number, body: unknown) => {
      response.writeHead(status, { 'content-type': 'application/json' });
      response.end(JSON.stringify(body));
    };
    if (request.headers.authorization !== `Bearer ${token}`) return send(401, { error: 'Unauthorized' });
    let raw = '';
    for await (const chunk of request) raw += chunk;
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch {
      return send(400, { error: 'ERR the body is not JSON' });
    }
    const base64 = String(request.headers['upstash-encoding'] ?? '').toLowerCase() === 'base64';
    const path = new URL(request.url ?? '/', 'http://local').pathname.replace(/\/+$/, '') || '/';
    const encode = (outcome: { result?: unknown; error?: string }) =>
      outcome.error !== undefined ? { error: outcome.error } : { result: encodeReply(outcome.result as Reply, base64) };

    if (path === '/') {
      const outcome = await run(body);
      return send(outcome.error !== undefined ? 400 : 200, encode(outcome));
    }
    if (path === '/pipeline' || path === '/multi-exec') {
      if (!Array.isArray(body)) return send(400, { error: 'ERR a pipeline is a JSON array of commands' });
      if (path === '/pipeline') {
        // Sent at once, in order, on the one connection: Redis runs them in that order, as Upstash does.
        return send(200, (await Promise.all(body.map(run))).map(encode));
      }
      const multi = redis.multi();
      for (const command of body as unknown[][]) multi.addCommand(translate(command.map((part) => (typeof part === 'string' ? part : JSON.stringify(part)))).args);
      try {
        const results = await multi.exec();
        return send(200, (results as unknown[]).map((result) => encode({ result })));
      } catch (error) {
        return send(400, { error: (error as Error).message });
      }
    }
    return send(404, { error: `ERR unknown path ${path}` });
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;

  let redisStopped = false;
  const stopRedis = async () => {
    if (redisStopped) return;
    redisStopped = true;
    await redis.quit().catch(() => redis.destroy());
    const exited = new Promise((resolve) => redisProcess.once('exit', resolve));
    redisProcess.kill('SIGTERM');
    await exited;
  };
  return {
    url: `http://127.0.0.1:${port}`,
    token,
    redisPort,
    stopRedis,
    stop: async () => {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await stopRedis();
    },
  };
}

import type { ChannelConfig } from '../env.ts';
import { GatewayError } from '../errors.ts';

export interface UpstreamRequest {
  url: string;
  init: RequestInit;
}

/** One channel that did not answer usefully, for the log: never shown to the customer. */
export interface FailedAttempt {
  host: string;
  problem: string;
}

export type UpstreamResult =
  | { ok: true; response: Response; channel: ChannelConfig; attempts: FailedAttempt[] }
  | { ok: false; error: GatewayError; attempts: FailedAttempt[] };

/** The answers worth trying the next channel for: the gateway's own credentials refused, rate limits, server errors. */
const failoverStatuses = new Set([401, 403, 429]);

/** Seconds from a Retry-After header (seconds or an HTTP date); undefined when absent or unreadable. */
function retryAfterSeconds(header: string | null): number | undefined {
  if (!header) return undefined;
  const seconds = Number(header);
  if (Number.isFinite(seconds) && seconds >= 0) return Math.ceil(seconds);
  const date = Date.parse(header);
  return Number.isNaN(date) ? undefined : Math.max(0, Math.ceil((date - Date.now()) / 1000));
}

/**
 * Sends to the provider's channels in priority order. A failure before the
 * first byte — connection error, 5xx, 429, or the channel's key refused (401,
 * 403) — moves on to the next channel; any other answer (including a 4xx about
 * the request) is the answer. When none answers, the error names no channel:
 * `attempts` (hosts and problems) is for the log. Every channel rate limited:
 * 429 `upstream_rate_limited`, with the soonest Retry-After any of them gave.
 */
export async function sendWithFailover(
  channels: readonly ChannelConfig[],
  build: (channel: ChannelConfig) => UpstreamRequest,
  options: { fetch: typeof fetch; signal: AbortSignal; log: (entry: Record<string, unknown>) => void; requestId: string },
): Promise<UpstreamResult> {
  const result = await tryChannels(channels, build, options);
  if (result.attempts.length) {
    options.log({ level: result.ok ? 'warn' : 'error', event: 'upstream_channels_failed', requestId: options.requestId, attempts: result.attempts });
  }
  return result;
}

async function tryChannels(
  channels: readonly ChannelConfig[],
  build: (channel: ChannelConfig) => UpstreamRequest,
  options: { fetch: typeof fetch; signal: AbortSignal },
): Promise<UpstreamResult> {
  const attempts: FailedAttempt[] = [];
  const retryAfters: number[] = [];
  let rateLimited = 0;
  for (const channel of channels) {
    const { url, init } = build(channel);
    const host = new URL(url).host;
    let response: Response;
    try {
      response = await options.fetch(url, { ...init, signal: options.signal });
    } catch (error) {
      if (options.signal.aborted) {
        return { ok: false, error: new GatewayError(499, 'client_closed_request', 'The client closed the request.'), attempts };
      }
      attempts.push({ host, problem: (error as Error).message });
      continue;
    }
    if (response.status >= 500 || failoverStatuses.has(response.status)) {
      const body = await response.text().catch(() => '');
      attempts.push({ host, problem: `HTTP ${response.status} ${body.slice(0, 300)}` });
      if (response.status === 429) {
        rateLimited++;
        const retryAfter = retryAfterSeconds(response.headers.get('retry-after'));
        if (retryAfter !== undefined) retryAfters.push(retryAfter);
      }
      continue;
    }
    return { ok: true, response, channel, attempts };
  }
  if (rateLimited > 0 && rateLimited === attempts.length) {
    const retryAfter = retryAfters.length ? Math.min(...retryAfters) : undefined;
    return {
      ok: false,
      attempts,
      error: new GatewayError(429, 'upstream_rate_limited', `The model's provider is limiting requests right now; nothing was charged.${retryAfter === undefined ? '' : ` Retry after ${retryAfter} s.`}`, {
        headers: retryAfter === undefined ? {} : { 'retry-after': String(retryAfter) },
      }),
    };
  }
  const detail = channels.length ? 'did not answer' : 'has no channel configured';
  return { ok: false, error: new GatewayError(502, 'upstream_unavailable', `The model's provider ${detail}; nothing was charged.`), attempts };
}

/** Aborts `controller` when `signal` aborts, or at once if it already has (a listener alone would miss that). */
export function abortWhenAborted(signal: AbortSignal, controller: AbortController): void {
  if (signal.aborted) controller.abort(signal.reason);
  else signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
}

const droppedHeaders = new Set([
  'content-encoding', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'set-cookie',
  // Who the operator is at the provider: its organization and project.
  'openai-organization', 'openai-project', 'anthropic-organization-id',
]);

/**
 * The operator's own rate limits at the provider (x-ratelimit-* from OpenAI and
 * OpenAI-compatible upstreams, anthropic-ratelimit-*): the operator's business, and
 * not the customer's limits, which the gateway sends under the same x-ratelimit-*
 * names (app.ts) and which must not be shadowed by the provider's.
 */
const operatorLimits = /^(x-ratelimit-|anthropic-ratelimit-)/;

/**
 * The upstream's response headers that still hold once the body has been decoded
 * by fetch, less what they say about the operator's account at the provider.
 */
export function forwardableHeaders(headers: Headers): Headers {
  const result = new Headers();
  headers.forEach((value, name) => {
    const lower = name.toLowerCase();
    if (!droppedHeaders.has(lower) && !operatorLimits.test(lower)) result.set(name, value);
  });
  return result;
}

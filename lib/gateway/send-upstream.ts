import type { ChannelConfig } from '../env.ts';
import { GatewayError } from '../errors.ts';

export interface UpstreamRequest {
  url: string;
  init: RequestInit;
}

export type UpstreamResult =
  | { ok: true; response: Response; channel: ChannelConfig; attempts: string[] }
  | { ok: false; error: GatewayError; attempts: string[] };

/**
 * Sends to the provider's channels in priority order. A failure before the
 * first byte — connection error, 5xx or 429 — moves on to the next channel;
 * any other answer (including a 4xx about the request) is the answer.
 */
export async function sendWithFailover(
  channels: readonly ChannelConfig[],
  build: (channel: ChannelConfig) => UpstreamRequest,
  options: { fetch: typeof fetch; signal: AbortSignal },
): Promise<UpstreamResult> {
  const attempts: string[] = [];
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
      attempts.push(`${host}: ${(error as Error).message}`);
      continue;
    }
    if (response.status >= 500 || response.status === 429) {
      attempts.push(`${host}: HTTP ${response.status}`);
      await response.body?.cancel().catch(() => {});
      continue;
    }
    return { ok: true, response, channel, attempts };
  }
  const detail = attempts.length ? attempts.join('; ') : 'no channel is configured for this provider';
  return { ok: false, error: new GatewayError(502, 'upstream_unavailable', `The upstream provider is unavailable (${detail}).`), attempts };
}

/** Aborts `controller` when `signal` aborts, or at once if it already has (a listener alone would miss that). */
export function abortWhenAborted(signal: AbortSignal, controller: AbortController): void {
  if (signal.aborted) controller.abort(signal.reason);
  else signal.addEventListener('abort', () => controller.abort(signal.reason), { once: true });
}

const droppedHeaders = new Set(['content-encoding', 'content-length', 'transfer-encoding', 'connection', 'keep-alive', 'set-cookie']);

/** The upstream's response headers that still hold once the body has been decoded by fetch. */
export function forwardableHeaders(headers: Headers): Headers {
  const result = new Headers();
  headers.forEach((value, name) => {
    if (!droppedHeaders.has(name.toLowerCase())) result.set(name, value);
  });
  return result;
}

import type { UpstreamResult } from './send-upstream.ts';
import { GatewayError } from '../errors.ts';
import { createSseEventSplitter } from '../metering/sse-event-splitter.ts';

export type StreamEndReason = 'completed' | 'aborted' | 'failed';

export interface MeteredStreamOptions {
  upstream: Promise<UpstreamResult>;
  upstreamAbort: AbortController;
  processEvent: (event: string) => string | null;
  /** Text to send after the upstream's last event. */
  finish?: (() => string) | undefined;
  /** An error as an SSE event in the caller's shape, for failures after the headers went out. */
  errorEvent: (error: GatewayError) => string;
  /** Send an SSE comment at once: the response is answering before the upstream has. */
  announce: boolean;
  heartbeatMs: number;
  /** The stream is ended at this time (Date.now()), what was delivered billed: the platform would kill it later, unsettled. */
  deadline: number;
  /** The limit that deadline comes from (REQUEST_MAX_MS), for the client's error. */
  limitMs: number;
  onEnd: (reason: StreamEndReason, error?: string) => void;
}

/** The error a client gets when its answer ran past REQUEST_MAX_MS. */
export function timeLimitError(limitMs: number, delivered: boolean): GatewayError {
  const limit = limitMs >= 1000 ? `${Math.round(limitMs / 1000)} s` : `${limitMs} ms`;
  return new GatewayError(504, 'upstream_timeout', `The answer did not finish within this gateway's limit of ${limit}${delivered ? '; what was delivered is billed' : '; nothing was charged'}.`);
}

const encoder = new TextEncoder();
const heartbeat = Symbol('heartbeat');

/**
 * The response body of a metered stream. Each upstream event is forwarded as
 * received (or dropped, as processEvent decides). A plain ReadableStream rather
 * than a pipeThrough chain, because a client going away must reach cancel(),
 * which aborts the upstream call and settles as 'aborted'; a TransformStream
 * has no such hook. onEnd runs exactly once.
 */
export function createMeteredStream(options: MeteredStreamOptions): ReadableStream<Uint8Array> {
  const splitter = createSseEventSplitter();
  let reader: ReadableStreamDefaultReader<Uint8Array> | undefined;
  let ended = false;

  let limit: ReturnType<typeof setTimeout> | undefined;

  const end = (reason: StreamEndReason, error?: string) => {
    if (ended) return;
    ended = true;
    clearTimeout(limit);
    options.onEnd(reason, error);
  };

  const fail = async (controller: ReadableStreamDefaultController<Uint8Array>, error: GatewayError) => {
    controller.enqueue(encoder.encode(options.errorEvent(error)));
    controller.close();
    end('failed', error.message);
  };

  return new ReadableStream<Uint8Array>({
    start(controller) {
      if (options.announce) controller.enqueue(encoder.encode(': waiting for the upstream\n\n'));
      const started = Date.now();
      limit = setTimeout(() => {
        if (ended) return;
        // Whatever pull() awaits now finds the stream ended and sends nothing more.
        void fail(controller, timeLimitError(options.limitMs, true));
        options.upstreamAbort.abort();
      }, Math.max(0, options.deadline - started));
    },

    async pull(controller) {
      if (!reader) {
        let timer: ReturnType<typeof setTimeout> | undefined;
        const tick = new Promise<typeof heartbeat>((resolve) => {
          timer = setTimeout(() => resolve(heartbeat), options.heartbeatMs);
        });
        const result = await Promise.race([options.upstream, tick]);
        clearTimeout(timer);
        if (ended) return;
        if (result === heartbeat) {
          controller.enqueue(encoder.encode(': keep-alive\n\n'));
          return;
        }
        if (!result.ok) return fail(controller, result.error);
        const { response } = result;
        if (!response.ok || !response.body) {
          const text = await response.text().catch(() => '');
          if (ended) return;
          return fail(controller, new GatewayError(response.status, 'upstream_error', `The upstream answered HTTP ${response.status}: ${text.slice(0, 500)}`));
        }
        reader = response.body.getReader();
      }

      for (;;) {
        let chunk: ReadableStreamReadResult<Uint8Array>;
        try {
          chunk = await reader.read();
        } catch (error) {
          if (ended) return;
          // The upstream died mid-stream: the client gets an error event in its API's
          // shape and a clean end, not a bare socket error; what was delivered is billed.
          controller.enqueue(encoder.encode(options.errorEvent(new GatewayError(502, 'upstream_unavailable', 'The upstream connection broke off before the answer was complete.'))));
          controller.close();
          end('failed', `upstream stream broke: ${(error as Error).message}`);
          return;
        }
        if (ended) return;
        if (chunk.done) {
          const rest = splitter.flush();
          const tail = (rest ? options.processEvent(rest) ?? '' : '') + (options.finish?.() ?? '');
          if (tail) controller.enqueue(encoder.encode(tail));
          controller.close();
          end('completed');
          return;
        }
        const forwarded = splitter
          .push(chunk.value)
          .map(options.processEvent)
          .filter((event): event is string => event !== null)
          .join('');
        if (forwarded) {
          controller.enqueue(encoder.encode(forwarded));
          return;
        }
      }
    },

    async cancel() {
      options.upstreamAbort.abort();
      end('aborted');
      await reader?.cancel().catch(() => {});
    },
  });
}

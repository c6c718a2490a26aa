import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import type { Authorized, RequestOutcome, SettleRequestInput } from '../billing/ledger.ts';
import type { TokenUsage } from '../billing/token-buckets.ts';
import type { ChannelConfig } from '../env.ts';
import { GatewayError } from '../errors.ts';
import { countTokens } from '../metering/count-tokens.ts';
import { createMeteredStream, timeLimitError } from './metered-stream.ts';
import { abortWhenAborted, forwardableHeaders, sendWithFailover, type UpstreamRequest, type UpstreamResult } from './send-upstream.ts';

/** Reads one upstream stream: what to send the client, and what to bill. */
export interface StreamProcessor {
  /** The text to send the client for one upstream event (translated or as is), or null for nothing. */
  processEvent(event: string): string | null;
  /** Text to send after the upstream's last event (a translation's closing events). */
  finish?(): string;
  /** The provider's final usage, normalized to buckets, once reported. */
  usage(): TokenUsage | null;
  /** The buckets the provider reported before its final usage: the input (Anthropic's message_start, Gemini's chunks) and Gemini's thoughts so far. */
  inputUsage?(): TokenUsage | null;
  /** Output text that reached the gateway, for the tokenizer fallback. */
  delivered(): string[];
  /** An error the upstream reported inside the stream. */
  error(): string | null;
  /** Priced calls the upstream reported (hosted web searches), billed however the tokens are counted. */
  calls?(): TokenUsage;
  /** What the usage says ran at rates above the standard ones the price sheet holds (Anthropic's: see anthropicAboveStandard). */
  aboveStandard?(): string[];
}

/** What a provider's stream reader offers: it reads events and keeps the metering. */
export interface StreamReader extends Omit<StreamProcessor, 'processEvent' | 'finish'> {
  read(event: string): unknown;
}

/** A native stream: every event forwarded as received, metered on the way. */
export function forwardAsIs(reader: StreamReader): StreamProcessor {
  return {
    processEvent: (event) => {
      reader.read(event);
      return event;
    },
    usage: reader.usage,
    inputUsage: reader.inputUsage,
    delivered: reader.delivered,
    error: reader.error,
    calls: reader.calls,
    aboveStandard: reader.aboveStandard,
  };
}

export interface BodyResult {
  /** The body for the client (translated or as is). */
  body: string;
  usage: TokenUsage | null;
  delivered: string[];
  /** Priced calls the answer reports (hosted web searches). */
  calls?: TokenUsage;
  /** What the usage says ran at rates above the standard ones (see StreamProcessor). */
  aboveStandard?: string[];
}

export interface ProxyPlan {
  channels: ChannelConfig[];
  stream: boolean;
  build: (channel: ChannelConfig) => UpstreamRequest;
  createStreamProcessor: () => StreamProcessor;
  /** Reads a successful non-streaming body. */
  readBody: (text: string) => BodyResult;
  /** An error inside a stream that has already started, in the caller's shape. */
  errorEvent: (error: GatewayError) => string;
  /** An upstream error response in the caller's shape; absent when caller and upstream speak the same format. */
  translateError?: (status: number, text: string) => string;
  /** The prompt's tokens, for the tokenizer fallback. */
  countPrompt: () => Promise<{ tokens: number; estimated: boolean }>;
  /** Extra response headers. */
  headers?: Record<string, string>;
}

/**
 * What a request is charged: the provider's usage when it reported it;
 * otherwise the prompt and the output that reached the gateway, by the
 * tokenizer; nothing at all when nothing was delivered.
 */
async function settlementFor(
  requestId: string,
  outcome: RequestOutcome,
  usage: TokenUsage | null,
  delivered: string[],
  plan: ProxyPlan,
  error?: string,
  inputUsage?: TokenUsage | null,
  calls: TokenUsage = {},
): Promise<SettleRequestInput> {
  // Calls the provider reported (web searches) are billed whichever way the tokens are.
  const reportedCalls = Object.values(calls).some((count) => count);
  if (usage) return { requestId, outcome, usage: { ...calls, ...usage }, usageSource: 'provider', error };
  // Nothing delivered: only what the provider itself reported (the input, on
  // Anthropic and Gemini streams) is charged; with no provider usage, nothing.
  if (delivered.length === 0) {
    const reported = inputUsage || reportedCalls ? { ...inputUsage, ...calls } : {};
    return { requestId, outcome, usage: reported, usageSource: inputUsage || reportedCalls ? 'provider' : undefined, error };
  }
  const output = await countTokens(delivered);
  // The provider already counted the input (with its cache buckets), and Gemini the thoughts it
  // had run (none of them among the delivered text): only the output needs the tokenizer.
  if (inputUsage) return { requestId, outcome, usage: { ...calls, reasoning: 0, ...inputUsage, output }, usageSource: 'tokenizer', error };
  const prompt = await plan.countPrompt();
  return { requestId, outcome, usage: { ...calls, input: prompt.tokens, output }, usageSource: prompt.estimated ? 'estimate' : 'tokenizer', error };
}

/**
 * Sends an authorized request upstream (with failover), answers the client and
 * settles after the response. Shared by every route and wire format.
 */
export async function proxyMetered(c: Context<AppEnv>, authorization: Authorized, plan: ProxyPlan, started?: StartedUpstream): Promise<Response> {
  const upstreamAbort = started?.abort ?? new AbortController();
  if (!started) abortWhenAborted(c.req.raw.signal, upstreamAbort);
  try {
    return await answerMetered(c, authorization, plan, upstreamAbort, started?.result);
  } catch (error) {
    // Whatever failed, the upstream call is not left running (the app releases a hold left open).
    upstreamAbort.abort();
    throw error;
  }
}

/** An upstream call already under way (started speculatively, before its hold was taken). */
export interface StartedUpstream {
  result: Promise<UpstreamResult>;
  abort: AbortController;
}

/** Sends a plan's request upstream (with failover), aborted with the client. */
export function startUpstream(c: Context<AppEnv>, plan: ProxyPlan): StartedUpstream {
  const { services, requestId } = c.var;
  const abort = new AbortController();
  abortWhenAborted(c.req.raw.signal, abort);
  return { abort, result: sendWithFailover(plan.channels, plan.build, { fetch: services.fetch, signal: abort.signal, log: services.log, requestId }) };
}

async function answerMetered(
  c: Context<AppEnv>,
  authorization: Authorized,
  plan: ProxyPlan,
  upstreamAbort: AbortController,
  started?: Promise<UpstreamResult>,
): Promise<Response> {
  const { services, requestId } = c.var;
  const hold = c.var.hold!;
  const settle = (input: () => Promise<SettleRequestInput>) => hold.settle(input);
  // Billed upstream above the standard rates charged here, by settings of the operator's
  // account there (an Anthropic workspace's default geography): said in the log, for the
  // operator to price. Billed here as any request.
  const reportAboveStandard = (above: string[] | undefined) => {
    if (!above?.length) return;
    services.log({ level: 'warn', event: 'upstream_above_standard_rates', requestId: c.var.requestId, model: authorization.model.id, reported: above });
  };
  const release = (error: string) => hold.release(error, upstreamAbort.signal.aborted && !timedOut ? 'aborted' : 'failed');
  // The answer must be over before the platform's own limit kills the function unsettled.
  const limitMs = services.config.REQUEST_MAX_MS;
  const deadline = Date.now() + limitMs;
  let timedOut = false;
  // Until the answer is ready (or a stream, which has a timer of its own, takes it over).
  const limit = setTimeout(() => {
    timedOut = true;
    upstreamAbort.abort();
  }, limitMs);
  const overLimit = () => {
    release('the answer did not finish within REQUEST_MAX_MS');
    return timeLimitError(limitMs, false);
  };
  try {
    return await answerWithinLimit();
  } finally {
    clearTimeout(limit);
  }

  async function answerWithinLimit(): Promise<Response> {
    const upstream = started ?? sendWithFailover(plan.channels, plan.build, { fetch: services.fetch, signal: upstreamAbort.signal, log: services.log, requestId });

    const headersFor = (result: UpstreamResult & { ok: true }) => {
      const headers = forwardableHeaders(result.response.headers);
      if (authorization.output_capped) headers.set('x-tollgate-max-tokens', String(authorization.max_output_tokens));
      for (const [name, value] of Object.entries(plan.headers ?? {})) headers.set(name, value);
      return headers;
    };

    const errorResponse = async (result: UpstreamResult & { ok: true }) => {
      const text = await result.response.text().catch(() => '');
      if (timedOut) throw overLimit();
      release(`upstream HTTP ${result.response.status}`);
      const headers = headersFor(result);
      if (!plan.translateError) return new Response(text, { status: result.response.status, headers });
      headers.set('content-type', 'application/json');
      return new Response(plan.translateError(result.response.status, text), { status: result.response.status, headers });
    };

    if (!plan.stream) {
      let result: UpstreamResult;
      let text = '';
      try {
        result = await upstream;
        if (result.ok && result.response.ok) text = await result.response.text();
      } catch (error) {
        if (timedOut) throw overLimit();
        release(`upstream body broke: ${String(error)}`);
        throw new GatewayError(502, 'upstream_unavailable', 'The upstream connection broke before the answer was complete.');
      }
      if (!result.ok) {
        if (timedOut) throw overLimit();
        release(result.error.message);
        throw result.error;
      }
      if (!result.response.ok) return errorResponse(result);
      let read: BodyResult;
      try {
        read = plan.readBody(text);
      } catch {
        // A 2xx body of a shape we do not know: passed on as is; its text counts as delivered output.
        read = { body: text, usage: null, delivered: [text] };
      }
      const headers = headersFor(result);
      if (plan.translateError) headers.set('content-type', 'application/json');
      const response = new Response(read.body, { status: result.response.status, headers });
      reportAboveStandard(read.aboveStandard);
      // Charged once the answer is ready to go; a failure before this point releases the hold.
      settle(() => settlementFor(requestId, 'completed', read.usage, read.delivered, plan, undefined, null, read.calls));
      return response;
    }

    // Streams: wait briefly for the upstream's own headers; past that, answer at
    // once with our own, so a slow upstream never hits the edge's first-byte deadline.
    let timer: ReturnType<typeof setTimeout> | undefined;
    const early = await Promise.race([
      upstream,
      new Promise<null>((resolve) => {
        timer = setTimeout(() => resolve(null), services.config.STREAM_HEADER_WAIT_MS);
      }),
    ]);
    clearTimeout(timer);
    if (early && !early.ok) {
      if (timedOut) throw overLimit();
      release(early.error.message);
      throw early.error;
    }
    if (early && !early.response.ok) return errorResponse(early);

    const processor = plan.createStreamProcessor();
    const headers = early ? headersFor(early) : new Headers(plan.headers);
    if (!early && authorization.output_capped) headers.set('x-tollgate-max-tokens', String(authorization.max_output_tokens));
    headers.set('content-type', 'text/event-stream; charset=utf-8');
    headers.set('cache-control', 'no-cache');
    const body = createMeteredStream({
      upstream,
      upstreamAbort,
      processEvent: processor.processEvent,
      finish: processor.finish,
      errorEvent: plan.errorEvent,
      announce: early === null,
      heartbeatMs: services.config.STREAM_HEARTBEAT_MS,
      deadline,
      limitMs,
      onEnd: (reason, error) => {
        reportAboveStandard(processor.aboveStandard?.());
        settle(() =>
          settlementFor(
            requestId,
            reason === 'completed' && processor.error() ? 'failed' : reason,
            processor.usage(),
            processor.delivered(),
            plan,
            error ?? processor.error() ?? undefined,
            processor.inputUsage?.(),
            processor.calls?.(),
          ),
        );
      },
    });
    // From here the stream owns the hold and settles it when it ends.
    hold.handOff();
    return new Response(body, { status: 200, headers });
  }
}

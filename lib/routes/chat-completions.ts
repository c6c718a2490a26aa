import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import type { RequestOutcome, SettleRequestInput } from '../billing/ledger.ts';
import { GatewayError } from '../errors.ts';
import { createMeteredStream } from '../gateway/metered-stream.ts';
import { authorize, readJsonBody, readKeyHash } from '../gateway/request-helpers.ts';
import { forwardableHeaders, sendWithFailover, type UpstreamResult } from '../gateway/send-upstream.ts';
import { settleInBackground } from '../gateway/settle-in-background.ts';
import { countTokens } from '../metering/count-tokens.ts';
import { convertOpenAIUsage } from '../providers/openai/convert-openai-usage.ts';
import { buildOpenAIRequest, openAIErrorEvent, outputCapField } from '../providers/openai/openai-adaptor.ts';
import { createOpenAIChatMeter } from '../providers/openai/openai-chat-meter.ts';
import { boundChatInputTokens, countChatInputTokens } from '../providers/openai/openai-input.ts';
import { chatCompletionRequestSchema, chatCompletionSchema, type ChatCompletionRequest, type OpenAIUsage } from '../providers/openai/openai-wire.ts';
import { channelsFor } from '../providers/registry.ts';

/**
 * What a request is charged: the provider's usage when it reported it;
 * otherwise the prompt and the output that reached the gateway, by the
 * tokenizer; nothing at all when nothing was delivered.
 */
async function chatSettlement(
  requestId: string,
  outcome: RequestOutcome,
  request: ChatCompletionRequest,
  usage: OpenAIUsage | null,
  delivered: string[],
  error?: string,
): Promise<SettleRequestInput> {
  if (usage) return { requestId, outcome, usage: convertOpenAIUsage(usage), usageSource: 'provider', error };
  if (delivered.length === 0) return { requestId, outcome, usage: {}, error };
  const prompt = await countChatInputTokens(request);
  const output = await countTokens(delivered);
  return { requestId, outcome, usage: { input: prompt.tokens, output }, usageSource: prompt.estimated ? 'estimate' : 'tokenizer', error };
}

export async function chatCompletions(c: Context<AppEnv>): Promise<Response> {
  const { services, requestId } = c.var;
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, chatCompletionRequestSchema);
  const requestedCap = request.max_completion_tokens ?? request.max_tokens ?? undefined;
  const authorization = await authorize(c, {
    keyHash,
    model: request.model,
    maxInputTokens: boundChatInputTokens(request),
    maxOutputTokens: requestedCap,
    choices: request.n ?? 1,
    capOutput: requestedCap === undefined,
  });

  const upstreamAbort = new AbortController();
  c.req.raw.signal.addEventListener('abort', () => upstreamAbort.abort(), { once: true });
  // Nothing delivered: the hold is released, nothing is charged.
  const release = (error: string) =>
    settleInBackground(services, async () => ({
      requestId, outcome: upstreamAbort.signal.aborted ? 'aborted' : 'failed', usage: {}, error,
    }));

  const channels = channelsFor(services.config, authorization.model.provider, 'openai');
  if (!channels) {
    release('provider not supported on this route');
    throw new GatewayError(400, 'unsupported_provider', `The model ${request.model} is not served through the OpenAI format yet.`, { param: 'model' });
  }

  const stream = request.stream === true;
  const upstream = sendWithFailover(
    channels,
    (channel) => {
      const body: Record<string, unknown> = { ...request, model: authorization.model.upstream_model };
      if (stream) body.stream_options = { ...(request.stream_options ?? {}), include_usage: true };
      if (authorization.output_capped) body[outputCapField(channel)] = authorization.max_output_tokens;
      return buildOpenAIRequest(channel, '/chat/completions', body, stream);
    },
    { fetch: services.fetch, signal: upstreamAbort.signal },
  );

  const headersFor = (result: UpstreamResult & { ok: true }) => {
    const headers = forwardableHeaders(result.response.headers);
    if (authorization.output_capped) headers.set('x-tollgate-max-tokens', String(authorization.max_output_tokens));
    return headers;
  };

  if (!stream) {
    const result = await upstream;
    if (!result.ok) {
      release(result.error.message);
      throw result.error;
    }
    let text: string;
    try {
      text = await result.response.text();
    } catch (error) {
      settleInBackground(services, async () => ({ requestId, outcome: upstreamAbort.signal.aborted ? 'aborted' : 'failed', usage: {}, error: String(error) }));
      throw new GatewayError(502, 'upstream_unavailable', 'The upstream connection broke before the answer was complete.');
    }
    if (!result.response.ok) {
      release(`upstream HTTP ${result.response.status}`);
    } else {
      settleInBackground(services, async () => {
        let parsed: ReturnType<typeof chatCompletionSchema.safeParse> | undefined;
        try {
          parsed = chatCompletionSchema.safeParse(JSON.parse(text));
        } catch {
          parsed = undefined;
        }
        const completion = parsed?.success ? parsed.data : undefined;
        const delivered: string[] = [];
        for (const choice of completion?.choices ?? []) {
          if (choice.message?.content) delivered.push(choice.message.content);
          if (choice.message?.refusal) delivered.push(choice.message.refusal);
          for (const call of choice.message?.tool_calls ?? []) {
            if (call.function?.name) delivered.push(call.function.name);
            if (call.function?.arguments) delivered.push(call.function.arguments);
          }
        }
        return chatSettlement(requestId, 'completed', request, completion?.usage ?? null, delivered);
      });
    }
    return new Response(text, { status: result.response.status, headers: headersFor(result) });
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
    release(early.error.message);
    throw early.error;
  }
  if (early && !early.response.ok) {
    release(`upstream HTTP ${early.response.status}`);
    return new Response(early.response.body, { status: early.response.status, headers: headersFor(early) });
  }

  const meter = createOpenAIChatMeter({ clientWantsUsage: request.stream_options?.include_usage === true });
  const body = createMeteredStream({
    upstream,
    upstreamAbort,
    processEvent: meter.processEvent,
    errorEvent: (error) => openAIErrorEvent(error.message, error.code),
    announce: early === null,
    heartbeatMs: services.config.STREAM_HEARTBEAT_MS,
    onEnd: (reason, error) =>
      settleInBackground(services, () =>
        chatSettlement(
          requestId,
          reason === 'completed' && meter.error() ? 'failed' : reason,
          request,
          meter.usage(),
          meter.delivered(),
          error ?? meter.error() ?? undefined,
        ),
      ),
  });
  const headers = early ? headersFor(early) : new Headers();
  headers.set('content-type', 'text/event-stream; charset=utf-8');
  headers.set('cache-control', 'no-cache');
  return new Response(body, { status: 200, headers });
}


import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { GatewayError } from '../errors.ts';
import { parseJsonAs } from '../parse-json-as.ts';
import { authorize, channelsSpeaking, providersSpeaking, readJsonBody, readKeyHash } from '../gateway/request-helpers.ts';
import { abortWhenAborted, forwardableHeaders, sendWithFailover } from '../gateway/send-upstream.ts';
import { countTokens } from '../metering/count-tokens.ts';
import { convertOpenAIUsage } from '../providers/openai/convert-openai-usage.ts';
import { buildOpenAIRequest } from '../providers/openai/openai-adaptor.ts';
import { boundEmbeddingInputTokens } from '../providers/openai/openai-input.ts';
import { embeddingRequestSchema, embeddingResponseSchema, type EmbeddingRequest } from '../providers/openai/openai-wire.ts';

async function countEmbeddingInput(request: EmbeddingRequest): Promise<number> {
  const { input } = request;
  if (typeof input === 'string') return countTokens([input]);
  if (input.every((item) => typeof item === 'string')) return countTokens(input as string[]);
  return boundEmbeddingInputTokens(request); // token arrays: their length is the count
}

export async function embeddings(c: Context<AppEnv>): Promise<Response> {
  const { services, requestId } = c.var;
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, embeddingRequestSchema);
  const authorization = await authorize(
    c,
    { keyHash, model: request.model, maxInputTokens: boundEmbeddingInputTokens(request), providers: providersSpeaking(c, 'openai') },
    { unsupportedProvider: () => new GatewayError(400, 'unsupported_provider', `The model ${request.model} does not serve embeddings here.`, { param: 'model' }) },
  );
  const hold = c.var.hold!;

  const channels = channelsSpeaking(c, authorization, 'openai');
  const upstreamAbort = new AbortController();
  abortWhenAborted(c.req.raw.signal, upstreamAbort);
  const result = await sendWithFailover(
    channels,
    (channel) => buildOpenAIRequest(channel, '/embeddings', { ...request, model: authorization.model.upstream_model }, false),
    { fetch: services.fetch, signal: upstreamAbort.signal, log: services.log, requestId },
  );
  if (!result.ok) {
    hold.release(result.error.message, upstreamAbort.signal.aborted ? 'aborted' : 'failed');
    throw result.error;
  }
  let text: string;
  try {
    text = await result.response.text();
  } catch (error) {
    // The body broke off: the upstream did the work, so the input is billed (by the tokenizer).
    hold.settle(async () => ({
      requestId, outcome: upstreamAbort.signal.aborted ? 'aborted' : 'failed', error: String(error),
      ...(result.response.ok ? { usage: { input: await countEmbeddingInput(request) }, usageSource: 'tokenizer' as const } : { usage: {} }),
    }));
    throw new GatewayError(502, 'upstream_unavailable', 'The upstream connection broke before the answer was complete.');
  }
  hold.settle(async () => {
    if (!result.response.ok) return { requestId, outcome: 'failed', usage: {}, error: `upstream HTTP ${result.response.status}` };
    const usage = parseJsonAs(embeddingResponseSchema, text)?.usage;
    if (usage) return { requestId, outcome: 'completed', usage: convertOpenAIUsage(usage), usageSource: 'provider' };
    return { requestId, outcome: 'completed', usage: { input: await countEmbeddingInput(request) }, usageSource: 'tokenizer' };
  });
  return new Response(text, { status: result.response.status, headers: forwardableHeaders(result.response.headers) });
}

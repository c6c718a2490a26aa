import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import type { Authorized } from '../billing/ledger.ts';
import { GatewayError, refusalError } from '../errors.ts';
import { parseJsonAs } from '../parse-json-as.ts';
import { forwardAsIs, type ProxyPlan } from '../gateway/proxy.ts';
import { authorizeAndProxy } from '../gateway/metered-request.ts';
import { channelsSpeaking, clientIp, readJsonBody, readKeyHash, refuseUnbilledOptions, searchResultTokens } from '../gateway/request-helpers.ts';
import { abortWhenAborted, forwardableHeaders, sendWithFailover } from '../gateway/send-upstream.ts';
import { toolUseSystemPromptTokens } from '../providers/anthropic/anthropic-input.ts';
import { buildOpenAIRequest, withStandardTier } from '../providers/openai/openai-adaptor.ts';
import { convertResponsesUsage } from '../providers/openai/convert-responses-usage.ts';
import { boundResponsesInput, countResponsesInputTokens, responsesWhole } from '../providers/openai/responses-input.ts';
import { createResponsesStreamReader, recordableItemId, responseDelivered, responseItemIds, responseSearches } from '../providers/openai/responses-stream-reader.ts';
import { responseObjectSchema, responsesRequestSchema } from '../providers/openai/responses-wire.ts';
import { channelsFor, channelsOf, providerFormat } from '../providers/registry.ts';
import { translateResponses, translatedResponsesPlan } from '../providers/responses-translation.ts';
import { searchBound } from '../providers/openai/responses-conversation.ts';
import { responsesErrorEvent } from '../providers/openai/responses-writer.ts';

/** Hosted tools the upstream bills beyond tokens that this gateway does not price (per stored file, per container, per image). */
const feeTools = new Set(['file_search', 'code_interpreter', 'image_generation']);

/**
 * OpenAI's hosted web search, priced per search (models.price_web_search): every
 * version and spelling of it (web_search, web_search_preview, dated ones), as
 * the translation to Claude and Gemini takes any of them for a search.
 */
const isSearchTool = (type: string) => type.startsWith('web_search');

/** The client's own headers that matter upstream (Codex's session and client headers); nothing else of the client's is sent. */
const forwardedClientHeader = /^(x-openai-[a-z0-9-]+|openai-beta|session_id|conversation_id|originator)$/;

function clientHeaders(c: Context<AppEnv>): Record<string, string> {
  const headers: Record<string, string> = {};
  c.req.raw.headers.forEach((value, name) => {
    if (forwardedClientHeader.test(name)) headers[name] = value;
  });
  return headers;
}

/** Every tool the request offers: `tools`, and those Codex puts in input items of type additional_tools. */
function offeredTools(request: Record<string, unknown>): unknown[] {
  const tools = [...((request.tools as unknown[] | undefined) ?? [])];
  if (Array.isArray(request.input)) {
    for (const item of request.input as Array<{ type?: unknown; tools?: unknown } | null>) {
      if (item?.type === 'additional_tools' && Array.isArray(item.tools)) tools.push(...item.tools);
    }
  }
  return tools;
}

/**
 * The ids of stored items the input refers to: item_reference's, and those of the
 * items that carry one (OpenAI looks a reasoning item up by its id).
 */
function referencedItemIds(input: unknown): string[] {
  if (!Array.isArray(input)) return [];
  const ids = new Set<string>();
  for (const item of input as unknown[]) {
    const id = (item as { id?: unknown } | null)?.id;
    if (typeof item === 'object' && recordableItemId(id)) ids.add(id);
  }
  return [...ids];
}

/**
 * POST /v1/responses: OpenAI's Responses API (Codex CLI, the AI SDK's default
 * OpenAI provider, the Agents SDK), streamed and not. For models of
 * OpenAI-format providers, forwarded as sent and metered on response.completed;
 * `store` and `previous_response_id` pass through, a continued conversation
 * held as content of unknown size. Claude and Gemini models get it translated.
 */
export async function responses(c: Context<AppEnv>): Promise<Response> {
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, responsesRequestSchema);
  const raw = request as Record<string, unknown>;
  const offered = offeredTools(raw);
  const tools = offered.map((tool) => String((tool as { type?: unknown } | null)?.type));
  const feeTool = tools.find((type) => feeTools.has(type));
  // The shell tool in a container OpenAI runs (container_auto, or one named): billed per container session, as code_interpreter is.
  const hostedShell = offered.some((tool) => {
    const { type, environment } = (tool ?? {}) as { type?: unknown; environment?: { type?: unknown } | null };
    return type === 'shell' && typeof environment?.type === 'string' && environment.type.startsWith('container');
  });
  const searches = tools.some(isSearchTool) ? searchBound(raw) : 0;
  refuseUnbilledOptions([
    [feeTool !== undefined, 'tools', `The hosted tool "${feeTool}"`],
    [hostedShell, 'tools', 'The shell tool in a hosted container', 'OpenAI bills each container session beyond token prices; run the shell locally (environment "local")'],
    [tools.includes('mcp'), 'tools', 'The hosted tool "mcp"', 'each call adds its result (and the server\'s tool list) to the input, and neither has a bound'],
    // Conversations are created by POST /v1/conversations, which this gateway does not serve:
    // under its one operator key, any conversation id is the operator's own, not a customer's.
    [
      raw.conversation !== undefined && raw.conversation !== null,
      'conversation',
      'A stored conversation',
      'conversations are created by POST /v1/conversations, which this gateway does not serve; send the conversation in input, or continue a response with previous_response_id',
    ],
    [raw.service_tier !== undefined && raw.service_tier !== null && !['auto', 'default'].includes(String(raw.service_tier)), 'service_tier', `service_tier "${String(raw.service_tier)}"`],
    // OpenAI answers a background request at once ("queued", no usage) and runs the model
    // afterwards; its result is fetched by GET /v1/responses/{id}, which is not metered.
    [raw.background === true, 'background', 'Background mode', 'the response runs upstream after this request has ended, where its usage cannot be metered'],
  ]);
  const { config } = c.var.services;
  // One operator key stores every account's responses upstream: a response or an item
  // recorded as another account's is not referred to (answered as OpenAI answers an
  // unknown id). Asked beside the authorization, so it adds no round trip before the
  // upstream call; an id recorded for no account passes, since a response is recorded
  // after it is answered and the next turn may come first.
  const previous = request.previous_response_id || null;
  const items = referencedItemIds(request.input);
  const ownStored = previous || items.length
    ? c.var.services.ledger.storedElsewhere(keyHash, previous, items).then((elsewhere) => {
        if (elsewhere === null) return;
        if (elsewhere === previous) {
          throw new GatewayError(400, 'previous_response_not_found', `Previous response with id '${previous.slice(0, 200)}' not found.`, { param: 'previous_response_id' });
        }
        throw new GatewayError(400, 'item_not_found', `Item with id '${elsewhere}' not found.`, { param: 'input' });
      })
    : undefined;
  // Claude and Gemini models are reached by translation; OpenAI-format providers get the request as sent.
  const translations = translateResponses(request);
  // Tools a Claude model may be sent come with the system prompt Anthropic adds for them; the model is not known yet.
  const toolPrompt = tools.length > 0 && translations.bodies.has('anthropic') ? toolUseSystemPromptTokens : 0;
  const requestedCap = request.max_output_tokens ?? undefined;
  const stream = request.stream === true;
  const extraHeaders = clientHeaders(c);
  // A response stored upstream is remembered as this account's, so only it may retrieve it.
  const { services } = c.var;
  // A hosted tool's results (a search's) go into its input as the provider counts them, and
  // may be rendered otherwise when the response is continued: such a response bounds nothing.
  const clientToolsOnly = tools.every((type) => type === 'function' || type === 'custom');
  const whole = responsesWhole(request) && clientToolsOnly;
  // With its output items' ids once they are known: a later request may refer to them.
  const remember = (responseId: string | null | undefined, itemIds: string[] = []) => {
    if (!responseId || raw.store === false) return;
    // Read now: a request that adopted a hold taken ahead has that hold's id.
    const { requestId } = c.var;
    services.waitUntil(
      // The database records at most 1,000 (any beyond are recorded for no account, so they pass).
      services.ledger.recordStoredResponse(requestId, responseId, itemIds.slice(0, 1000), whole).catch((error: unknown) => {
        services.log({ level: 'warn', event: 'stored_response_unrecorded', requestId, responseId, error: (error as Error).message });
      }),
    );
  };
  const responsesPlan = (authorization: Authorized): ProxyPlan => {
    const format = providerFormat(config, authorization.model.provider);
    if (format !== 'openai') return translatedResponsesPlan(format, request, authorization, channelsOf(config, authorization.model.provider), translations);
    return {
      channels: channelsSpeaking(c, authorization, 'openai'),
      stream,
      build: (channel) => {
        const body: Record<string, unknown> = { ...request, model: authorization.model.upstream_model };
        if (authorization.output_capped) body.max_output_tokens = authorization.max_output_tokens;
        const built = buildOpenAIRequest(channel, '/responses', withStandardTier(channel, body), stream);
        built.init.headers = { ...extraHeaders, ...(built.init.headers as Record<string, string>) };
        return built;
      },
      createStreamProcessor: () => {
        const reader = createResponsesStreamReader();
        const processor = forwardAsIs(reader);
        // Recorded as it starts (it can be retrieved while it runs), and with its items once
        // the stream is over: those its final event lists, or, for a stream cut before it
        // (the client left, the time limit, an upstream error), those it began.
        c.var.hold?.whenClosed(() => {
          if (reader.itemIds().length) remember(reader.responseId(), reader.itemIds());
        });
        return {
          ...processor,
          processEvent: (event) => {
            const known = reader.responseId();
            const forwarded = processor.processEvent(event);
            if (!known) remember(reader.responseId());
            return forwarded;
          },
        };
      },
      readBody: (text) => {
        const response = parseJsonAs(responseObjectSchema, text);
        remember(response?.id, response ? responseItemIds(response) : []);
        return {
          body: text,
          usage: response?.usage ? convertResponsesUsage(response.usage) : null,
          delivered: response ? responseDelivered(response) : [],
          calls: response ? responseSearches(response) : {},
        };
      },
      errorEvent: (error) => responsesErrorEvent(error.code, error.message),
      countPrompt: () => countResponsesInputTokens(request),
    };  };

  // Stored content it refers to is held at what the database knows of it, when the model
  // runs once over the context: a hosted tool (a search) runs it again over all of it.
  const input = boundResponsesInput(request);
  const references = clientToolsOnly ? input.references : null;
  return authorizeAndProxy(
    c,
    {
      keyHash,
      model: request.model,
      // Each hosted search adds its results to the input.
      maxInputTokens: input.tokens + toolPrompt + searches * searchResultTokens,
      ...(references
        ? { referenced: { previousResponseId: references.previousResponseId, itemIds: references.itemIds, besides: references.besides + toolPrompt, model: request.model } }
        : {}),
      maxOutputTokens: requestedCap,
      capOutput: requestedCap === undefined,
      providers: [...config.channels.keys()].filter((provider) => {
        const format = providerFormat(config, provider);
        return format === 'openai' || translations.bodies.has(format);
      }),
      ...(searches ? { calls: { web_search: searches } } : {}),
    },
    {
      unsupportedProvider: (provider) =>
        translations.refusals.get(providerFormat(config, provider)) ??
        new GatewayError(400, 'unsupported_provider', `The model ${request.model} has no upstream channel configured.`, { param: 'model' }),
    },
    responsesPlan,
    ownStored,
  );
}

/**
 * GET /v1/responses/{id} (and its /input_items): a stored response, retrieved
 * from the OpenAI channel for the account that created it (one operator key
 * stores every customer's responses). Not charged: the upstream does not charge
 * retrieval.
 */
export async function retrieveResponse(c: Context<AppEnv>): Promise<Response> {
  const { services, requestId } = c.var;
  const allowed = await services.ledger.authorizeStoredResponse(await readKeyHash(c), c.req.param('id') ?? '', clientIp(c));
  if (allowed.status === 'refused') throw refusalError(allowed);
  const channels = channelsFor(services.config, 'openai', 'openai') ?? [];
  const suffix = c.req.path.slice('/v1/responses'.length) + (new URL(c.req.url).search || '');
  const upstreamAbort = new AbortController();
  abortWhenAborted(c.req.raw.signal, upstreamAbort);
  const headers = clientHeaders(c);
  const result = await sendWithFailover(
    channels,
    (channel) => {
      const built = buildOpenAIRequest(channel, `/responses${suffix}`, undefined, false);
      return { url: built.url, init: { method: 'GET', headers: { ...headers, ...(built.init.headers as Record<string, string>) } } };
    },
    { fetch: services.fetch, signal: upstreamAbort.signal, log: services.log, requestId },
  );
  if (!result.ok) throw result.error;
  return new Response(await result.response.text(), { status: result.response.status, headers: forwardableHeaders(result.response.headers) });
}

import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { GatewayError, googleErrorStatus } from '../errors.ts';
import { parseJsonAs } from '../parse-json-as.ts';
import { authorizeAndProxy } from '../gateway/metered-request.ts';
import { geminiCountTokens } from './count-tokens.ts';
import { channelsSpeaking, defaultSearchBound, providersSpeaking, readJsonBody, readKeyHash, refuseUnbilledOptions, searchResultTokens } from '../gateway/request-helpers.ts';
import { buildGeminiRequest, geminiErrorEvent } from '../providers/google/gemini-adaptor.ts';
import { boundGeminiInputTokens, countGeminiInputTokens } from '../providers/google/gemini-input.ts';
import { createGeminiStreamMeter, geminiDelivered, geminiSearches } from '../providers/google/gemini-stream-reader.ts';
import { generateContentRequestSchema, generateContentResponseSchema } from '../providers/google/gemini-wire.ts';
import { convertGeminiUsage } from '../providers/google/convert-gemini-usage.ts';
import { remoteContentTokenBound } from '../metering/prompt-pieces.ts';

/** POST /v1beta/models/{model}:generateContent, :streamGenerateContent (SSE) and :countTokens, native, for Gemini models. */
export async function geminiGenerateContent(c: Context<AppEnv>): Promise<Response> {
  let target: string;
  try {
    target = decodeURIComponent(c.req.param('target') ?? '');
  } catch {
    throw new GatewayError(404, 'not_found', 'The model name in the path is not valid percent-encoding.');
  }
  const separator = target.lastIndexOf(':');
  const model = target.slice(0, separator);
  const method = target.slice(separator + 1);
  if (separator < 1 || !['generateContent', 'streamGenerateContent', 'countTokens'].includes(method)) {
    throw new GatewayError(404, 'not_found', `No route for ${c.req.path}: expected models/{model}:generateContent, :streamGenerateContent or :countTokens.`);
  }
  if (method === 'countTokens') return geminiCountTokens(c, model);
  const stream = method === 'streamGenerateContent';
  if (stream && c.req.query('alt') !== 'sse') {
    throw new GatewayError(400, 'invalid_request', 'streamGenerateContent is served as server-sent events only: add ?alt=sse.');
  }
  const keyHash = await readKeyHash(c);
  // Field names in either spelling, read and sent on in camelCase (see camel-case-gemini-fields.ts).
  const request = await readJsonBody(c, generateContentRequestSchema);
  // Google Search grounding is billed per search (priced per model); the other
  // grounding tools are not priced here.
  const toolNames = (request.tools ?? []).flatMap((tool) => (tool && typeof tool === 'object' ? Object.keys(tool) : []));
  const feeTool = toolNames.find((name) => ['googleSearchRetrieval', 'googleMaps', 'enterpriseWebSearch'].includes(name));
  // Image and audio output are billed at their own rates, which the price sheet has no bucket for.
  const modalities = (request.generationConfig as { responseModalities?: unknown } | null | undefined)?.responseModalities;
  const unpricedOutput = Array.isArray(modalities) ? modalities.map((each) => String(each).toUpperCase()).find((each) => each === 'IMAGE' || each === 'AUDIO') : undefined;
  // A service tier other than standard is billed at other rates (Priority above them, Flex below).
  const tier = (request as { serviceTier?: unknown }).serviceTier;
  const tierName = tier === undefined || tier === null ? 'standard' : String(tier).toLowerCase().replace(/^service_tier_/, '');
  refuseUnbilledOptions([
    [toolNames.includes('mcpServers'), 'tools', 'Remote MCP servers (mcpServers)', 'each tool call adds its result to the input, and neither their number nor their size has a bound'],
    [tierName !== 'standard' && tierName !== 'unspecified', 'serviceTier', `serviceTier "${String(tier)}"`, 'Google bills it at other rates than the model\'s token prices'],
    [feeTool !== undefined, 'tools', `The ${feeTool} tool`],
    [unpricedOutput !== undefined, 'generationConfig.responseModalities', `${unpricedOutput === 'IMAGE' ? 'Image' : 'Audio'} output`],
  ]);
  const searches = toolNames.includes('googleSearch') ? defaultSearchBound : 0;
  // URL context reads the pages the prompt names into the input: content of unknown size.
  const fetched = toolNames.includes('urlContext') ? remoteContentTokenBound : 0;
  // Search results come back into the prompt (toolUsePromptTokenCount, billed as input),
  // held as the other formats hold theirs: searchResultTokens a search.
  const searchResults = searches * searchResultTokens;
  const requestedCap = request.generationConfig?.maxOutputTokens ?? undefined;
  return authorizeAndProxy(
    c,
    {
      keyHash,
      model,
      maxInputTokens: boundGeminiInputTokens(request) + fetched + searchResults,
      maxOutputTokens: requestedCap,
      choices: request.generationConfig?.candidateCount ?? 1,
      capOutput: requestedCap === undefined,
      providers: providersSpeaking(c, 'google'),
      ...(searches ? { calls: { web_search: searches } } : {}),
    },
    { unsupportedProvider: () => new GatewayError(400, 'unsupported_provider', `The model ${model} is not served through Gemini's format; use /v1/chat/completions.`, { param: 'model' }) },
    (authorization) => {
      const body = authorization.output_capped
        ? { ...request, generationConfig: { ...request.generationConfig, maxOutputTokens: authorization.max_output_tokens } }
        : request;
      return {
        channels: channelsSpeaking(c, authorization, 'google'),
        stream,
        build: (channel) => buildGeminiRequest(channel, authorization.model.upstream_model, body, stream),
        createStreamProcessor: createGeminiStreamMeter,
        readBody: (text) => {
          const response = parseJsonAs(generateContentResponseSchema, text);
          const searched = response ? geminiSearches(response) : 0;
          return {
            body: text,
            usage: response?.usageMetadata ? convertGeminiUsage(response.usageMetadata) : null,
            delivered: response ? geminiDelivered(response) : [],
            calls: searched ? { web_search: searched } : {},
          };
        },
        errorEvent: (error) => geminiErrorEvent(error.status, error.message, googleErrorStatus(error.status)),
        countPrompt: () => countGeminiInputTokens(request),
      };
    },
  );
}

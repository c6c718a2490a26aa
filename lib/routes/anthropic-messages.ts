import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { parseJsonAs } from '../parse-json-as.ts';
import { authorizeAndProxy } from '../gateway/metered-request.ts';
import { anthropicErrorType, GatewayError } from '../errors.ts';
import { channelsSpeaking, defaultSearchBound, providersSpeaking, readJsonBody, readKeyHash, refuseUnbilledOptions, searchResultTokens, toolCallBound } from '../gateway/request-helpers.ts';
import { remoteContentTokenBound } from '../metering/prompt-pieces.ts';
import { anthropicErrorEvent, buildAnthropicRequest } from '../providers/anthropic/anthropic-adaptor.ts';
import { boundMessagesInputTokens, countMessagesInputTokens } from '../providers/anthropic/anthropic-input.ts';
import { createAnthropicStreamMeter } from '../providers/anthropic/anthropic-stream-meter.ts';
import { anthropicMessageSchema, messagesRequestSchema } from '../providers/anthropic/anthropic-wire.ts';
import { anthropicAboveStandard, convertAnthropicUsage } from '../providers/anthropic/convert-anthropic-usage.ts';

/** POST /v1/messages: Anthropic's Messages API, native, for Claude models. */
export async function anthropicMessages(c: Context<AppEnv>): Promise<Response> {
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, messagesRequestSchema);
  // Server tools: web search is billed per search (priced per model, held at its
  // max_uses) and its results as input; web fetch by the content it fetches, held at
  // max_uses × max_content_tokens (content of unknown size without the latter); code
  // execution by container time, which is not priced here. The MCP connector adds
  // tool results of no bound, as many as the model calls for. Client tools (bash,
  // text editor, computer) run on the client: they pass.
  const tools = (request.tools ?? []) as Array<{ type?: unknown; max_uses?: unknown; max_content_tokens?: unknown } | null>;
  const ofType = (pattern: RegExp) => tools.find((tool) => pattern.test(String(tool?.type ?? '')));
  const uses = (tool: { max_uses?: unknown } | null | undefined) => toolCallBound(tool?.max_uses);
  const feeTool = ofType(/^code_execution_/);
  const fetchTool = ofType(/^web_fetch_/);
  const advisor = ofType(/^advisor_/);
  const raw = request as Record<string, unknown>;
  const mcp = (Array.isArray(raw.mcp_servers) && raw.mcp_servers.length > 0) || ofType(/^mcp_toolset$/) !== undefined;
  // Options that make Anthropic bill other rates than the model's: fast mode (a multiple of
  // them), inference kept in one geography (1.1× on Claude 4.6 and later), and other models
  // answering for it (server-side fallbacks on a refusal, an advisor it consults), each
  // billed at that model's prices. What is sent as the default passes.
  const notDefault = (value: unknown, standard: string) => value !== undefined && value !== null && value !== standard;
  const fallbacks = raw.fallbacks !== undefined && raw.fallbacks !== null && !(Array.isArray(raw.fallbacks) && raw.fallbacks.length === 0);
  refuseUnbilledOptions([
    [notDefault(raw.speed, 'standard'), 'speed', `speed "${String(raw.speed)}" (fast mode)`, 'Anthropic bills it at a multiple of the model\'s token prices'],
    [notDefault(raw.inference_geo, 'global'), 'inference_geo', `inference_geo "${String(raw.inference_geo)}"`, 'Anthropic bills inference kept in one geography above the model\'s token prices'],
    // A thread is held by Anthropic under the operator's one key: any account could continue
    // another's by its message id, and what it adds to the prompt has no size known here.
    [raw.thread !== undefined && raw.thread !== null, 'thread', 'A server-held thread', 'Anthropic would hold it under the operator\'s key, where any account could continue another\'s; send the conversation in messages'],
    [fallbacks, 'fallbacks', 'Server-side fallback to other models', 'another model would answer, billed at its own prices, not at those of the model authorized'],
    [advisor !== undefined, 'tools', `The server tool "${String(advisor?.type)}"`, 'the advisor is another model, billed at its own prices, not at those of the model authorized'],
    [feeTool !== undefined, 'tools', `The server tool "${String(feeTool?.type)}"`],
    [fetchTool !== undefined && uses(fetchTool) === undefined, 'tools', `The server tool "${String(fetchTool?.type)}" without max_uses`, 'each fetch adds the fetched content to the input, and without max_uses there is no bound on how many'],
    [mcp, 'mcp_servers', 'The MCP connector', 'each tool call adds its result to the input, and neither their number nor their size has a bound'],
  ]);
  const search = ofType(/^web_search_/);
  const searches = search ? (uses(search) ?? defaultSearchBound) : 0;
  // A fetch is never held for more than content of unknown size (a context window).
  const perFetch = typeof fetchTool?.max_content_tokens === 'number' && fetchTool.max_content_tokens > 0 ? Math.ceil(fetchTool.max_content_tokens) : remoteContentTokenBound;
  const fetched = fetchTool ? uses(fetchTool)! * Math.min(perFetch, remoteContentTokenBound) : 0;
  const serverToolInput = searches * searchResultTokens + fetched;
  // The 1M-token context beta passes: where the upstream bills long prompts at
  // higher rates, the model's price has that long-context tier (and the hold takes it).
  // Anthropic requires max_tokens, so it is always the output bound; never lowered silently.
  const stream = request.stream === true;
  const clientHeaders = { version: c.req.header('anthropic-version'), beta: c.req.header('anthropic-beta') };
  return authorizeAndProxy(
    c,
    { keyHash, model: request.model, maxInputTokens: boundMessagesInputTokens(request) + serverToolInput, maxOutputTokens: request.max_tokens, providers: providersSpeaking(c, 'anthropic'), ...(searches ? { calls: { web_search: searches } } : {}) },
    { unsupportedProvider: () => new GatewayError(400, 'unsupported_provider', `The model ${request.model} is not served through Anthropic's format; use /v1/chat/completions.`, { param: 'model' }) },
    (authorization) => ({
      channels: channelsSpeaking(c, authorization, 'anthropic'),
      stream,
      build: (channel) => buildAnthropicRequest(channel, { ...request, model: authorization.model.upstream_model }, stream, clientHeaders),
      createStreamProcessor: createAnthropicStreamMeter,
      readBody: (text) => {
        const parsed = parseJsonAs(anthropicMessageSchema, text);
        const delivered: string[] = [];
        for (const block of parsed?.content ?? []) {
          if (block.text) delivered.push(block.text);
          if (block.thinking) delivered.push(block.thinking);
          if (block.type === 'tool_use') delivered.push(block.name ?? '', JSON.stringify(block.input ?? {}));
        }
        return { body: text, usage: parsed?.usage ? convertAnthropicUsage(parsed.usage) : null, delivered, aboveStandard: parsed?.usage ? anthropicAboveStandard(parsed.usage) : [] };
      },
      errorEvent: (error) => anthropicErrorEvent(error.message, anthropicErrorType(error.status)),
      countPrompt: () => countMessagesInputTokens(request),
    }),
  );
}

import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { parseJsonAs } from '../parse-json-as.ts';
import { authorizeAndProxy } from '../gateway/metered-request.ts';
import { GatewayError } from '../errors.ts';
import { channelsSpeaking, defaultSearchBound, providersSpeaking, readJsonBody, readKeyHash, refuseUnbilledOptions } from '../gateway/request-helpers.ts';
import { anthropicErrorEvent, buildAnthropicRequest } from '../providers/anthropic/anthropic-adaptor.ts';
import { boundMessagesInputTokens, countMessagesInputTokens } from '../providers/anthropic/anthropic-input.ts';
import { createAnthropicStreamMeter } from '../providers/anthropic/anthropic-stream-meter.ts';
import { anthropicMessageSchema, messagesRequestSchema } from '../providers/anthropic/anthropic-wire.ts';
import { convertAnthropicUsage } from '../providers/anthropic/convert-anthropic-usage.ts';

/** POST /v1/messages: Anthropic's Messages API, native, for Claude models. */
export async function anthropicMessages(c: Context<AppEnv>): Promise<Response> {
  const keyHash = await readKeyHash(c);
  const request = await readJsonBody(c, messagesRequestSchema);
  // Server tools: web search is billed per search (priced per model, held at its
  // max_uses); code execution by container time, which is not priced here. Web
  // fetch costs tokens only, and client tools (bash, text editor, computer) run
  // on the client: they pass.
  const tools = (request.tools ?? []) as Array<{ type?: unknown; max_uses?: unknown } | null>;
  const feeTool = tools.find((tool) => /^code_execution_/.test(String(tool?.type ?? '')));
  refuseUnbilledOptions([[feeTool !== undefined, 'tools', `The server tool "${String(feeTool?.type)}"`]]);
  const search = tools.find((tool) => /^web_search_/.test(String(tool?.type ?? '')));
  const searches = search ? (typeof search.max_uses === 'number' && search.max_uses > 0 ? search.max_uses : defaultSearchBound) : 0;
  // The 1M-token context beta passes: where the upstream bills long prompts at
  // higher rates, the model's price has that long-context tier (and the hold takes it).
  // Anthropic requires max_tokens, so it is always the output bound; never lowered silently.
  const stream = request.stream === true;
  const clientHeaders = { version: c.req.header('anthropic-version'), beta: c.req.header('anthropic-beta') };
  return authorizeAndProxy(
    c,
    { keyHash, model: request.model, maxInputTokens: boundMessagesInputTokens(request), maxOutputTokens: request.max_tokens, providers: providersSpeaking(c, 'anthropic'), ...(searches ? { calls: { web_search: searches } } : {}) },
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
        return { body: text, usage: parsed?.usage ? convertAnthropicUsage(parsed.usage) : null, delivered };
      },
      errorEvent: (error) => anthropicErrorEvent(error.message),
      countPrompt: () => countMessagesInputTokens(request),
    }),
  );
}

import type { ChannelConfig } from '../../env.ts';
import type { UpstreamRequest } from '../../gateway/send-upstream.ts';

/** A request to an OpenAI (or OpenAI-compatible) channel; the base URL includes the version, as in the SDK. */
export function buildOpenAIRequest(channel: ChannelConfig, path: string, body: unknown, stream: boolean): UpstreamRequest {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: stream ? 'text/event-stream' : 'application/json',
  };
  if (channel.apiKey) headers.authorization = `Bearer ${channel.apiKey}`;
  return {
    url: `${channel.baseUrl.replace(/\/+$/, '')}${path}`,
    init: { method: 'POST', headers, body: JSON.stringify(body) },
  };
}

/**
 * The output cap the gateway sets when the balance affords less than the model's
 * maximum. OpenAI's reasoning models refuse `max_tokens`; compatible upstreams
 * may not know `max_completion_tokens`.
 */
export function outputCapField(channel: ChannelConfig): 'max_completion_tokens' | 'max_tokens' {
  return channel.kind === 'openai' ? 'max_completion_tokens' : 'max_tokens';
}

/**
 * OpenAI serves a request that names no tier, or `auto`, at its project's default
 * tier, which the operator can set to Priority (dearer than the standard prices billed
 * here) or to Scale Tier. The gateway asks OpenAI's own channels for the standard tier
 * by name (`default`); an OpenAI-compatible upstream, whose tiers (where it has any)
 * are named otherwise, gets the request as sent. Other tiers are refused before this.
 */
export function withStandardTier(channel: ChannelConfig, body: Record<string, unknown>): Record<string, unknown> {
  if (channel.kind === 'openai' && (body.service_tier === undefined || body.service_tier === null || body.service_tier === 'auto')) body.service_tier = 'default';
  return body;
}

/** An error in OpenAI's streaming shape, for failures after the response has started. */
export function openAIErrorEvent(message: string, code: string): string {
  return `data: ${JSON.stringify({ error: { message, type: 'api_error', code, param: null } })}\n\n`;
}

/** An upstream's error (already read out of its own shape) as an OpenAI error body. */
export function openAIErrorBody(message: string, type: string, code: string): string {
  return JSON.stringify({ error: { message, type, code, param: null } });
}

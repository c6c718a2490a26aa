import type { ChannelConfig } from '../../env.ts';
import type { UpstreamRequest } from '../../gateway/send-upstream.ts';

export const defaultAnthropicVersion = '2023-06-01';

export function buildAnthropicRequest(
  channel: ChannelConfig,
  body: unknown,
  stream: boolean,
  clientHeaders: { version?: string | undefined; beta?: string | undefined } = {},
  path = '/v1/messages',
): UpstreamRequest {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: stream ? 'text/event-stream' : 'application/json',
    'anthropic-version': clientHeaders.version ?? defaultAnthropicVersion,
  };
  if (clientHeaders.beta) headers['anthropic-beta'] = clientHeaders.beta;
  if (channel.apiKey) headers['x-api-key'] = channel.apiKey;
  return {
    url: `${channel.baseUrl.replace(/\/+$/, '')}${path}`,
    init: { method: 'POST', headers, body: JSON.stringify(body) },
  };
}

/** An error in Anthropic's streaming shape. */
export function anthropicErrorEvent(message: string, type = 'api_error'): string {
  return `event: error\ndata: ${JSON.stringify({ type: 'error', error: { type, message } })}\n\n`;
}

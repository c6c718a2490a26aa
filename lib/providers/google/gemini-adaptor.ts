import type { ChannelConfig } from '../../env.ts';
import type { UpstreamRequest } from '../../gateway/send-upstream.ts';

/** A generateContent call (streams always use SSE, `alt=sse`), or a countTokens call. */
export function buildGeminiRequest(channel: ChannelConfig, upstreamModel: string, body: unknown, stream: boolean | 'countTokens'): UpstreamRequest {
  const headers: Record<string, string> = { 'content-type': 'application/json' };
  if (channel.apiKey) headers['x-goog-api-key'] = channel.apiKey;
  const method = stream === 'countTokens' ? 'countTokens' : stream ? 'streamGenerateContent?alt=sse' : 'generateContent';
  return {
    url: `${channel.baseUrl.replace(/\/+$/, '')}/v1beta/models/${encodeURIComponent(upstreamModel)}:${method}`,
    init: { method: 'POST', headers, body: JSON.stringify(body) },
  };
}

/** An error as a Gemini stream event (Google's error shape). */
export function geminiErrorEvent(code: number, message: string, status = 'UNAVAILABLE'): string {
  return `data: ${JSON.stringify({ error: { code, message, status } })}\r\n\r\n`;
}

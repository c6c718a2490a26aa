// The `demo` provider of `npm run dev`: a local server speaking OpenAI's wire
// format (chat completions, streamed or not, and embeddings), so the gateway
// can be tried without any provider key. It reports usage like OpenAI does.
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { countTokens } from '../lib/metering/count-tokens.ts';

interface ChatBody {
  model?: string;
  messages?: Array<{ role?: string; content?: unknown }>;
  stream?: boolean;
  stream_options?: { include_usage?: boolean };
  max_tokens?: number;
  max_completion_tokens?: number;
}

function textOf(content: unknown): string {
  if (typeof content === 'string') return content;
  if (Array.isArray(content)) return content.map((part) => (part as { text?: string }).text ?? '').join(' ');
  return '';
}

async function answer(body: ChatBody) {
  const messages = body.messages ?? [];
  const question = textOf(messages.filter((message) => message.role === 'user').at(-1)?.content).slice(0, 200);
  const words = `This is Tollgate's local demo model. You said: "${question}". Every token of this answer is metered and billed.`.split(/(?= )/);
  const limit = body.max_completion_tokens ?? body.max_tokens;
  const kept = limit ? words.slice(0, Math.max(1, Math.floor(limit / 2))) : words;
  const prompt = (await countTokens(messages.map((message) => textOf(message.content)))) + 3 * messages.length + 3;
  const completion = await countTokens([kept.join('')]);
  return { words: kept, usage: { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion, prompt_tokens_details: { cached_tokens: 0, audio_tokens: 0 }, completion_tokens_details: { reasoning_tokens: 0, audio_tokens: 0 } } };
}

async function handle(request: IncomingMessage, response: ServerResponse) {
  let raw = '';
  for await (const chunk of request) raw += chunk;
  let body: ChatBody & { input?: unknown };
  try {
    body = JSON.parse(raw) as ChatBody & { input?: unknown };
  } catch {
    response.writeHead(400, { 'content-type': 'application/json' });
    response.end(JSON.stringify({ error: { message: 'invalid JSON', type: 'invalid_request_error', param: null, code: null } }));
    return;
  }
  const created = Math.floor(Date.now() / 1000);
  const id = `chatcmpl-demo${Date.now()}`;
  const model = body.model ?? 'demo';

  if (request.url?.endsWith('/embeddings')) {
    const inputs = Array.isArray(body.input) ? body.input : [body.input];
    const tokens = await countTokens(inputs.map((input) => String(input)));
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({
      object: 'list',
      data: inputs.map((input, index) => ({ object: 'embedding', index, embedding: [...String(input)].slice(0, 8).map((char) => char.charCodeAt(0) / 1000) })),
      model,
      usage: { prompt_tokens: tokens, total_tokens: tokens },
    }));
    return;
  }

  const { words, usage } = await answer(body);
  if (!body.stream) {
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify({
      id, object: 'chat.completion', created, model,
      choices: [{ index: 0, message: { role: 'assistant', content: words.join(''), refusal: null }, logprobs: null, finish_reason: 'stop' }],
      usage,
    }));
    return;
  }
  const withUsage = body.stream_options?.include_usage === true;
  const send = (choices: unknown[], chunkUsage?: unknown) => {
    const chunk: Record<string, unknown> = { id, object: 'chat.completion.chunk', created, model, choices };
    if (withUsage) chunk.usage = chunkUsage ?? null;
    response.write(`data: ${JSON.stringify(chunk)}\n\n`);
  };
  response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  send([{ index: 0, delta: { role: 'assistant', content: '' }, logprobs: null, finish_reason: null }]);
  for (const word of words) {
    if (response.destroyed) return;
    send([{ index: 0, delta: { content: word }, logprobs: null, finish_reason: null }]);
    await new Promise((resolve) => setTimeout(resolve, 30));
  }
  send([{ index: 0, delta: {}, logprobs: null, finish_reason: 'stop' }]);
  if (withUsage) send([], usage);
  response.end('data: [DONE]\n\n');
}

export async function startDemoUpstream(port = 0): Promise<{ url: string; close: () => Promise<void> }> {
  const server = createServer((request, response) => {
    handle(request, response).catch((error: unknown) => {
      if (!response.headersSent) response.writeHead(500, { 'content-type': 'application/json' });
      response.end(JSON.stringify({ error: { message: String(error), type: 'server_error', param: null, code: null } }));
    });
  });
  await new Promise<void>((resolve) => server.listen(port, '127.0.0.1', resolve));
  const { port: bound } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${bound}/v1`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

// The `demo` provider of `npm run dev`: a local server speaking OpenAI's wire
// format (chat completions and the Responses API, streamed or not, and
// embeddings), so the gateway can be tried without any provider key, from the
// SDKs and from Codex. It reports usage like OpenAI does.
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

/** A Responses request's input as chat messages: a string is one user message; items with a role are messages. */
function messagesOf(input: unknown): ChatBody['messages'] {
  if (typeof input === 'string') return [{ role: 'user', content: input }];
  if (!Array.isArray(input)) return [];
  return (input as Array<{ role?: string; content?: unknown } | null>).filter((item) => typeof item?.role === 'string').map((item) => ({ role: item!.role, content: item!.content }));
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

  if (request.url?.endsWith('/responses')) {
    await respond(body, response, model, created);
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

/** POST /v1/responses: the same answer as a Responses API object, or its stream of events. */
async function respond(body: ChatBody & { input?: unknown; instructions?: unknown; max_output_tokens?: number }, response: ServerResponse, model: string, created: number) {
  const messages = [...(typeof body.instructions === 'string' ? [{ role: 'system', content: body.instructions }] : []), ...(messagesOf(body.input) ?? [])];
  const { words, usage } = await answer({ messages, max_tokens: body.max_output_tokens });
  // Unique as OpenAI's are: the gateway records stored responses and their items by id.
  const unique = crypto.randomUUID().replaceAll('-', '');
  const id = `resp_demo${unique}`;
  const itemId = `msg_demo${unique}`;
  const text = words.join('');
  const message = (status: string, content: unknown[]) => ({ id: itemId, type: 'message', status, role: 'assistant', content });
  const part = (partText: string) => ({ type: 'output_text', text: partText, annotations: [], logprobs: [] });
  const responseUsage = {
    input_tokens: usage.prompt_tokens, input_tokens_details: { cached_tokens: 0 },
    output_tokens: usage.completion_tokens, output_tokens_details: { reasoning_tokens: 0 }, total_tokens: usage.total_tokens,
  };
  const object = (status: string, output: unknown[], withUsage: boolean) => ({
    id, object: 'response', created_at: created, status, model, output, usage: withUsage ? responseUsage : null,
    error: null, incomplete_details: null, instructions: body.instructions ?? null, max_output_tokens: body.max_output_tokens ?? null,
    parallel_tool_calls: true, previous_response_id: null, store: false, temperature: 1, text: { format: { type: 'text' } },
    tool_choice: 'auto', tools: [], top_p: 1, truncation: 'disabled', metadata: {},
  });
  const done = object('completed', [message('completed', [part(text)])], true);
  if (!body.stream) {
    response.writeHead(200, { 'content-type': 'application/json' });
    response.end(JSON.stringify(done));
    return;
  }
  let sequence = 0;
  const send = (type: string, fields: Record<string, unknown>) => response.write(`event: ${type}\ndata: ${JSON.stringify({ type, sequence_number: sequence++, ...fields })}\n\n`);
  response.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache' });
  send('response.created', { response: object('in_progress', [], false) });
  send('response.in_progress', { response: object('in_progress', [], false) });
  send('response.output_item.added', { output_index: 0, item: message('in_progress', []) });
  send('response.content_part.added', { item_id: itemId, output_index: 0, content_index: 0, part: part('') });
  for (const word of words) {
    if (response.destroyed) return;
    send('response.output_text.delta', { item_id: itemId, output_index: 0, content_index: 0, delta: word, logprobs: [] });
    await new Promise((resolve) => setTimeout(resolve, 30));
  }
  send('response.output_text.done', { item_id: itemId, output_index: 0, content_index: 0, text, logprobs: [] });
  send('response.content_part.done', { item_id: itemId, output_index: 0, content_index: 0, part: part(text) });
  send('response.output_item.done', { output_index: 0, item: message('completed', [part(text)]) });
  send('response.completed', { response: done });
  response.end();
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

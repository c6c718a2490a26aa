import { GatewayError } from '../../errors.ts';
import { contentText, parseArguments, parseDataUrl } from '../openai/openai-chunks.ts';
import type { ChatCompletionRequest } from '../openai/openai-wire.ts';

type Block = Record<string, unknown>;
type AnthropicMessage = { role: 'user' | 'assistant'; content: Block[] };

function userBlocks(content: unknown): Block[] {
  if (typeof content === 'string') return [{ type: 'text', text: content }];
  if (!Array.isArray(content)) return [];
  return content.map((part: Record<string, unknown>) => {
    if (part.type === 'text') return { type: 'text', text: String(part.text ?? '') };
    if (part.type === 'image_url') {
      const url = String((part.image_url as { url?: unknown } | undefined)?.url ?? '');
      const inline = parseDataUrl(url);
      return inline
        ? { type: 'image', source: { type: 'base64', media_type: inline.mediaType, data: inline.data } }
        : { type: 'image', source: { type: 'url', url } };
    }
    throw new GatewayError(400, 'invalid_request', `Content parts of type '${String(part.type)}' cannot be sent to this model.`, { param: 'messages' });
  });
}

const toolChoices: Record<string, Block> = { auto: { type: 'auto' }, required: { type: 'any' }, none: { type: 'none' } };

/** An OpenAI chat request in Anthropic's Messages format. */
export function openAIToAnthropic(request: ChatCompletionRequest, upstreamModel: string, maxTokens: number): Record<string, unknown> {
  // Claude answers with one message: several choices would be held for and never given.
  if (request.n && request.n > 1) {
    throw new GatewayError(400, 'unsupported_parameter', `n: ${request.n} cannot be sent to this model: it answers with one choice. Send n: 1, or one request per choice.`, { param: 'n' });
  }
  const system: string[] = [];
  const messages: AnthropicMessage[] = [];
  const push = (role: AnthropicMessage['role'], blocks: Block[]) => {
    const last = messages.at(-1);
    // Anthropic wants alternating roles: consecutive turns of one role are merged.
    if (last?.role === role) last.content.push(...blocks);
    else messages.push({ role, content: blocks });
  };

  for (const message of request.messages) {
    const raw = message as Record<string, unknown>;
    switch (message.role) {
      case 'system':
      case 'developer':
        system.push(contentText(message.content));
        break;
      case 'user':
        push('user', userBlocks(message.content));
        break;
      case 'assistant': {
        const blocks: Block[] = [];
        const text = contentText(message.content);
        if (text) blocks.push({ type: 'text', text });
        for (const call of (raw.tool_calls as Array<{ id: string; function: { name: string; arguments?: string } }> | undefined) ?? []) {
          blocks.push({ type: 'tool_use', id: call.id, name: call.function.name, input: parseArguments(call.function.arguments) });
        }
        push('assistant', blocks);
        break;
      }
      case 'tool':
        push('user', [{ type: 'tool_result', tool_use_id: String(raw.tool_call_id ?? ''), content: contentText(message.content) }]);
        break;
      default:
        throw new GatewayError(400, 'invalid_request', `Messages with role '${message.role}' cannot be sent to this model.`, { param: 'messages' });
    }
  }

  const body: Record<string, unknown> = { model: upstreamModel, max_tokens: maxTokens, messages };
  if (system.length) body.system = system.join('\n\n');
  if (request.stream) body.stream = true;
  const raw = request as Record<string, unknown>;
  if (typeof raw.temperature === 'number') body.temperature = Math.min(1, raw.temperature);
  if (typeof raw.top_p === 'number') body.top_p = raw.top_p;
  if (raw.stop) body.stop_sequences = Array.isArray(raw.stop) ? raw.stop : [raw.stop];
  const unsupported = (request.tools ?? []).find((tool) => (tool as { type?: unknown } | null)?.type !== 'function' || !(tool as { function?: { name?: unknown } }).function?.name);
  if (unsupported !== undefined) {
    throw new GatewayError(400, 'invalid_request', 'Only tools of type "function", with a name, can be sent to this model.', { param: 'tools' });
  }
  if (request.tools?.length) {
    body.tools = (request.tools as Array<{ function: { name: string; description?: string; parameters?: unknown } }>).map((tool) => ({
      name: tool.function.name,
      ...(tool.function.description ? { description: tool.function.description } : {}),
      input_schema: tool.function.parameters ?? { type: 'object', properties: {} },
    }));
  }
  const choice = raw.tool_choice;
  if (typeof choice === 'string' && toolChoices[choice]) body.tool_choice = toolChoices[choice];
  else if (choice && typeof choice === 'object') body.tool_choice = { type: 'tool', name: (choice as { function: { name: string } }).function.name };
  return body;
}

import { GatewayError } from '../../errors.ts';
import { contentText, parseArguments, parseDataUrl } from '../openai/openai-chunks.ts';
import type { ChatCompletionRequest } from '../openai/openai-wire.ts';

type Part = Record<string, unknown>;
type Content = { role: 'user' | 'model'; parts: Part[] };

function userParts(content: unknown): Part[] {
  if (typeof content === 'string') return [{ text: content }];
  if (!Array.isArray(content)) return [];
  return content.map((part: Record<string, unknown>) => {
    if (part.type === 'text') return { text: String(part.text ?? '') };
    if (part.type === 'image_url') {
      const inline = parseDataUrl(String((part.image_url as { url?: unknown } | undefined)?.url ?? ''));
      if (!inline) {
        throw new GatewayError(400, 'invalid_request', 'Gemini models take images as data: URLs (base64).', { param: 'messages' });
      }
      return { inlineData: { mimeType: inline.mediaType, data: inline.data } };
    }
    throw new GatewayError(400, 'invalid_request', `Content parts of type '${String(part.type)}' cannot be sent to this model.`, { param: 'messages' });
  });
}

const callingModes: Record<string, string> = { auto: 'AUTO', required: 'ANY', none: 'NONE' };

/** An OpenAI chat request in Gemini's generateContent format. */
export function openAIToGemini(request: ChatCompletionRequest, maxOutputTokens: number): Record<string, unknown> {
  const system: string[] = [];
  const contents: Content[] = [];
  const toolNames = new Map<string, string>();
  const push = (role: Content['role'], parts: Part[]) => {
    const last = contents.at(-1);
    if (last?.role === role) last.parts.push(...parts);
    else contents.push({ role, parts });
  };

  for (const message of request.messages) {
    const raw = message as Record<string, unknown>;
    switch (message.role) {
      case 'system':
      case 'developer':
        system.push(contentText(message.content));
        break;
      case 'user':
        push('user', userParts(message.content));
        break;
      case 'assistant': {
        const parts: Part[] = [];
        const text = contentText(message.content);
        if (text) parts.push({ text });
        for (const call of (raw.tool_calls as Array<{ id: string; function: { name: string; arguments?: string } }> | undefined) ?? []) {
          toolNames.set(call.id, call.function.name);
          parts.push({ functionCall: { name: call.function.name, args: parseArguments(call.function.arguments) } });
        }
        push('model', parts);
        break;
      }
      case 'tool': {
        const name = toolNames.get(String(raw.tool_call_id ?? ''));
        if (!name) throw new GatewayError(400, 'invalid_request', 'A tool message answers no earlier tool call.', { param: 'messages' });
        push('user', [{ functionResponse: { name, response: { content: contentText(message.content) } } }]);
        break;
      }
      default:
        throw new GatewayError(400, 'invalid_request', `Messages with role '${message.role}' cannot be sent to this model.`, { param: 'messages' });
    }
  }

  const raw = request as Record<string, unknown>;
  // A stream is translated from its first candidate only: several would be held for and
  // billed, and the client given one.
  if (request.stream && request.n && request.n > 1) {
    throw new GatewayError(400, 'unsupported_parameter', `n: ${request.n} cannot be streamed from this model: its stream carries one choice. Send n: 1, or stream: false for several.`, { param: 'n' });
  }
  const generationConfig: Record<string, unknown> = { maxOutputTokens };
  if (typeof raw.temperature === 'number') generationConfig.temperature = raw.temperature;
  if (typeof raw.top_p === 'number') generationConfig.topP = raw.top_p;
  if (raw.stop) generationConfig.stopSequences = Array.isArray(raw.stop) ? raw.stop : [raw.stop];
  if (request.n && request.n > 1) generationConfig.candidateCount = request.n;

  const body: Record<string, unknown> = { contents, generationConfig };
  if (system.length) body.systemInstruction = { parts: [{ text: system.join('\n\n') }] };
  const unsupported = (request.tools ?? []).find((tool) => (tool as { type?: unknown } | null)?.type !== 'function' || !(tool as { function?: { name?: unknown } }).function?.name);
  if (unsupported !== undefined) {
    throw new GatewayError(400, 'invalid_request', 'Only tools of type "function", with a name, can be sent to this model.', { param: 'tools' });
  }
  if (request.tools?.length) {
    body.tools = [
      {
        functionDeclarations: (request.tools as Array<{ function: { name: string; description?: string; parameters?: unknown } }>).map((tool) => ({
          name: tool.function.name,
          ...(tool.function.description ? { description: tool.function.description } : {}),
          ...(tool.function.parameters ? { parameters: tool.function.parameters } : {}),
        })),
      },
    ];
  }
  const choice = raw.tool_choice;
  if (typeof choice === 'string' && callingModes[choice]) body.toolConfig = { functionCallingConfig: { mode: callingModes[choice] } };
  else if (choice && typeof choice === 'object') {
    body.toolConfig = { functionCallingConfig: { mode: 'ANY', allowedFunctionNames: [(choice as { function: { name: string } }).function.name] } };
  }
  return body;
}

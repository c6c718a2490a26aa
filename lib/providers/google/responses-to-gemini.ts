import { GatewayError } from '../../errors.ts';
import type { Conversation, UserPart } from '../openai/responses-conversation.ts';

type Part = Record<string, unknown>;
type Content = { role: 'user' | 'model'; parts: Part[] };

const invalid = (message: string, param = 'input') => new GatewayError(400, 'invalid_request', message, { param });

function userPart(part: UserPart): Part {
  switch (part.type) {
    case 'text':
      return { text: part.text };
    case 'image':
    case 'file':
      // Gemini reads remote content only from its own Files API.
      if (!part.inline) throw invalid(`Gemini models take ${part.type === 'image' ? 'images' : 'files'} as data: URLs (base64).`);
      return { inlineData: { mimeType: part.inline.mediaType, data: part.inline.data } };
  }
}

const callingModes = { auto: 'AUTO', required: 'ANY', none: 'NONE' } as const;

/**
 * A Responses request, read as a conversation, in Gemini's generateContent
 * format. maxOutputTokens is filled in once authorized.
 */
export function responsesToGemini(conversation: Conversation): Record<string, unknown> {
  const system: string[] = [];
  const contents: Content[] = [];
  const toolOfCall = new Map<string, string>();
  // Gemini's thought signature, from the reasoning item before a call: it goes back on that call's part.
  let signature: string | null = null;
  const push = (role: Content['role'], parts: Part[]) => {
    if (!parts.length) return;
    if (role === 'model' && signature) {
      parts[0] = { ...parts[0], thoughtSignature: signature };
      signature = null;
    }
    const last = contents.at(-1);
    if (last?.role === role) last.parts.push(...parts);
    else contents.push({ role, parts });
  };

  // Attachments of tool results in a row, sent after the last of them.
  let attachments: Part[] = [];
  const flushAttachments = () => {
    push('user', attachments);
    attachments = [];
  };
  for (const turn of conversation.turns) {
    if (turn.kind !== 'result') flushAttachments();
    switch (turn.kind) {
      case 'system':
        if (turn.text) system.push(turn.text);
        break;
      case 'user':
        push('user', turn.parts.map(userPart));
        break;
      case 'assistant':
        if (turn.text) push('model', [{ text: turn.text }]);
        break;
      case 'reasoning':
        if (turn.state?.provider === 'google') signature = turn.state.value;
        break;
      case 'call':
        toolOfCall.set(turn.callId, turn.tool);
        push('model', [{ functionCall: { name: turn.tool, args: turn.input ?? {} } }]);
        break;
      case 'result': {
        const name = toolOfCall.get(turn.callId);
        if (!name) throw invalid(`A function_call_output answers no function_call in input (call_id ${turn.callId}).`);
        if (!turn.media.length) {
          push('user', [{ functionResponse: { name, response: { content: turn.output } } }]);
          break;
        }
        // The images and files a tool returned go as inline data after the turn's function
        // responses, under a line naming the call, and the response's text points to them.
        const label = `Attachments of call ${turn.callId}`;
        push('user', [{ functionResponse: { name, response: { content: [turn.output, `[See "${label}" below.]`].filter(Boolean).join('\n\n') } } }]);
        attachments.push({ text: `${label}:` }, ...turn.media.map(userPart));
        break;
      }
    }
  }
  flushAttachments();
  if (!contents.length) contents.push({ role: 'user', parts: [{ text: '.' }] });

  const generationConfig: Record<string, unknown> = {};
  if (conversation.temperature !== null) generationConfig.temperature = conversation.temperature;
  if (conversation.topP !== null) generationConfig.topP = conversation.topP;
  if (conversation.summaries) generationConfig.thinkingConfig = { includeThoughts: true };
  if (conversation.json) {
    generationConfig.responseMimeType = 'application/json';
    if (conversation.json.schema) generationConfig.responseJsonSchema = conversation.json.schema;
  }

  const body: Record<string, unknown> = { contents, generationConfig };
  if (system.length) body.systemInstruction = { parts: [{ text: system.join('\n\n') }] };
  const tools: Part[] = [];
  if (conversation.tools.length) {
    tools.push({
      functionDeclarations: conversation.tools.map((tool) => ({
        name: tool.tool,
        ...(tool.description ? { description: tool.description } : {}),
        parametersJsonSchema: tool.parameters,
      })),
    });
  }
  if (conversation.webSearch) tools.push({ googleSearch: {} });
  if (tools.length) body.tools = tools;
  const choice = conversation.toolChoice;
  if (choice.mode === 'tool' && choice.tool !== 'web_search') {
    body.toolConfig = { functionCallingConfig: { mode: 'ANY', allowedFunctionNames: [choice.tool] } };
  } else if (choice.mode !== 'tool' && choice.mode !== 'auto' && conversation.tools.length) {
    body.toolConfig = { functionCallingConfig: { mode: callingModes[choice.mode] } };
  }
  return body;
}

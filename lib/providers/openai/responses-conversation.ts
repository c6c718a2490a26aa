import { GatewayError } from '../../errors.ts';
import { defaultSearchBound, toolCallBound } from '../../gateway/request-helpers.ts';
import { parseDataUrl } from './openai-chunks.ts';
import type { ResponsesRequest } from './responses-wire.ts';

// A Responses API request read into the shape the translations to Anthropic's
// and Gemini's formats share: a conversation of turns, the function tools, and
// the options that have a counterpart there. What a stateless translation
// cannot carry is refused here, before any hold, with the reason.

export type UserPart =
  | { type: 'text'; text: string }
  | { type: 'image'; inline: { mediaType: string; data: string } | null; url: string | null }
  | { type: 'file'; inline: { mediaType: string; data: string } | null; url: string | null; filename: string | null };

/** Opaque reasoning state a provider needs back (Anthropic's thinking signature, Gemini's thought signature). */
export interface ReasoningState {
  provider: 'anthropic' | 'anthropic-redacted' | 'google';
  value: string;
}

export type Turn =
  | { kind: 'system'; text: string }
  | { kind: 'user'; parts: UserPart[] }
  | { kind: 'assistant'; text: string }
  | { kind: 'reasoning'; text: string; state: ReasoningState | null }
  | { kind: 'call'; callId: string; tool: string; input: unknown; custom: boolean }
  /** A tool's result: its text, and the images and files it returned (content parts). */
  | { kind: 'result'; callId: string; output: string; media: UserPart[] };

/** A tool as the model sees it: a flat name (a namespace's tools are `<namespace>__<name>`) and a JSON schema. */
export interface ToolSpec {
  tool: string;
  name: string;
  namespace: string | null;
  custom: boolean;
  description: string | null;
  parameters: Record<string, unknown>;
}

export interface WebSearchSpec {
  /** The searches held for (max_tool_calls, else the default bound): the most the provider may run. */
  maxUses: number;
  allowedDomains: string[] | null;
  userLocation: Record<string, unknown> | null;
}

export interface Conversation {
  turns: Turn[];
  tools: ToolSpec[];
  webSearch: WebSearchSpec | null;
  toolChoice: { mode: 'auto' | 'none' | 'required' } | { mode: 'tool'; tool: string };
  parallelToolCalls: boolean;
  temperature: number | null;
  topP: number | null;
  /** reasoning.effort, when the request asks for one. */
  effort: string | null;
  /** reasoning.summary: the client wants to see the model's reasoning. */
  summaries: boolean;
  /** text.format: a JSON schema (or any JSON) the answer must follow. */
  json: { schema: Record<string, unknown> | null } | null;
}

/** The marker on reasoning state this gateway put in `encrypted_content`, so it is recognised when a client sends it back. */
const statePrefix = 'tollgate.v1.';

export function encodeReasoningState(state: ReasoningState): string {
  return `${statePrefix}${state.provider}.${state.value}`;
}

function decodeReasoningState(encrypted: unknown): ReasoningState | null {
  if (typeof encrypted !== 'string' || !encrypted.startsWith(statePrefix)) return null;
  const rest = encrypted.slice(statePrefix.length);
  const dot = rest.indexOf('.');
  const provider = rest.slice(0, dot);
  if (provider !== 'anthropic' && provider !== 'anthropic-redacted' && provider !== 'google') return null;
  return { provider, value: rest.slice(dot + 1) };
}

type Item = Record<string, unknown>;

const refuse = (message: string, param = 'input') => new GatewayError(400, 'invalid_request', message, { param });

function text(value: unknown): string {
  return typeof value === 'string' ? value : '';
}

/** Content parts as user parts; `item` names where they come from in a refusal (a tool's output, say). */
function userParts(content: unknown, item?: string): UserPart[] {
  if (typeof content === 'string') return [{ type: 'text', text: content }];
  if (!Array.isArray(content)) return [];
  const refusePart = (message: string) => refuse(item ? `${item}: ${message}` : message);
  return (content as Item[]).map((part): UserPart => {
    switch (part?.type) {
      case 'input_text':
      case 'output_text':
      case 'text':
        return { type: 'text', text: text(part.text) };
      case 'input_image': {
        if (typeof part.file_id === 'string' && !part.image_url) throw refusePart('Images by file_id are stored with OpenAI; send this model the image by URL or as a data: URL.');
        const url = typeof part.image_url === 'string' ? part.image_url : '';
        const inline = parseDataUrl(url);
        return { type: 'image', inline, url: inline ? null : url };
      }
      case 'input_file': {
        if (typeof part.file_id === 'string' && !part.file_data) throw refusePart('Files by file_id are stored with OpenAI; send this model the file as file_data or file_url.');
        const inline = typeof part.file_data === 'string' ? parseDataUrl(part.file_data) : null;
        const url = typeof part.file_url === 'string' ? part.file_url : null;
        if (!inline && !url) throw refusePart('An input_file needs file_data (a data: URL) or file_url for this model.');
        return { type: 'file', inline, url: inline ? null : url, filename: typeof part.filename === 'string' ? part.filename : null };
      }
      default:
        throw refusePart(`Content parts of type '${String(part?.type)}' cannot be sent to this model.`);
    }
  });
}

function contentText(content: unknown): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) return '';
  return (content as Item[]).map((part) => (typeof part?.text === 'string' ? part.text : typeof part?.refusal === 'string' ? part.refusal : '')).join('');
}

/** A tool's output that is no list of parts: a string, or anything else as its JSON. */
function outputText(output: unknown): string {
  if (typeof output === 'string') return output;
  return output === undefined || output === null ? '' : JSON.stringify(output);
}

/**
 * A function's or custom tool's output: its text, and the images and files it
 * holds as content parts (the AI SDK sends a tool result of type "content" so).
 */
function toolOutput(item: Item, callId: string): { output: string; media: UserPart[] } {
  if (!Array.isArray(item.output)) return { output: outputText(item.output), media: [] };
  const parts = userParts(item.output, `${String(item.type)} ${callId}`);
  return {
    output: parts.flatMap((part) => (part.type === 'text' ? [part.text] : [])).join(''),
    media: parts.filter((part) => part.type !== 'text'),
  };
}

function parseInput(value: unknown): unknown {
  if (typeof value !== 'string' || value === '') return {};
  try {
    return JSON.parse(value);
  } catch {
    throw refuse(`A function_call's arguments are not valid JSON: ${value.slice(0, 100)}`);
  }
}

/** A freeform (custom) tool becomes a function with one string argument; its call's input is that string. */
const customParameters = (description: string | null) => ({
  type: 'object',
  properties: { input: { type: 'string', ...(description ? { description } : {}) } },
  required: ['input'],
});

function toolSpecs(tools: Item[], namespace: string | null, specs: ToolSpec[], search: { spec: WebSearchSpec | null; maxUses: number }): void {
  for (const tool of tools) {
    const type = tool?.type;
    const name = typeof tool?.name === 'string' ? tool.name : '';
    const description = typeof tool?.description === 'string' ? tool.description : null;
    const flat = namespace ? `${namespace}__${name}` : name;
    if (type === 'function' && name) {
      const parameters = tool.parameters && typeof tool.parameters === 'object' ? (tool.parameters as Record<string, unknown>) : { type: 'object', properties: {} };
      specs.push({ tool: flat, name, namespace, custom: false, description, parameters });
    } else if (type === 'custom' && name) {
      const format = tool.format as { type?: unknown; definition?: unknown } | undefined;
      const grammar = format?.type === 'grammar' && typeof format.definition === 'string' ? `Follows this grammar:\n${format.definition}` : null;
      specs.push({ tool: flat, name, namespace, custom: true, description, parameters: customParameters(grammar) });
    } else if (type === 'namespace' && name && Array.isArray(tool.tools) && !namespace) {
      toolSpecs(tool.tools as Item[], name, specs, search);
    } else if (typeof type === 'string' && type.startsWith('web_search') && !namespace) {
      const filters = tool.filters as { allowed_domains?: unknown } | null | undefined;
      const location = tool.user_location as Record<string, unknown> | null | undefined;
      search.spec = {
        maxUses: search.maxUses,
        allowedDomains: Array.isArray(filters?.allowed_domains) ? (filters.allowed_domains as string[]) : null,
        userLocation: location && typeof location === 'object' ? location : null,
      };
    } else {
      throw refuse(`Tools of type '${String(type)}' cannot be sent to this model; function, custom, namespace and web_search tools can.`, 'tools');
    }
  }
}

/** The searches a request with a web search tool is held for: its max_tool_calls, else the default bound. */
export function searchBound(request: Record<string, unknown>): number {
  return toolCallBound(request.max_tool_calls) ?? defaultSearchBound;
}

/** The Responses request as a conversation; throws a 400 for what a stateless translation cannot carry. */
export function readConversation(request: ResponsesRequest): Conversation {
  const raw = request as Record<string, unknown>;
  if (request.previous_response_id) {
    throw refuse('previous_response_id continues a conversation stored by OpenAI; for this model send the whole conversation in input (store: false).', 'previous_response_id');
  }
  if (raw.conversation !== undefined && raw.conversation !== null) {
    throw refuse('Conversations are stored by OpenAI; for this model send the whole conversation in input.', 'conversation');
  }
  if (raw.prompt !== undefined && raw.prompt !== null) throw refuse('Stored prompts are kept by OpenAI and cannot be used with this model.', 'prompt');

  const turns: Turn[] = [];
  const tools: ToolSpec[] = [];
  const search = { spec: null as WebSearchSpec | null, maxUses: searchBound(raw) };
  const instructions = contentText(request.instructions);
  if (instructions) turns.push({ kind: 'system', text: instructions });

  const items: Item[] = typeof request.input === 'string' ? [{ type: 'message', role: 'user', content: request.input }] : ((request.input as Item[] | undefined) ?? []);
  if (!Array.isArray(items)) throw refuse('input must be a string or a list of items.');
  for (const item of items) {
    const type = item?.type ?? (item && 'role' in item ? 'message' : undefined);
    switch (type) {
      case 'message': {
        const role = item.role;
        if (role === 'system' || role === 'developer') turns.push({ kind: 'system', text: contentText(item.content) });
        else if (role === 'user') turns.push({ kind: 'user', parts: userParts(item.content) });
        else if (role === 'assistant') turns.push({ kind: 'assistant', text: contentText(item.content) });
        else throw refuse(`Messages with role '${String(role)}' cannot be sent to this model.`);
        break;
      }
      case 'reasoning': {
        const summary = Array.isArray(item.summary) ? (item.summary as Item[]).map((part) => text(part?.text)).join('') : '';
        turns.push({ kind: 'reasoning', text: summary, state: decodeReasoningState(item.encrypted_content) });
        break;
      }
      case 'function_call': {
        const name = text(item.name);
        const tool = typeof item.namespace === 'string' && item.namespace ? `${item.namespace}__${name}` : name;
        turns.push({ kind: 'call', callId: text(item.call_id), tool, input: parseInput(item.arguments), custom: false });
        break;
      }
      case 'custom_tool_call': {
        const name = text(item.name);
        const tool = typeof item.namespace === 'string' && item.namespace ? `${item.namespace}__${name}` : name;
        turns.push({ kind: 'call', callId: text(item.call_id), tool, input: { input: text(item.input) }, custom: true });
        break;
      }
      case 'function_call_output':
      case 'custom_tool_call_output': {
        const callId = text(item.call_id);
        turns.push({ kind: 'result', callId, ...toolOutput(item, callId) });
        break;
      }
      case 'additional_tools':
        toolSpecs((Array.isArray(item.tools) ? item.tools : []) as Item[], null, tools, search);
        break;
      // A hosted search the model ran earlier: its results were already answered on; nothing to resend.
      case 'web_search_call':
        break;
      case 'item_reference':
        throw refuse('Item references point at items stored by OpenAI; for this model send the items themselves.');
      default:
        throw refuse(`Input items of type '${String(type)}' cannot be sent to this model.`);
    }
  }
  toolSpecs((request.tools ?? []) as Item[], null, tools, search);

  const choice = raw.tool_choice;
  let toolChoice: Conversation['toolChoice'] = { mode: 'auto' };
  if (choice === 'none' || choice === 'required' || choice === 'auto') toolChoice = { mode: choice };
  else if (choice && typeof choice === 'object') {
    const chosen = choice as { type?: unknown; name?: unknown; namespace?: unknown };
    if ((chosen.type === 'function' || chosen.type === 'custom') && typeof chosen.name === 'string') {
      toolChoice = { mode: 'tool', tool: typeof chosen.namespace === 'string' ? `${chosen.namespace}__${chosen.name}` : chosen.name };
    } else if (typeof chosen.type === 'string' && chosen.type.startsWith('web_search')) toolChoice = { mode: 'tool', tool: 'web_search' };
  }

  const reasoning = raw.reasoning as { effort?: unknown; summary?: unknown } | null | undefined;
  const format = (raw.text as { format?: { type?: unknown; schema?: unknown } } | null | undefined)?.format;
  return {
    turns,
    tools,
    webSearch: search.spec,
    toolChoice,
    parallelToolCalls: raw.parallel_tool_calls !== false,
    temperature: typeof raw.temperature === 'number' ? raw.temperature : null,
    topP: typeof raw.top_p === 'number' ? raw.top_p : null,
    effort: typeof reasoning?.effort === 'string' && reasoning.effort !== 'none' ? reasoning.effort : null,
    summaries: typeof reasoning?.summary === 'string' && reasoning.summary !== 'none',
    json:
      format?.type === 'json_schema'
        ? { schema: format.schema && typeof format.schema === 'object' ? (format.schema as Record<string, unknown>) : null }
        : format?.type === 'json_object'
          ? { schema: null }
          : null,
  };
}

/** Each flat tool name back to what the client offered, for the calls the model makes. */
export function toolsByName(conversation: Conversation): Map<string, ToolSpec> {
  return new Map(conversation.tools.map((tool) => [tool.tool, tool]));
}

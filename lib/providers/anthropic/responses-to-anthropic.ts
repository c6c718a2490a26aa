import { GatewayError } from '../../errors.ts';
import type { Conversation, UserPart } from '../openai/responses-conversation.ts';

type Block = Record<string, unknown>;
type Message = { role: 'user' | 'assistant'; content: Block[] };

/** Thinking budgets by reasoning effort; thinking needs at least 1,024 tokens and fewer than max_tokens. */
const thinkingBudgets: Record<string, number> = { minimal: 1024, low: 2048, medium: 8192, high: 24_576, xhigh: 32_768 };

function userBlock(part: UserPart): Block {
  switch (part.type) {
    case 'text':
      return { type: 'text', text: part.text };
    case 'image':
      return { type: 'image', source: part.inline ? { type: 'base64', media_type: part.inline.mediaType, data: part.inline.data } : { type: 'url', url: part.url } };
    case 'file':
      if (part.inline && part.inline.mediaType !== 'application/pdf' && !part.inline.mediaType.startsWith('text/')) {
        throw new GatewayError(400, 'invalid_request', `Files of type ${part.inline.mediaType} cannot be sent to this model (PDF and text can).`, { param: 'input' });
      }
      return {
        type: 'document',
        source: part.inline
          ? part.inline.mediaType === 'application/pdf'
            ? { type: 'base64', media_type: 'application/pdf', data: part.inline.data }
            : { type: 'text', media_type: 'text/plain', data: decodeBase64(part.inline.data) }
          : { type: 'url', url: part.url },
        ...(part.filename ? { title: part.filename } : {}),
      };
  }
}

function decodeBase64(data: string): string {
  const bytes = Uint8Array.from(atob(data), (char) => char.charCodeAt(0));
  return new TextDecoder().decode(bytes);
}

/**
 * With thinking on, Anthropic wants each assistant tool call of the turn in
 * progress to follow its thinking block. A client that did not send the
 * reasoning items back (no `include: ["reasoning.encrypted_content"]`) has none
 * to send: that request goes without thinking rather than fail upstream.
 */
function thinkingFits(messages: Message[]): boolean {
  let start = messages.length;
  while (start > 0 && !(messages[start - 1]!.role === 'user' && messages[start - 1]!.content.every((block) => block.type !== 'tool_result'))) start--;
  return messages
    .slice(start)
    .every((message) => message.role === 'user' || !message.content.some((block) => block.type === 'tool_use') || /thinking$/.test(String(message.content[0]?.type)));
}

/**
 * A Responses request, read as a conversation, in Anthropic's Messages format.
 * The model and max_tokens are filled in once authorized (`maxTokens` here is
 * only to size the thinking budget).
 */
export function responsesToAnthropic(conversation: Conversation, maxTokens: number, stream: boolean): Record<string, unknown> {
  const system: string[] = [];
  const messages: Message[] = [];
  const push = (role: Message['role'], blocks: Block[]) => {
    if (!blocks.length) return;
    const last = messages.at(-1);
    // Anthropic wants alternating roles: consecutive turns of one role are merged.
    if (last?.role === role) last.content.push(...blocks);
    else messages.push({ role, content: blocks });
  };

  for (const turn of conversation.turns) {
    switch (turn.kind) {
      case 'system':
        if (turn.text) system.push(turn.text);
        break;
      case 'user':
        push('user', turn.parts.map(userBlock));
        break;
      case 'assistant':
        if (turn.text) push('assistant', [{ type: 'text', text: turn.text }]);
        break;
      case 'reasoning':
        // Thinking goes back only with the signature Anthropic gave it; other reasoning (another provider's) cannot.
        if (turn.state?.provider === 'anthropic') push('assistant', [{ type: 'thinking', thinking: turn.text, signature: turn.state.value }]);
        else if (turn.state?.provider === 'anthropic-redacted') push('assistant', [{ type: 'redacted_thinking', data: turn.state.value }]);
        break;
      case 'call':
        push('assistant', [{ type: 'tool_use', id: turn.callId, name: turn.tool, input: turn.input ?? {} }]);
        break;
      case 'result':
        // Images and documents a tool returned go inside its tool_result, after its text.
        push('user', [{
          type: 'tool_result',
          tool_use_id: turn.callId,
          content: turn.media.length ? [...(turn.output ? [{ type: 'text', text: turn.output }] : []), ...turn.media.map(userBlock)] : turn.output,
        }]);
        break;
    }
  }
  if (!messages.length || messages[0]!.role !== 'user') messages.unshift({ role: 'user', content: [{ type: 'text', text: '.' }] });

  const body: Record<string, unknown> = { max_tokens: maxTokens, messages };
  if (system.length) body.system = system.join('\n\n');
  if (stream) body.stream = true;

  const budget = conversation.effort ? thinkingBudgets[conversation.effort] ?? thinkingBudgets.medium! : 0;
  const thinking = budget > 0 && budget < maxTokens && thinkingFits(messages);
  if (thinking) body.thinking = { type: 'enabled', budget_tokens: budget };
  else {
    // Anthropic takes no sampling settings alongside thinking.
    if (conversation.temperature !== null) body.temperature = Math.min(1, conversation.temperature);
    if (conversation.topP !== null) body.top_p = conversation.topP;
  }

  const tools: Block[] = conversation.tools.map((tool) => ({
    name: tool.tool,
    ...(tool.description ? { description: tool.description } : {}),
    input_schema: tool.parameters,
  }));
  if (conversation.webSearch) {
    tools.push({
      type: 'web_search_20250305',
      name: 'web_search',
      max_uses: conversation.webSearch.maxUses,
      ...(conversation.webSearch.allowedDomains ? { allowed_domains: conversation.webSearch.allowedDomains } : {}),
      ...(conversation.webSearch.userLocation ? { user_location: { ...conversation.webSearch.userLocation, type: 'approximate' } } : {}),
    });
  }
  if (tools.length) body.tools = tools;

  const choice = conversation.toolChoice;
  const parallel = conversation.parallelToolCalls ? {} : { disable_parallel_tool_use: true };
  if (tools.length || choice.mode === 'none') {
    if (choice.mode === 'none') body.tool_choice = { type: 'none' };
    // Anthropic forces no tool while thinking: a required tool is left to the model's choice then.
    else if (choice.mode === 'required' && !thinking) body.tool_choice = { type: 'any', ...parallel };
    else if (choice.mode === 'tool' && !thinking) body.tool_choice = { type: 'tool', name: choice.tool, ...parallel };
    else if (!conversation.parallelToolCalls) body.tool_choice = { type: 'auto', ...parallel };
  }

  if (conversation.json) {
    throw new GatewayError(400, 'invalid_request', 'Structured output (text.format) cannot be sent to this model through the Responses API; use /v1/messages.', { param: 'text' });
  }
  return body;
}

import { utf8Bytes } from '../../metering/count-tokens.ts';
import { boundPromptTokens, countPromptTokens, type InlineFile, type PromptPieces } from '../../metering/prompt-pieces.ts';
import type { MessagesRequest } from './anthropic-wire.ts';

type Block = Record<string, unknown> & { type: string };
type Counts = { images: number; remote: number; opaque: number; files: InlineFile[] };

function blockPieces(block: Block, texts: string[], counts: Counts) {
  const sourceType = (block.source as { type?: unknown } | undefined)?.type;
  if (block.type === 'text' && typeof block.text === 'string') texts.push(block.text);
  else if (block.type === 'image') counts.images += 1;
  else if (block.type === 'document' && (sourceType === 'url' || sourceType === 'file')) counts.remote += 1;
  else if (block.type === 'document' && sourceType === 'base64') {
    // A PDF (the one type Anthropic takes in base64): its bytes, and its pages.
    const source = block.source as { data?: unknown; media_type?: unknown };
    if (typeof source.data === 'string') counts.files.push({ data: source.data, mediaType: typeof source.media_type === 'string' ? source.media_type : 'application/pdf' });
    counts.opaque += utf8Bytes(JSON.stringify(block));
  }
  else if (block.type === 'tool_use') texts.push(String(block.name ?? ''), JSON.stringify(block.input ?? {}));
  else if (block.type === 'tool_result') {
    if (typeof block.content === 'string') texts.push(block.content);
    else if (Array.isArray(block.content)) {
      for (const inner of block.content as unknown[]) {
        if (inner && typeof inner === 'object' && typeof (inner as Block).type === 'string') blockPieces(inner as Block, texts, counts);
        else counts.opaque += utf8Bytes(JSON.stringify(inner) ?? '');
      }
    }
  } else if (block.type === 'thinking' && typeof block.thinking === 'string') texts.push(block.thinking);
  else counts.opaque += utf8Bytes(JSON.stringify(block));
}

/** Text, a list of blocks, or anything else (whose JSON bytes bound its tokens). */
function contentPieces(content: unknown, texts: string[], counts: Counts) {
  if (content === undefined || content === null) return;
  if (typeof content === 'string') texts.push(content);
  else if (Array.isArray(content)) {
    for (const block of content) {
      if (block && typeof block === 'object' && typeof (block as Block).type === 'string') blockPieces(block as Block, texts, counts);
      else counts.opaque += utf8Bytes(JSON.stringify(block) ?? '');
    }
  } else counts.opaque += utf8Bytes(JSON.stringify(content) ?? '');
}

function promptPieces(request: MessagesRequest): PromptPieces {
  const texts: string[] = [];
  const counts: Counts = { images: 0, remote: 0, opaque: 0, files: [] };
  contentPieces(request.system, texts, counts);
  for (const message of request.messages) {
    if (typeof message.role === 'string') texts.push(message.role);
    else counts.opaque += utf8Bytes(JSON.stringify(message.role) ?? '');
    contentPieces(message.content, texts, counts);
  }
  if (request.tools) texts.push(JSON.stringify(request.tools));
  return { texts, images: counts.images, remote: counts.remote, files: counts.files, opaqueBytes: counts.opaque };
}

/** Per-message framing, a generous allowance for Anthropic's chat template. */
const messageOverhead = 8;

/**
 * The system prompt Anthropic adds to a request that offers tools, billed as input
 * and sent nowhere in the request: the largest count of its documented table
 * (Claude 3 Opus with tool_choice auto).
 * https://docs.anthropic.com/en/docs/tool-use-pricing-and-tokens
 */
export const toolUseSystemPromptTokens = 530;

/**
 * Tools Anthropic defines (a versioned `type` rather than a schema of the client's):
 * their definitions are billed as input and sent nowhere in the request, so the
 * request's bytes do not bound them. Documented counts per tool: computer use 735,
 * with its system prompt of up to 499 more; the text editor 700; bash 245
 * (https://docs.anthropic.com/en/docs/agents-and-tools/tool-use/computer-use-tool,
 * …/text-editor-tool, …/bash-tool). A type not listed is held at the largest of them;
 * the server tools the route holds by rules of their own (web search and fetch by what
 * they add, code execution and MCP refused) are left to those.
 */
const definedToolTokens: Array<[RegExp, number]> = [
  [/^computer_/, 735 + 499],
  [/^text_editor_/, 700],
  [/^bash_/, 245],
];
const largestDefinedTool = Math.max(...definedToolTokens.map(([, tokens]) => tokens));
const heldByTheRoute = /^(web_search_|web_fetch_|code_execution_|mcp_toolset$)/;

/** What the tools Anthropic defines add to the input beyond their bytes in the request. */
function definedToolsTokens(request: MessagesRequest): number {
  let total = 0;
  for (const tool of (request.tools ?? []) as unknown[]) {
    const type = tool && typeof tool === 'object' ? (tool as { type?: unknown }).type : undefined;
    if (typeof type !== 'string' || type === 'custom' || heldByTheRoute.test(type)) continue;
    total += definedToolTokens.find(([pattern]) => pattern.test(type))?.[1] ?? largestDefinedTool;
  }
  return total;
}

const framing = (request: MessagesRequest) => (request.messages.length + 1) * messageOverhead;

/** A strict upper bound on the input tokens (UTF-8 bytes of the text; a fixed bound per image; the tool-use system prompt and the definitions of Anthropic's own tools). */
export function boundMessagesInputTokens(request: MessagesRequest): number {
  const toolPrompt = request.tools?.length ? toolUseSystemPromptTokens + definedToolsTokens(request) : 0;
  return boundPromptTokens(promptPieces(request), framing(request) + toolPrompt);
}

/** The prompt by the tokenizer, for when Anthropic reported no usage at all. */
export function countMessagesInputTokens(request: MessagesRequest): Promise<{ tokens: number; estimated: boolean }> {
  return countPromptTokens(promptPieces(request), framing(request));
}

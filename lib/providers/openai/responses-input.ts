import { utf8Bytes } from '../../metering/count-tokens.ts';
import { countPromptTokens, inlineFileOf, promptBounds, type PromptPieces } from '../../metering/prompt-pieces.ts';
import { recordableItemId } from './responses-stream-reader.ts';
import type { ResponsesRequest } from './responses-wire.ts';

type Item = Record<string, unknown>;

/** Per-item framing, as for chat messages. */
const itemOverhead = 3;

/** One content part: text by its bytes, an image at the image bound, content fetched upstream as remote, anything else by its JSON. */
function partPieces(element: unknown, pieces: PromptPieces): void {
  const part = element as Item | null;
  if (part && (part.type === 'input_text' || part.type === 'output_text' || part.type === 'text') && typeof part.text === 'string') pieces.texts.push(part.text);
  else if (part && (part.type === 'input_image' || part.type === 'computer_screenshot')) {
    // An image by URL or inline data; a file id is fetched upstream, its size unknown here.
    if (typeof part.file_id === 'string' && !part.image_url) pieces.remote = (pieces.remote ?? 0) + 1;
    else pieces.images += 1;
  } else if (part && part.type === 'input_file' && !part.file_data) pieces.remote = (pieces.remote ?? 0) + 1;
  else {
    // A file sent inline: its bytes, and its pages if it is a PDF.
    if (part && part.type === 'input_file' && typeof part.file_data === 'string') (pieces.files ??= []).push(inlineFileOf(part.file_data));
    pieces.opaqueBytes += utf8Bytes(JSON.stringify(element) ?? '');
  }
}

function contentPieces(content: unknown, pieces: PromptPieces): void {
  if (content === undefined || content === null) return;
  if (typeof content === 'string') {
    pieces.texts.push(content);
    return;
  }
  if (!Array.isArray(content)) {
    pieces.opaqueBytes += utf8Bytes(JSON.stringify(content) ?? '');
    return;
  }
  for (const element of content as unknown[]) partPieces(element, pieces);
}

/**
 * Tool results whose output may be content parts rather than text: a function's or a custom
 * tool's list of input_text / input_image / input_file parts (the AI SDK sends a tool result
 * of type "content" so), a computer call's screenshot. OpenAI puts each image and file in
 * the prompt, as it does a message's.
 */
const toolOutputs = new Set<unknown>(['function_call_output', 'custom_tool_call_output', 'computer_call_output']);

/** A stored item sent back by reference: {type: "item_reference", id}, the type being optional ({id} alone, or a null type). */
function isItemReference(item: Item): boolean {
  return item.type === 'item_reference' || ((item.type === undefined || item.type === null) && !('role' in item) && 'id' in item);
}

/**
 * Whether a request's stored response can bound what a later request continuing it adds:
 * not when some of what it carries on was left out of its own input, so out of its usage
 * (the reasoning of earlier turns, by reasoning.context; earlier items, by truncation "auto"),
 * nor when a stored prompt template shaped it (a template can bring hosted tools of its own).
 */
export function responsesWhole(request: ResponsesRequest): boolean {
  const raw = request as { truncation?: unknown; reasoning?: { context?: unknown } | null };
  return raw.truncation !== 'auto' && (raw.reasoning?.context === undefined || raw.reasoning.context === null)
    && (request.prompt === undefined || request.prompt === null);
}

/** Stored content the input refers to, fetched upstream: the response it continues, items sent back by id. */
interface StoredReferences {
  previousResponseId: string | null;
  itemIds: string[];
}

/** The input's pieces: text by its bytes, images and remote content by their bounds, anything else by its JSON. */
function promptPieces(request: ResponsesRequest, stored: StoredReferences = { previousResponseId: null, itemIds: [] }): PromptPieces {
  const pieces: PromptPieces = { texts: [], images: 0, remote: 0, opaqueBytes: 0 };
  contentPieces(request.instructions, pieces);
  if (typeof request.input === 'string') pieces.texts.push(request.input);
  else if (Array.isArray(request.input)) {
    for (const element of request.input as unknown[]) {
      const item = element as Item | null;
      if (item && (item.type === 'message' || (item.type === undefined && 'role' in item))) {
        if (typeof item.role === 'string') pieces.texts.push(item.role);
        contentPieces(item.content, pieces);
      } else if (item && (isItemReference(item) || (item.type === 'reasoning' && typeof item.id === 'string' && !item.encrypted_content))) {
        // A stored item, fetched upstream: by reference, or a reasoning item sent back by its
        // id alone (OpenAI puts the stored reasoning in the prompt).
        pieces.remote = (pieces.remote ?? 0) + 1;
        stored.itemIds.push(typeof item.id === 'string' ? item.id : '');
        if (item.type === 'reasoning') pieces.opaqueBytes += utf8Bytes(JSON.stringify(element) ?? '');
      } else if (item && toolOutputs.has(item.type) && item.output !== null && typeof item.output === 'object') {
        // Its parts as a message's content; the item's other fields by their JSON.
        const { output, ...rest } = item;
        pieces.opaqueBytes += utf8Bytes(JSON.stringify(rest));
        if (Array.isArray(output)) contentPieces(output, pieces);
        else partPieces(output, pieces);
      } else pieces.opaqueBytes += utf8Bytes(JSON.stringify(element) ?? '');
    }
  } else if (request.input !== undefined && request.input !== null) pieces.opaqueBytes += utf8Bytes(JSON.stringify(request.input) ?? '');
  // Content stored upstream and added there: a response continued (previous_response_id),
  // a conversation, a prompt template. Its size is unknown here.
  for (const content of [request.previous_response_id, request.conversation, request.prompt]) {
    if (content !== undefined && content !== null && content !== '') pieces.remote = (pieces.remote ?? 0) + 1;
  }
  if (typeof request.previous_response_id === 'string' && request.previous_response_id !== '') stored.previousResponseId = request.previous_response_id;
  // The template's variables are sent here, and go into the prompt as well.
  if (request.prompt !== undefined && request.prompt !== null) pieces.opaqueBytes += utf8Bytes(JSON.stringify(request.prompt) ?? '');
  if (request.tools) pieces.texts.push(JSON.stringify(request.tools));
  const text = (request as { text?: unknown }).text;
  if (text) pieces.texts.push(JSON.stringify(text));
  return pieces;
}

const framing = (request: ResponsesRequest) => (Array.isArray(request.input) ? request.input.length : 1) * itemOverhead + 3;

/**
 * A strict upper bound on the request's input tokens, with no tokenizer; and the stored
 * content it refers to with its bound without it (what the rest of the request can be,
 * content of other unknown size included), or null when it refers to none that can be
 * bounded otherwise. The request is read once for both.
 */
export function boundResponsesInput(request: ResponsesRequest): { tokens: number; references: (StoredReferences & { besides: number }) | null } {
  const stored: StoredReferences = { previousResponseId: null, itemIds: [] };
  const pieces = promptPieces(request, stored);
  const count = stored.itemIds.length + (stored.previousResponseId === null ? 0 : 1);
  const { bound, besides } = promptBounds(pieces, framing(request), count);
  // Ids the database could not have recorded as sent (as record_stored_response takes them:
  // no NUL nor surrogate, which OpenAI's ids never have) leave it held as before; so do the
  // settings that keep a response from bounding what follows it.
  const recordable = (id: string | null) => id === null || (recordableItemId(id) && !/[\u0000\uD800-\uDFFF]/.test(id));
  const boundable = count > 0 && stored.itemIds.length <= 1000 && stored.itemIds.every(recordable) && recordable(stored.previousResponseId) && responsesWhole(request);
  return { tokens: bound, references: boundable ? { ...stored, besides } : null };
}

/** The bound of boundResponsesInput alone. */
export function boundResponsesInputTokens(request: ResponsesRequest): number {
  return boundResponsesInput(request).tokens;
}

/** The input by the tokenizer, for when the provider reported no usage. */
export function countResponsesInputTokens(request: ResponsesRequest): Promise<{ tokens: number; estimated: boolean }> {
  return countPromptTokens(promptPieces(request), framing(request));
}

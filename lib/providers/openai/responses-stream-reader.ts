import type { TokenUsage } from '../../billing/token-buckets.ts';
import { sseJson } from '../../metering/sse-event-splitter.ts';
import { convertResponsesUsage } from './convert-responses-usage.ts';
import { responsesUsageSchema, type ResponseObject } from './responses-wire.ts';

/** The events whose `delta` is output that reached the gateway. */
const outputDeltas = new Set([
  'response.output_text.delta',
  'response.refusal.delta',
  'response.function_call_arguments.delta',
  'response.custom_tool_call_input.delta',
  'response.reasoning_summary_text.delta',
  'response.reasoning_text.delta',
]);

/** The events that end a response and carry its final usage. */
const terminal = new Set(['response.completed', 'response.incomplete', 'response.failed']);

/** Hosted web searches among a response's output items: billed per search. */
export function responseSearches(response: ResponseObject): TokenUsage {
  const searches = (response.output ?? []).filter((item) => item.type === 'web_search_call').length;
  return searches ? { web_search: searches } : {};
}

/** The output text of a finished response object: messages, refusals, tool calls, reasoning summaries. */
export function responseDelivered(response: ResponseObject): string[] {
  const delivered: string[] = [];
  const keep = (text: string | null | undefined) => {
    if (text) delivered.push(text);
  };
  for (const item of response.output ?? []) {
    for (const part of item.content ?? []) {
      keep(part.text);
      keep(part.refusal);
    }
    for (const part of item.summary ?? []) keep(part.text);
    keep(item.name);
    keep(item.arguments);
    keep(item.input);
  }
  return delivered;
}

/**
 * Ids a stored item can be recorded under and referred to by (the database takes 1 to
 * 200 characters); any other is never recorded, so never another account's either.
 */
export function recordableItemId(id: unknown): id is string {
  return typeof id === 'string' && id.length > 0 && id.length <= 200;
}

/** The ids of a finished response object's output items. */
export function responseItemIds(response: ResponseObject): string[] {
  return (response.output ?? []).map((item) => item.id).filter(recordableItemId);
}

/**
 * Reads a Responses API stream: the output deltas that reached the gateway, and
 * the final usage of response.completed (or .incomplete, or .failed). Usage is
 * final only there: a stream cut before it has none. Read by hand, not by
 * schema, since it runs for every event; a line that does not parse is skipped.
 */
export function createResponsesStreamReader() {
  let usage: TokenUsage | null = null;
  let error: string | null = null;
  let responseId: string | null = null;
  let searchesSeen = 0;
  let finalSearches: number | null = null;
  const delivered: string[] = [];
  const itemIds = new Set<string>();

  return {
    read(event: string): Record<string, unknown> | null {
      const json = sseJson(event) as Record<string, unknown> | null | undefined;
      if (!json || typeof json !== 'object') return null;
      const type = json.type;
      if (typeof type !== 'string') return null;
      if (type === 'response.created') {
        const id = (json.response as { id?: unknown } | null)?.id;
        if (typeof id === 'string') responseId = id;
      }
      if (outputDeltas.has(type) && typeof json.delta === 'string' && json.delta) delivered.push(json.delta);
      else if (type === 'response.output_item.added') {
        const item = json.item as { name?: unknown; id?: unknown } | null;
        if (typeof item?.name === 'string' && item.name) delivered.push(item.name);
        if (recordableItemId(item?.id)) itemIds.add(item.id);
      } else if (type === 'response.output_item.done') {
        if ((json.item as { type?: unknown } | null)?.type === 'web_search_call') searchesSeen++;
      } else if (terminal.has(type)) {
        const response = json.response as { usage?: unknown; output?: unknown; error?: { message?: unknown } | null } | null;
        if (Array.isArray(response?.output)) {
          const output = response.output as Array<{ type?: unknown; id?: unknown } | null>;
          finalSearches = output.filter((item) => item?.type === 'web_search_call').length;
          for (const item of output) if (recordableItemId(item?.id)) itemIds.add(item.id);
        }
        const parsed = responsesUsageSchema.safeParse(response?.usage);
        if (parsed.success && response?.usage) usage = convertResponsesUsage(parsed.data);
        if (type === 'response.failed') error = typeof response?.error?.message === 'string' ? response.error.message : 'the response failed';
      } else if (type === 'error') {
        error = typeof json.message === 'string' ? json.message : 'upstream error event';
      }
      return json;
    },
    usage: () => usage,
    delivered: () => delivered,
    error: () => error,
    /** The response's id, from response.created. */
    responseId: () => responseId,
    /** The ids of the response's output items, as their events and the final response list them. */
    itemIds: () => [...itemIds],
    /** Hosted web searches: as response.completed lists them, else as far as they were seen. */
    calls: (): TokenUsage => {
      const searches = finalSearches ?? searchesSeen;
      return searches ? { web_search: searches } : {};
    },
  };
}

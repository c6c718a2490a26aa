import type { TokenUsage } from '../../billing/token-buckets.ts';
import type { ResponsesRequest } from './responses-wire.ts';

// Writes a Responses API answer for a model reached by translation: the stream
// of events (response.created … response.completed) as the items arrive, and
// the final response object, which is also the whole answer when not streaming.

type Item = Record<string, unknown>;

function randomHex(length: number): string {
  let hex = '';
  while (hex.length < length) hex += crypto.randomUUID().replaceAll('-', '');
  return hex.slice(0, length);
}

/** Token buckets as the Responses API reports usage: cache reads inside input_tokens, reasoning inside output_tokens. */
export function toResponsesUsage(usage: TokenUsage) {
  const input = (usage.input ?? 0) + (usage.cached_input ?? 0) + (usage.cache_write ?? 0) + (usage.cache_write_1h ?? 0) + (usage.image ?? 0) + (usage.audio ?? 0);
  const output = (usage.output ?? 0) + (usage.reasoning ?? 0);
  return {
    input_tokens: input,
    input_tokens_details: { cached_tokens: usage.cached_input ?? 0 },
    output_tokens: output,
    output_tokens_details: { reasoning_tokens: usage.reasoning ?? 0 },
    total_tokens: input + output,
  };
}

export interface FunctionCallStart {
  callId: string;
  name: string;
  namespace: string | null;
  custom: boolean;
}

export type Ending = { status: 'completed' } | { status: 'incomplete'; reason: 'max_output_tokens' | 'content_filter' };

export function createResponsesWriter(request: ResponsesRequest, model: string) {
  const raw = request as Record<string, unknown>;
  const id = `resp_${randomHex(48)}`;
  const createdAt = Math.floor(Date.now() / 1000);
  const output: Item[] = [];
  let sequence = 0;
  let open: { item: Item; index: number; text: string } | null = null;
  let ended = false;

  const event = (type: string, payload: Record<string, unknown>) =>
    `event: ${type}\ndata: ${JSON.stringify({ type, ...payload, sequence_number: sequence++ })}\n\n`;

  const snapshot = (status: string, extra: Record<string, unknown> = {}) => ({
    id,
    object: 'response',
    created_at: createdAt,
    status,
    background: false,
    error: null,
    incomplete_details: null,
    instructions: request.instructions ?? null,
    max_output_tokens: request.max_output_tokens ?? null,
    max_tool_calls: raw.max_tool_calls ?? null,
    model,
    output: status === 'in_progress' ? [] : output,
    parallel_tool_calls: raw.parallel_tool_calls !== false,
    previous_response_id: null,
    prompt_cache_key: raw.prompt_cache_key ?? null,
    reasoning: raw.reasoning ?? { effort: null, summary: null },
    safety_identifier: raw.safety_identifier ?? null,
    service_tier: 'default',
    // Nothing is stored: the model's provider keeps no conversations for this API.
    store: false,
    temperature: raw.temperature ?? null,
    text: raw.text ?? { format: { type: 'text' } },
    tool_choice: raw.tool_choice ?? 'auto',
    tools: request.tools ?? [],
    top_logprobs: raw.top_logprobs ?? 0,
    top_p: raw.top_p ?? null,
    truncation: raw.truncation ?? 'disabled',
    usage: null,
    user: null,
    metadata: raw.metadata ?? {},
    ...extra,
  });

  const add = (item: Item) => {
    const index = output.length;
    output.push(item);
    open = { item, index, text: '' };
    return event('response.output_item.added', { output_index: index, item: { ...item } });
  };

  /** Ends the item being written, if any. */
  const close = (): string => {
    const current = open;
    if (!current) return '';
    open = null;
    const { item, index } = current;
    const itemId = item.id;
    let out = '';
    switch (item.type) {
      case 'message': {
        const part = { type: 'output_text', annotations: [], logprobs: [], text: current.text };
        item.content = [part];
        out += event('response.output_text.done', { item_id: itemId, output_index: index, content_index: 0, text: current.text, logprobs: [] });
        out += event('response.content_part.done', { item_id: itemId, output_index: index, content_index: 0, part });
        break;
      }
      case 'reasoning': {
        if (current.text || (item.summary as unknown[]).length) {
          const part = { type: 'summary_text', text: current.text };
          item.summary = [part];
          out += event('response.reasoning_summary_text.done', { item_id: itemId, output_index: index, summary_index: 0, text: current.text });
          out += event('response.reasoning_summary_part.done', { item_id: itemId, output_index: index, summary_index: 0, part });
        }
        break;
      }
      case 'function_call':
        item.arguments = current.text || '{}';
        out += event('response.function_call_arguments.done', { item_id: itemId, output_index: index, name: item.name, arguments: item.arguments });
        break;
      case 'custom_tool_call': {
        // Sent upstream as a function with one string argument, `input`.
        let input = current.text;
        try {
          const parsed = JSON.parse(current.text || '{}') as { input?: unknown };
          input = typeof parsed.input === 'string' ? parsed.input : current.text;
        } catch {
          // arguments that are not JSON pass as the input itself
        }
        item.input = input;
        out += event('response.custom_tool_call_input.done', { item_id: itemId, output_index: index, input });
        break;
      }
    }
    if ('status' in item) item.status = 'completed';
    return out + event('response.output_item.done', { output_index: index, item });
  };

  return {
    id,
    start: () => event('response.created', { response: snapshot('in_progress') }) + event('response.in_progress', { response: snapshot('in_progress') }),

    /** Answer text, in a message item (a new one unless one is being written). */
    text(delta: string): string {
      let out = '';
      if (open?.item.type !== 'message') {
        out += close();
        out += add({ id: `msg_${randomHex(48)}`, type: 'message', status: 'in_progress', content: [], role: 'assistant' });
        out += event('response.content_part.added', {
          item_id: open!.item.id, output_index: open!.index, content_index: 0, part: { type: 'output_text', annotations: [], logprobs: [], text: '' },
        });
      }
      if (!delta) return out;
      open!.text += delta;
      return out + event('response.output_text.delta', { item_id: open!.item.id, output_index: open!.index, content_index: 0, delta, logprobs: [] });
    },

    /** The model's reasoning, as a reasoning item's summary text. */
    reasoning(delta: string): string {
      let out = '';
      if (open?.item.type !== 'reasoning') {
        out += close();
        out += add({ id: `rs_${randomHex(48)}`, type: 'reasoning', summary: [] });
      }
      if (!delta) return out;
      if (!open!.text) {
        (open!.item.summary as unknown[]).push({ type: 'summary_text', text: '' });
        out += event('response.reasoning_summary_part.added', { item_id: open!.item.id, output_index: open!.index, summary_index: 0, part: { type: 'summary_text', text: '' } });
      }
      open!.text += delta;
      return out + event('response.reasoning_summary_text.delta', { item_id: open!.item.id, output_index: open!.index, summary_index: 0, delta });
    },

    /** The provider's opaque reasoning state, kept on the reasoning item so the client can send it back. */
    reasoningState(encrypted: string): string {
      const out = open?.item.type === 'reasoning' ? '' : this.reasoning('');
      open!.item.encrypted_content = encrypted;
      return out;
    },

    call(call: FunctionCallStart): string {
      const namespace = call.namespace ? { namespace: call.namespace } : {};
      return close() + add(
        call.custom
          ? { id: `ctc_${randomHex(48)}`, type: 'custom_tool_call', status: 'in_progress', call_id: call.callId, name: call.name, input: '', ...namespace }
          : { id: `fc_${randomHex(48)}`, type: 'function_call', status: 'in_progress', call_id: call.callId, name: call.name, arguments: '', ...namespace },
      );
    },

    callArguments(delta: string): string {
      if (!open || !delta || (open.item.type !== 'function_call' && open.item.type !== 'custom_tool_call')) return '';
      open.text += delta;
      // A custom tool's input is known only once its arguments are whole (see close).
      if (open.item.type === 'custom_tool_call') return '';
      return event('response.function_call_arguments.delta', { item_id: open.item.id, output_index: open.index, delta });
    },

    /** A hosted web search the provider ran, as one finished web_search_call item. */
    search(query: string): string {
      let out = close();
      const item: Item = { id: `ws_${randomHex(48)}`, type: 'web_search_call', status: 'in_progress' };
      out += add(item);
      open = null;
      const ids = { output_index: output.length - 1, item_id: item.id };
      out += event('response.web_search_call.in_progress', ids) + event('response.web_search_call.searching', ids) + event('response.web_search_call.completed', ids);
      item.status = 'completed';
      item.action = { type: 'search', query };
      return out + event('response.output_item.done', { output_index: ids.output_index, item });
    },

    close,

    /** The final response object (the last item closed). */
    response(usage: TokenUsage | null, ending: Ending) {
      close();
      return snapshot(ending.status, {
        ...(ending.status === 'incomplete' ? { incomplete_details: { reason: ending.reason } } : {}),
        usage: usage ? toResponsesUsage(usage) : null,
      });
    },

    /** Closes the last item and sends response.completed (or response.incomplete) with the usage. */
    finish(usage: TokenUsage | null, ending: Ending): string {
      if (ended) return '';
      ended = true;
      const out = close();
      return out + event(ending.status === 'completed' ? 'response.completed' : 'response.incomplete', { response: this.response(usage, ending) });
    },
  };
}

export type ResponsesWriter = ReturnType<typeof createResponsesWriter>;

/** An error in the Responses API's streaming shape. */
export function responsesErrorEvent(code: string, message: string): string {
  return `event: error\ndata: ${JSON.stringify({ type: 'error', code, message, param: null, sequence_number: 0 })}\n\n`;
}

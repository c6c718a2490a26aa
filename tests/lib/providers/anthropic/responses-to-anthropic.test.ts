import { describe, expect, it } from 'vitest';
import { anthropicToResponse } from '../../../../lib/providers/anthropic/anthropic-to-responses.ts';
import { responsesToAnthropic } from '../../../../lib/providers/anthropic/responses-to-anthropic.ts';
import { readConversation, toolsByName } from '../../../../lib/providers/openai/responses-conversation.ts';
import type { ResponsesRequest } from '../../../../lib/providers/openai/responses-wire.ts';

// The Responses API to Anthropic's Messages and back, without a server: the
// cases the route tests do not reach.

const tools = [
  { type: 'custom', name: 'apply_patch', format: { type: 'grammar', syntax: 'lark', definition: 'start: /.+/' } },
  { type: 'namespace', name: 'multi_agent_v1', tools: [{ type: 'function', name: 'close_agent', parameters: { type: 'object', properties: { target: { type: 'string' } } } }] },
];

function message(content: unknown[], stopReason = 'tool_use') {
  return JSON.stringify({ id: 'msg_1', type: 'message', role: 'assistant', content, stop_reason: stopReason, usage: { input_tokens: 10, output_tokens: 5 } });
}

describe('anthropicToResponse', () => {
  it('gives a namespaced tool\'s call back under its namespace, and a custom tool\'s call as custom_tool_call with its raw input', () => {
    const request = { model: 'claude', input: 'x', tools } as ResponsesRequest;
    const names = toolsByName(readConversation(request));
    const result = anthropicToResponse(
      message([
        { type: 'tool_use', id: 'toolu_1', name: 'multi_agent_v1__close_agent', input: { target: 'a1' } },
        { type: 'tool_use', id: 'toolu_2', name: 'apply_patch', input: { input: '*** Begin Patch\n*** End Patch' } },
      ]),
      request,
      names,
    );
    const body = JSON.parse(result.body) as { output: unknown[]; status: string };
    expect(body.status).toBe('completed');
    expect(body.output).toMatchObject([
      { type: 'function_call', call_id: 'toolu_1', name: 'close_agent', namespace: 'multi_agent_v1', arguments: '{"target":"a1"}' },
      { type: 'custom_tool_call', call_id: 'toolu_2', name: 'apply_patch', input: '*** Begin Patch\n*** End Patch' },
    ]);
    expect(result.usage).toMatchObject({ input: 10, output: 5 });
  });

  it('max_tokens reached is an incomplete response, as the Responses API reports it', () => {
    const request = { model: 'claude', input: 'x' } as ResponsesRequest;
    const body = JSON.parse(anthropicToResponse(message([{ type: 'text', text: 'Once upon' }], 'max_tokens'), request, new Map()).body);
    expect(body).toMatchObject({ status: 'incomplete', incomplete_details: { reason: 'max_output_tokens' } });
  });
});

describe('responsesToAnthropic', () => {
  it('a custom tool call and its output go back as tool_use and tool_result; redacted thinking goes back as it came', () => {
    const conversation = readConversation({
      model: 'claude',
      tools,
      reasoning: { effort: 'high' },
      input: [
        { role: 'user', content: 'Fix it' },
        { type: 'reasoning', summary: [], encrypted_content: 'tollgate.v1.anthropic-redacted.EmwKAhgBEgy3' },
        { type: 'custom_tool_call', call_id: 'toolu_2', name: 'apply_patch', input: '*** Begin Patch' },
        { type: 'custom_tool_call_output', call_id: 'toolu_2', output: 'Done' },
      ],
    } as ResponsesRequest);
    const body = responsesToAnthropic(conversation, 32_000, false);
    expect(body.messages).toEqual([
      { role: 'user', content: [{ type: 'text', text: 'Fix it' }] },
      { role: 'assistant', content: [{ type: 'redacted_thinking', data: 'EmwKAhgBEgy3' }, { type: 'tool_use', id: 'toolu_2', name: 'apply_patch', input: { input: '*** Begin Patch' } }] },
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_2', content: 'Done' }] },
    ]);
    expect(body.thinking).toEqual({ type: 'enabled', budget_tokens: 24_576 });
  });

  it('thinking stays off when the tool call in progress lacks its thinking block (the client did not send reasoning back), or the budget does not fit', () => {
    const request = {
      model: 'claude',
      reasoning: { effort: 'medium' },
      temperature: 0.2,
      input: [
        { role: 'user', content: 'Fix it' },
        { type: 'function_call', call_id: 'toolu_1', name: 'multi_agent_v1__close_agent', arguments: '{}' },
        { type: 'function_call_output', call_id: 'toolu_1', output: 'ok' },
      ],
      tools,
    } as ResponsesRequest;
    const withoutState = responsesToAnthropic(readConversation(request), 32_000, false);
    expect(withoutState.thinking).toBeUndefined();
    expect(withoutState.temperature).toBe(0.2);
    const small = responsesToAnthropic(readConversation({ model: 'claude', input: 'x', reasoning: { effort: 'medium' } } as ResponsesRequest), 4096, false);
    expect(small.thinking).toBeUndefined();
  });

  it('refuses what only OpenAI stores: images by file id', () => {
    expect(() => readConversation({ model: 'claude', input: [{ role: 'user', content: [{ type: 'input_image', file_id: 'file_1' }] }] } as ResponsesRequest)).toThrow(/file_id/);
  });
});

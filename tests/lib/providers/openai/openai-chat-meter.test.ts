import { describe, expect, it } from 'vitest';
import { createOpenAIChatMeter } from '../../../../lib/providers/openai/openai-chat-meter.ts';
import { readFixture, splitEvents, withoutUsage } from '../../../support/fake-upstream.ts';

describe('createOpenAIChatMeter', () => {
  it('finds the usage and the delivered text, and strips the forced usage for clients that did not ask', () => {
    const meter = createOpenAIChatMeter({ clientWantsUsage: false });
    const forwarded = splitEvents(readFixture('chat-basic.chunks.txt')).map(meter.processEvent).filter((event) => event !== null).join('');
    expect(forwarded).toBe(withoutUsage(readFixture('chat-basic.chunks.txt')));
    expect(meter.usage()).toMatchObject({ prompt_tokens: 19, completion_tokens: 9 });
    expect(meter.delivered().join('')).toBe('Hello! How can I help you today?');
  });

  it('forwards everything unchanged for clients that asked for usage', () => {
    const meter = createOpenAIChatMeter({ clientWantsUsage: true });
    const stream = readFixture('chat-tool-calls.chunks.txt');
    expect(splitEvents(stream).map(meter.processEvent).join('')).toBe(stream);
    expect(meter.delivered().join('')).toBe('get_weather{"location":"Paris, France"}');
  });

  it('notes error events and never throws on lines it cannot parse', () => {
    const meter = createOpenAIChatMeter({ clientWantsUsage: false });
    expect(meter.processEvent('data: {not json\n\n')).toBe('data: {not json\n\n');
    expect(meter.processEvent('data: {"choices": "odd"}\n\n')).toBe('data: {"choices": "odd"}\n\n');
    meter.processEvent('data: {"error":{"message":"overloaded","type":"server_error"}}\n\n');
    expect(meter.error()).toBe('overloaded');
    expect(meter.usage()).toBeNull();
  });

  it('counts reasoning text sent as delta.reasoning (vLLM, OpenRouter, Ollama, Groq) or delta.reasoning_content, once when both carry it', () => {
    const meter = createOpenAIChatMeter({ clientWantsUsage: false });
    const chunk = (delta: Record<string, unknown>) => `data: ${JSON.stringify({ object: 'chat.completion.chunk', choices: [{ index: 0, delta, finish_reason: null }] })}\n\n`;
    meter.processEvent(chunk({ reasoning: 'First, ' }));
    meter.processEvent(chunk({ reasoning_content: 'second, ' }));
    meter.processEvent(chunk({ reasoning: 'both named, ', reasoning_content: 'both named, ' }));
    meter.processEvent(chunk({ reasoning: null, content: 'Yes.' }));
    expect(meter.delivered()).toEqual(['First, ', 'second, ', 'both named, ', 'Yes.']);
    expect(meter.usage()).toBeNull();
  });

  it('does not touch "usage":null inside strings', () => {
    const meter = createOpenAIChatMeter({ clientWantsUsage: false });
    const event = 'data: {"choices":[{"index":0,"delta":{"content":"say ,\\"usage\\":null"}}],"usage":null}\n\n';
    expect(meter.processEvent(event)).toBe('data: {"choices":[{"index":0,"delta":{"content":"say ,\\"usage\\":null"}}]}\n\n');
  });
});

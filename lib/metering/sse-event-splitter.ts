/**
 * Splits a server-sent event stream into whole events, keeping each event's
 * text exactly as received (including its terminating blank line) so it can be
 * forwarded unchanged.
 */
export function createSseEventSplitter() {
  const decoder = new TextDecoder();
  let buffer = '';

  function takeEvents(): string[] {
    const events: string[] = [];
    for (;;) {
      const match = /\r\n\r\n|\n\n|\r\r/.exec(buffer);
      if (!match) return events;
      const end = match.index + match[0].length;
      events.push(buffer.slice(0, end));
      buffer = buffer.slice(end);
    }
  }

  return {
    push(chunk: Uint8Array): string[] {
      buffer += decoder.decode(chunk, { stream: true });
      return takeEvents();
    },
    /** What is left when the stream ends (an unterminated last event). */
    flush(): string {
      buffer += decoder.decode();
      const rest = buffer;
      buffer = '';
      return rest;
    },
  };
}

/** The `data:` payload of one event (lines joined with \n), or null for comments and empty events. */
export function sseData(event: string): string | null {
  const lines = event.split(/\r\n|\n|\r/);
  const data: string[] = [];
  for (const line of lines) {
    if (line.startsWith('data:')) data.push(line.slice(line.startsWith('data: ') ? 6 : 5));
  }
  return data.length ? data.join('\n') : null;
}

/** The JSON of one event's data, or undefined for comments, `[DONE]` and data that does not parse. */
export function sseJson(event: string): unknown {
  const data = sseData(event);
  if (data === null || data.trim() === '[DONE]') return undefined;
  try {
    return JSON.parse(data);
  } catch {
    return undefined;
  }
}

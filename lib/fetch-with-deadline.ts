/** Statuses whose responses carry no body (a Response refuses one). */
export const nullBodyStatuses = new Set([101, 103, 204, 205, 304]);

/**
 * A fetch whose every call is aborted after `timeoutMs` (a caller's own signal
 * still aborts it sooner). The abort surfaces as the fetch's rejection, which
 * clients such as postgrest-js report as a failed call (status 0): a stalled
 * peer costs a bounded wait, never a hang.
 */
export function fetchWithDeadline(base: typeof fetch, timeoutMs: number): typeof fetch {
  return async function fetchBeforeDeadline(input, init) {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new DOMException(`no answer within ${timeoutMs} ms`, 'TimeoutError')), timeoutMs);
    const outer = init?.signal;
    const forward = () => controller.abort(outer?.reason);
    if (outer?.aborted) forward();
    else outer?.addEventListener('abort', forward, { once: true });
    try {
      // The body is read within the deadline too: the answer counts once it is whole.
      const response = await base(input, { ...init, signal: controller.signal });
      const body = await response.arrayBuffer();
      // A status that cannot carry a body (PostgREST's 204 for a function returning void)
      // must be rebuilt with none: strict runtimes (the edge) refuse even an empty one.
      const bodyless = nullBodyStatuses.has(response.status);
      return new Response(bodyless ? null : body, { status: response.status, statusText: response.statusText, headers: response.headers });
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', forward);
    }
  };
}

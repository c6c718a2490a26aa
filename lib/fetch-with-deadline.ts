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
      return new Response(body, { status: response.status, statusText: response.statusText, headers: response.headers });
    } finally {
      clearTimeout(timer);
      outer?.removeEventListener('abort', forward);
    }
  };
}

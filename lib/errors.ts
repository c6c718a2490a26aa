import type { Refusal, TopUpLink } from './billing/ledger.ts';

export type ErrorSurface = 'openai' | 'anthropic' | 'google';

/** The one error class of the gateway; `renderError` turns it into a response body. */
export class GatewayError extends Error {
  override readonly name = 'GatewayError';
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly options: { param?: string | null; extra?: Record<string, unknown>; headers?: Record<string, string> } = {},
  ) {
    super(message);
  }
}

const openAITypes: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'insufficient_credits',
  403: 'permission_error',
  404: 'invalid_request_error',
  409: 'invalid_request_error',
  413: 'invalid_request_error',
  429: 'rate_limit_error',
  503: 'server_error',
};

const anthropicTypes: Record<number, string> = {
  400: 'invalid_request_error',
  401: 'authentication_error',
  402: 'billing_error',
  403: 'permission_error',
  404: 'not_found_error',
  413: 'request_too_large',
  429: 'rate_limit_error',
  503: 'api_error',
  504: 'timeout_error',
};

const googleStatuses: Record<number, string> = {
  400: 'INVALID_ARGUMENT',
  401: 'UNAUTHENTICATED',
  402: 'FAILED_PRECONDITION',
  403: 'PERMISSION_DENIED',
  404: 'NOT_FOUND',
  409: 'ABORTED',
  413: 'INVALID_ARGUMENT',
  429: 'RESOURCE_EXHAUSTED',
  504: 'DEADLINE_EXCEEDED',
};

/** Anthropic's error type for an HTTP status. */
export const anthropicErrorType = (status: number): string => anthropicTypes[status] ?? 'api_error';

/** Google's error status for an HTTP status. */
export const googleErrorStatus = (status: number): string => googleStatuses[status] ?? 'UNAVAILABLE';

/** The error body in the caller's API shape. */
export function renderError(error: GatewayError, surface: ErrorSurface): unknown {
  if (surface === 'anthropic') {
    return {
      type: 'error',
      error: { type: anthropicErrorType(error.status), message: error.message, code: error.code, ...error.options.extra },
    };
  }
  if (surface === 'google') {
    return {
      error: { code: error.status, message: error.message, status: googleErrorStatus(error.status), reason: error.code, ...error.options.extra },
    };
  }
  return {
    error: {
      message: error.message,
      type: openAITypes[error.status] ?? 'api_error',
      code: error.code,
      param: error.options.param ?? null,
      ...error.options.extra,
    },
  };
}

/** The HTTP status of each refusal the database gives (`private.refusal` codes); `tests/lib/errors.test.ts` checks that none is left out. */
export const refusalStatus: Record<string, number> = {
  invalid_api_key: 401,
  api_key_revoked: 401,
  api_key_expired: 401,
  ip_not_allowed: 403,
  model_not_allowed: 403,
  model_not_found: 404,
  model_not_priced: 404,
  invalid_max_tokens: 400,
  invalid_request: 400,
  insufficient_credits: 402,
  request_id_conflict: 409,
  too_many_concurrent_requests: 429,
  key_spend_limit_reached: 403,
  key_monthly_limit_reached: 403,
  member_budget_reached: 403,
  not_a_member: 401,
  unsupported_provider: 400,
  request_cancelled: 409,
  response_not_found: 404,
  tool_not_priced: 400,
};

/** Seconds a client is asked to wait after a 503 billing_unavailable. */
export const billingRetryAfterSeconds = 5;

/**
 * The database (or PostgREST in front of it) is down, stalled past its deadline
 * or failing: the request is refused before anything is sent upstream, so
 * nothing is charged, and the client may retry.
 */
export function billingUnavailable(
  message = `Billing is unavailable right now, so the request was not sent; nothing was charged. Retry in ${billingRetryAfterSeconds} s.`,
): GatewayError {
  return new GatewayError(503, 'billing_unavailable', message, {
    headers: { 'retry-after': String(billingRetryAfterSeconds) },
  });
}

/** A payment link that carries the account to Stripe as client_reference_id. */
export function topUpUrl(base: string | undefined, accountId: string | undefined): string | undefined {
  if (!base || !accountId) return undefined;
  const url = new URL(base);
  url.searchParams.set('client_reference_id', accountId);
  return url.toString();
}

/** The active credit packs' Payment Links for this account, cheapest first; TOPUP_URL when there are none. */
export function topUpOptions(links: TopUpLink[] | undefined, accountId: string | undefined, fallback?: string) {
  const options = (links ?? []).map((link) => ({
    name: link.name,
    url: topUpUrl(link.url, accountId)!,
    price: { amount: link.unit_amount, currency: link.currency },
    credits: link.credits,
  }));
  const url = options[0]?.url ?? topUpUrl(fallback, accountId);
  return { url, options };
}

/** A refusal of authorize_request as a gateway error. */
export function refusalError(refusal: Refusal, topUpBase?: string): GatewayError {
  const status = refusalStatus[refusal.code] ?? 400;
  if (refusal.code === 'insufficient_credits') {
    const { url, options } = topUpOptions(refusal.top_up_links, refusal.account_id, topUpBase);
    return new GatewayError(402, refusal.code, url ? `${refusal.message} Top up at ${url}` : refusal.message, {
      extra: { required: refusal.required, available: refusal.available, ...(url ? { top_up_url: url } : {}), ...(options.length ? { top_up_options: options } : {}) },
    });
  }
  const param = refusal.code === 'invalid_max_tokens' ? 'max_tokens' : refusal.code.startsWith('model_') ? 'model' : refusal.code === 'tool_not_priced' ? 'tools' : null;
  return new GatewayError(status, refusal.code, refusal.message, { param });
}

import { Ratelimit } from '@upstash/ratelimit';
import { Redis } from '@upstash/redis';

export interface RateLimitSubject {
  keyId: string;
  accountId: string;
  /** null: no limit. */
  requestsPerMinute: number | null;
  tokensPerMinute: number | null;
}

export interface RateLimitDecision {
  allowed: boolean;
  /** Which limit refused: requests per key, or tokens per account. */
  limitedBy?: 'requests' | 'tokens';
  retryAfterSeconds?: number;
  headers: Record<string, string>;
}

export interface RateLimiter {
  check(subject: RateLimitSubject, tokens: number): Promise<RateLimitDecision>;
  /** Counts tokens learned of after the check (the hold's full estimate), against the next requests. */
  consume(subject: RateLimitSubject, tokens: number): Promise<void>;
}

export interface RateLimiterOptions {
  url: string;
  token: string;
  /** Longer than this and the request is allowed (and the failure logged). */
  timeoutMs: number;
  windowSeconds: number;
  log: (entry: Record<string, unknown>) => void;
  fetch?: typeof fetch;
}

/**
 * Requests per minute per key and tokens per minute per account, in sliding
 * windows on Upstash Redis, shared by every gateway instance. Fails open: if
 * Redis does not answer within the timeout, or answers with an error, the
 * request is allowed and the failure is logged.
 */
export function createRateLimiter({ url, token, timeoutMs, windowSeconds, log }: RateLimiterOptions): RateLimiter {
  const redis = new Redis({ url, token, retry: { retries: 0 }, enableTelemetry: false });
  // Blocked identifiers are remembered in memory until their window resets: a
  // flood from one key costs no Redis call. Must outlive requests (module scope).
  const ephemeralCache = new Map<string, number>();
  const limiters = new Map<string, Ratelimit>();
  const window = `${windowSeconds} s` as const;

  const limiter = (kind: 'requests' | 'tokens', limit: number) => {
    const name = `${kind}:${limit}`;
    let instance = limiters.get(name);
    if (!instance) {
      instance = new Ratelimit({
        redis,
        prefix: `tollgate:${kind}`,
        limiter: Ratelimit.slidingWindow(limit, window),
        timeout: timeoutMs,
        ephemeralCache,
        analytics: false,
      });
      limiters.set(name, instance);
    }
    return instance;
  };

  const attempt = async (kind: 'requests' | 'tokens', limit: number, identifier: string, rate: number) => {
    try {
      const result = await limiter(kind, limit).limit(identifier, { rate });
      if (result.reason === 'timeout') log({ level: 'warn', event: 'rate_limit_unavailable', kind, reason: `no answer within ${timeoutMs} ms` });
      return result;
    } catch (error) {
      log({ level: 'warn', event: 'rate_limit_unavailable', kind, reason: (error as Error).message });
      return null;
    }
  };

  return {
    async check(subject, tokens) {
      const [requests, tokenResult] = await Promise.all([
        subject.requestsPerMinute ? attempt('requests', subject.requestsPerMinute, subject.keyId, 1) : null,
        subject.tokensPerMinute && tokens > 0 ? attempt('tokens', subject.tokensPerMinute, subject.accountId, tokens) : null,
      ]);
      const headers: Record<string, string> = {};
      const describe = (suffix: string, result: NonNullable<typeof requests>) => {
        headers[`x-ratelimit-limit-${suffix}`] = String(result.limit);
        headers[`x-ratelimit-remaining-${suffix}`] = String(Math.max(0, result.remaining));
        headers[`x-ratelimit-reset-${suffix}`] = `${Math.max(0, Math.ceil((result.reset - Date.now()) / 1000))}s`;
      };
      if (requests) describe('requests', requests);
      if (tokenResult) describe('tokens', tokenResult);
      const refused = requests && !requests.success ? { by: 'requests' as const, result: requests } : tokenResult && !tokenResult.success ? { by: 'tokens' as const, result: tokenResult } : null;
      if (!refused) return { allowed: true, headers };
      const retryAfterSeconds = Math.max(1, Math.ceil((refused.result.reset - Date.now()) / 1000));
      return { allowed: false, limitedBy: refused.by, retryAfterSeconds, headers: { ...headers, 'retry-after': String(retryAfterSeconds) } };
    },
    async consume(subject, tokens) {
      if (subject.tokensPerMinute && tokens > 0) await attempt('tokens', subject.tokensPerMinute, subject.accountId, tokens);
    },
  };
}

/** What the gateway knows of a key's limits from its last authorization, kept briefly in memory. */
export function createLimitsCache(ttlMs = 60_000, maxEntries = 10_000) {
  const entries = new Map<string, { subject: RateLimitSubject; expires: number }>();
  return {
    get(keyHash: string): RateLimitSubject | undefined {
      const entry = entries.get(keyHash);
      if (!entry) return undefined;
      if (entry.expires < Date.now()) {
        entries.delete(keyHash);
        return undefined;
      }
      return entry.subject;
    },
    set(keyHash: string, subject: RateLimitSubject): void {
      if (entries.size >= maxEntries) entries.delete(entries.keys().next().value!);
      entries.set(keyHash, { subject, expires: Date.now() + ttlMs });
    },
  };
}

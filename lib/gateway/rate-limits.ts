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
  /** Both limits have at least a tenth of their window left (or none applies). */
  ample: boolean;
  /** The key was marked revoked (refused, counted against nothing). */
  revoked?: boolean;
  /** Redis did not answer (in time, or sensibly): allowed unchecked, revocation mark unknown. */
  unavailable?: boolean;
  /**
   * Allowed and counted: takes back what this check counted (the request, the
   * tokens asked), for a request refused after all by what was checked beside
   * it (the database); or, given `tokens`, only that many of the tokens (a
   * hold that came back smaller than the estimate counted). Never rejects; a
   * failure is logged.
   */
  giveBack?: (tokens?: number) => Promise<void>;
}

export interface RateLimitOptions {
  /**
   * The request adopts a hold taken ahead, which the database will not check
   * again: Redis is asked even for a key with no limits, for the key's
   * revocation mark (see `markRevoked`).
   */
  revocationCheck?: boolean;
}

export interface RateLimiter {
  /** Both limits, and the key's revocation mark, in one script call; a refused request counts against nothing. */
  check(subject: RateLimitSubject, tokens: number, options?: RateLimitOptions): Promise<RateLimitDecision>;
  /**
   * Marks a key revoked for `ttlMs`, where every instance's next check of it
   * finds the mark and refuses it. Rejects when Redis does not take it.
   */
  markRevoked(key: { keyId: string; accountId: string }, ttlMs: number): Promise<void>;
  /**
   * Tokens learned of after the check (what the hold took beyond the estimate
   * checked): carried in memory and added to this account's next check on this
   * instance, so they cost no round trip of their own.
   */
  owe(subject: RateLimitSubject, tokens: number): void;
}

export interface RateLimiterOptions {
  url: string;
  token: string;
  /** Longer than this and the request is allowed (and the failure logged). */
  timeoutMs: number;
  windowSeconds: number;
  log: (entry: Record<string, unknown>) => void;
  /** The HTTP client for Upstash's REST API (the runtime's fetch by default). */
  fetch?: typeof fetch;
}

/**
 * Both limits in one script, so one round trip: a sliding window approximated
 * from two fixed windows (the previous one weighted by how much of it still
 * overlaps the sliding window). Both are checked before either is counted, so a
 * refused request counts against nothing.
 *
 * KEYS: requests (current, previous window), tokens (current, previous window),
 * the key's revocation mark. ARGV: request limit, token limit (0: none), tokens
 * asked, previous window's weight, key lifetime in ms, tokens owed. Returns
 * {refused (0 none, 1 requests, 2 tokens, 3 revoked), requests used, tokens
 * used}, counting this request when allowed. Tokens owed (what requests
 * allowed earlier held beyond what their checks counted, see `owe`) are
 * counted first, whatever the answer: they were spent already.
 */
const slidingWindowScript = `
local requestLimit = tonumber(ARGV[1])
local tokenLimit = tonumber(ARGV[2])
local tokens = tonumber(ARGV[3])
local weight = tonumber(ARGV[4])
local lifetime = tonumber(ARGV[5])
local owed = tonumber(ARGV[6])
if tokenLimit > 0 and owed > 0 then
  redis.call('INCRBY', KEYS[3], owed)
  redis.call('PEXPIRE', KEYS[3], lifetime)
end
if redis.call('EXISTS', KEYS[5]) == 1 then return {3, 0, 0} end
local function used(current, previous)
  local now = tonumber(redis.call('GET', current) or '0')
  local before = tonumber(redis.call('GET', previous) or '0')
  return math.floor(before * weight) + now
end
local requests, spent = 0, 0
if requestLimit > 0 then requests = used(KEYS[1], KEYS[2]) end
if tokenLimit > 0 then spent = used(KEYS[3], KEYS[4]) end
if requestLimit > 0 and requests + 1 > requestLimit then return {1, requests, spent} end
if tokenLimit > 0 and spent + tokens > tokenLimit then return {2, requests, spent} end
if requestLimit > 0 then
  redis.call('INCRBY', KEYS[1], 1)
  redis.call('PEXPIRE', KEYS[1], lifetime)
  requests = requests + 1
end
if tokenLimit > 0 and tokens > 0 then
  redis.call('INCRBY', KEYS[3], tokens)
  redis.call('PEXPIRE', KEYS[3], lifetime)
  spent = spent + tokens
end
return {0, requests, spent}
`;

/**
 * Takes back what one check counted, in the windows it counted it in: KEYS the
 * key's request counter and the account's token counter; ARGV requests, tokens.
 * A counter gone (its window long past) is left alone rather than made negative.
 */
const giveBackScript = `
local requests = tonumber(ARGV[1])
local tokens = tonumber(ARGV[2])
if requests > 0 and redis.call('EXISTS', KEYS[1]) == 1 then redis.call('DECRBY', KEYS[1], requests) end
if tokens > 0 and redis.call('EXISTS', KEYS[2]) == 1 then redis.call('DECRBY', KEYS[2], tokens) end
return 1
`;

/** Accounts owing tokens, and keys refused for their request rate, remembered at once. */
const maxRemembered = 10_000;

/** Sets `key` in a map kept to `max` entries: a new key pushes out the oldest. */
function setBounded<Key, Value>(map: Map<Key, Value>, key: Key, value: Value, max: number): void {
  if (!map.has(key) && map.size >= max) map.delete(map.keys().next().value!);
  map.set(key, value);
}
/**
 * How long a key refused for its request rate is refused from memory before
 * Redis is asked again: the sliding window frees room as the previous window's
 * weight falls, well before the fixed window turns.
 */
const blockedRecheckMs = 1_000;

// One hash tag per account (a key belongs to one account): every key of the script lives on one slot.
const accountBase = (accountId: string) => `tollgate:rl:{${accountId}}`;

/**
 * The Redis key of a key's revocation mark. The database writes the same one
 * through pg_net (migration 20261129000400), kept as long as `revocationMarkMs`.
 */
export const revocationMark = (keyId: string, accountId: string) => `${accountBase(accountId)}:revoked:${keyId}`;

/**
 * How long a revocation mark stays in Redis: longer than any hold taken ahead
 * can still be adopted once the key is revoked (READY_HOLD_SECONDS, at most
 * 60 s, counted from before an authorize_ahead that may be under way when the
 * revocation commits and may take up to DATABASE_TIMEOUT_MS). After that the
 * database's own check refuses the key: no hold is taken ahead for it.
 */
export const revocationMarkMs = 5 * 60_000;

async function sha1Hex(text: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-1', new TextEncoder().encode(text));
  return [...new Uint8Array(digest)].map((byte) => byte.toString(16).padStart(2, '0')).join('');
}

type UpstashAnswer = { result?: unknown; error?: string };

/** Upstash's answer to one POST: the JSON body, or an error naming the status. */
async function readAnswer(response: Response): Promise<unknown> {
  const text = await response.text();
  try {
    return JSON.parse(text) as unknown;
  } catch {
    throw new Error(`Upstash answered HTTP ${response.status}: ${text.slice(0, 200)}`);
  }
}

/** How many calls to Upstash one instance has under way before the next commands wait to go together. */
const callsUnderWay = 2;
/** At most this many commands in one pipeline (a few hundred bytes each); the rest go in the next. */
const pipelineMax = 100;
/**
 * In a burst (a full pipeline waiting), full pipelines go at once up to this
 * many calls under way, rather than waiting out their deadlines (which would
 * let them through unchecked) behind the two already under way.
 */
const callsUnderWayInBurst = 8;
/** The longest a check waits for a call under way before it goes anyway (see `next`). */
const maxQueueWaitMs = 50;

/**
 * Runs `script` on Upstash by its SHA-1 (EVALSHA, Upstash's REST protocol),
 * loading it with EVAL only when Redis does not know it yet (NOSCRIPT).
 * Rejects on a transport failure or a Redis error.
 *
 * While `callsUnderWay` calls are under way, further commands wait, and go
 * together, as one POST to /pipeline, when one of those calls is answered
 * (or at once, up to `callsUnderWayInBurst` calls, once a full pipeline waits):
 * with many requests at once, far fewer HTTP calls than requests, and one
 * request alone goes at once, as a POST of its one command. Upstash runs a
 * pipeline's commands in order, each atomically, and answers each on its own;
 * a command whose signal aborts (its deadline) is rejected then, whether it was
 * still waiting (it is not sent) or its pipeline is under way (which is aborted
 * once every command in it has been).
 */
function createScriptRunner(url: string, token: string, script: string, send: typeof fetch, maxQueueWaitMs: number) {
  const endpoint = url.replace(/\/?$/, '/');
  const headers = { authorization: `Bearer ${token}`, 'content-type': 'application/json' };
  let sha: Promise<string> | undefined;
  const call = async (command: Array<string | number>, signal: AbortSignal): Promise<unknown> => {
    const response = await send(endpoint, { method: 'POST', headers, body: JSON.stringify(command), signal });
    const answer = (await readAnswer(response)) as UpstashAnswer;
    if (answer.error !== undefined || !response.ok) throw new Error(answer.error ?? `Upstash answered HTTP ${response.status}`);
    return answer.result;
  };

  interface Queued {
    command: Array<string | number>;
    signal: AbortSignal;
    resolve: (result: unknown) => void;
    reject: (error: unknown) => void;
  }
  let underWay = 0;
  let queue: Queued[] = [];

  const pipeline = async (batch: Queued[]) => {
    const controller = new AbortController();
    let live = batch.length;
    for (const item of batch) {
      item.signal.addEventListener('abort', () => {
        if (--live === 0) controller.abort(item.signal.reason);
      }, { once: true });
    }
    try {
      const response = await send(`${endpoint}pipeline`, { method: 'POST', headers, body: JSON.stringify(batch.map((item) => item.command)), signal: controller.signal });
      const answers = await readAnswer(response);
      if (!response.ok || !Array.isArray(answers) || answers.length !== batch.length) {
        const error = (answers as UpstashAnswer | null)?.error;
        throw new Error(error ?? `Upstash answered HTTP ${response.status} with ${Array.isArray(answers) ? answers.length : 'no'} answers for ${batch.length} commands`);
      }
      batch.forEach((item, index) => {
        const answer = answers[index] as UpstashAnswer;
        if (answer?.error !== undefined) item.reject(new Error(answer.error));
        else item.resolve(answer?.result);
      });
    } catch (error) {
      for (const item of batch) item.reject(error);
    }
  };

  let waited: ReturnType<typeof setTimeout> | undefined;
  /** `late`: the oldest waiting has waited maxQueueWaitMs: what waits goes now, up to the burst's calls under way. */
  const next = (late = false) => {
    queue = queue.filter((item) => !item.signal.aborted);
    while (queue.length && (underWay < callsUnderWay || ((late || queue.length >= pipelineMax) && underWay < callsUnderWayInBurst))) {
      const batch = queue.splice(0, pipelineMax);
      underWay++;
      const sent = batch.length === 1 ? call(batch[0]!.command, batch[0]!.signal).then(batch[0]!.resolve, batch[0]!.reject) : pipeline(batch);
      void sent.finally(() => {
        underWay--;
        next();
      });
    }
    // A check waits for a call under way to be answered at most maxQueueWaitMs: behind slow
    // answers (Redis well within the deadline, but slow) it would otherwise miss its own
    // deadline waiting, and be let through unchecked.
    if (queue.length && waited === undefined) {
      waited = setTimeout(() => {
        waited = undefined;
        next(true);
      }, maxQueueWaitMs);
    } else if (!queue.length && waited !== undefined) {
      clearTimeout(waited);
      waited = undefined;
    }
  };

  /** `first`: ahead of the commands waiting (a command sent again, which has waited once already). */
  const enqueue = (command: Array<string | number>, signal: AbortSignal, first = false) =>
    new Promise<unknown>((resolve, reject) => {
      if (signal.aborted) return reject(signal.reason);
      // Rejected at the deadline even when the answer it waits for comes later (a later resolve is ignored).
      signal.addEventListener('abort', () => reject(signal.reason), { once: true });
      const item = { command, signal, resolve, reject };
      if (first) queue.unshift(item);
      else queue.push(item);
      next();
    });

  return {
    run: async (keys: string[], args: string[], signal: AbortSignal): Promise<unknown> => {
      sha ??= sha1Hex(script);
      try {
        return await enqueue(['evalsha', await sha, keys.length, ...keys, ...args], signal);
      } catch (error) {
        if (!/NOSCRIPT/i.test((error as Error).message)) throw error;
        return enqueue(['eval', script, keys.length, ...keys, ...args], signal, true);
      }
    },
    /** One plain command, on its own. */
    call,
  };
}

/**
 * Requests per minute per key and tokens per minute per account, in sliding
 * windows on Upstash Redis, shared by every gateway instance: one script call
 * per request. Fails open: if Redis does not answer within the timeout, or
 * answers with an error, the request is allowed and the failure is logged.
 * A key refused for its request rate is refused from memory for a second
 * (`blockedRecheckMs`), so a flood from one key costs one Redis call a second
 * per instance. The same script call
 * finds a key marked revoked (by the revocation route) and refuses it; failing
 * open, it says so (`unavailable`), and the caller that relies on the mark asks
 * the database instead.
 */
export function createRateLimiter({ url, token, timeoutMs, windowSeconds, log, fetch: send = (input, init) => fetch(input, init) }: RateLimiterOptions): RateLimiter {
  // A tenth of the deadline, and never long when Redis answers in a few milliseconds.
  const redis = createScriptRunner(url, token, slidingWindowScript, send, Math.min(maxQueueWaitMs, timeoutMs / 10));
  /** Aborts after the timeout; the caller clears the timer. */
  const deadline = () => {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(new Error(`no answer within ${timeoutMs} ms`)), timeoutMs);
    return { controller, timer };
  };
  /** One plain command, within the deadline. */
  const callWithin = async (command: Array<string | number>) => {
    const { controller, timer } = deadline();
    try {
      return await redis.call(command, controller.signal);
    } finally {
      clearTimeout(timer);
    }
  };
  const windowMs = windowSeconds * 1000;
  /** Keys refused for their request rate: refused from memory until `recheckAt`; their window turns at `resetAt`. */
  const blocked = new Map<string, { recheckAt: number; resetAt: number }>();
  const debts = new Map<string, number>();
  const addDebt = (accountId: string, tokens: number) => {
    setBounded(debts, accountId, (debts.get(accountId) ?? 0) + tokens, maxRemembered);
  };

  const headersFor = (subject: RateLimitSubject, requests: number, spent: number, resetMs: number) => {
    const headers: Record<string, string> = {};
    const reset = `${Math.max(0, Math.ceil(resetMs / 1000))}s`;
    if (subject.requestsPerMinute) {
      headers['x-ratelimit-limit-requests'] = String(subject.requestsPerMinute);
      headers['x-ratelimit-remaining-requests'] = String(Math.max(0, subject.requestsPerMinute - requests));
      headers['x-ratelimit-reset-requests'] = reset;
    }
    if (subject.tokensPerMinute) {
      headers['x-ratelimit-limit-tokens'] = String(subject.tokensPerMinute);
      headers['x-ratelimit-remaining-tokens'] = String(Math.max(0, subject.tokensPerMinute - spent));
      headers['x-ratelimit-reset-tokens'] = reset;
    }
    return headers;
  };

  const refusal = (limitedBy: 'requests' | 'tokens', resetMs: number, headers: Record<string, string>): RateLimitDecision => {
    const retryAfterSeconds = Math.max(1, Math.ceil(resetMs / 1000));
    return { allowed: false, limitedBy, retryAfterSeconds, ample: false, headers: { ...headers, 'retry-after': String(retryAfterSeconds) } };
  };

  return {
    async check(subject, tokens, options = {}) {
      const requestLimit = subject.requestsPerMinute ?? 0;
      const tokenLimit = subject.tokensPerMinute ?? 0;
      if (!requestLimit && !tokenLimit && !options.revocationCheck) return { allowed: true, headers: {}, ample: true };
      const now = Date.now();
      const window = Math.floor(now / windowMs);
      const resetMs = (window + 1) * windowMs - now;
      const refused = blocked.get(subject.keyId);
      if (refused !== undefined) {
        if (refused.recheckAt > now) return refusal('requests', refused.resetAt - now, headersFor(subject, requestLimit, 0, refused.resetAt - now));
        blocked.delete(subject.keyId);
      }
      // What this instance owes for the account goes with this call and is counted by it
      // whatever its answer; it is taken now, so a check under way beside this one, or a
      // debt owed while this one is under way, is not counted twice or lost.
      const debt = tokenLimit ? (debts.get(subject.accountId) ?? 0) : 0;
      if (debt) debts.delete(subject.accountId);
      const asked = tokenLimit ? tokens : 0;
      const base = accountBase(subject.accountId);
      const keys = [
        `${base}:r:${subject.keyId}:${window}`,
        `${base}:r:${subject.keyId}:${window - 1}`,
        `${base}:t:${window}`,
        `${base}:t:${window - 1}`,
        revocationMark(subject.keyId, subject.accountId),
      ];
      const weight = 1 - (now % windowMs) / windowMs;
      const { controller, timer } = deadline();
      let answer: unknown;
      try {
        answer = await redis.run(keys, [String(requestLimit), String(tokenLimit), String(asked), weight.toFixed(6), String(windowMs * 2 + 1000), String(debt)], controller.signal);
      } catch (error) {
        // Owed still: counted by the next check (twice, should the script have run after all).
        if (debt) addDebt(subject.accountId, debt);
        const reason = controller.signal.aborted ? `no answer within ${timeoutMs} ms` : (error as Error).message;
        log({ level: 'warn', event: 'rate_limit_unavailable', reason });
        return { allowed: true, headers: {}, ample: false, unavailable: true };
      } finally {
        clearTimeout(timer);
      }
      const counts = Array.isArray(answer) && answer.length === 3 ? answer.map(Number) : [];
      if (counts.length !== 3 || !counts.every(Number.isFinite)) {
        log({ level: 'warn', event: 'rate_limit_unavailable', reason: `unexpected answer ${JSON.stringify(answer)?.slice(0, 100)}` });
        return { allowed: true, headers: {}, ample: false, unavailable: true };
      }
      const [outcome, requests, spent] = counts as [number, number, number];
      if (outcome === 3) return { allowed: false, revoked: true, headers: {}, ample: false };
      const headers = headersFor(subject, requests, spent, resetMs);
      if (outcome === 1) {
        setBounded(blocked, subject.keyId, { recheckAt: now + Math.min(resetMs, blockedRecheckMs), resetAt: now + resetMs }, maxRemembered);
        return refusal('requests', resetMs, headers);
      }
      if (outcome === 2) return refusal('tokens', resetMs, headers);
      const ample = (!requestLimit || requestLimit - requests >= requestLimit / 10) && (!tokenLimit || tokenLimit - spent >= tokenLimit / 10);
      const counted = [requestLimit ? 1 : 0, tokenLimit ? asked : 0] as const;
      if (!counted[0] && !counted[1]) return { allowed: true, headers, ample };
      const giveBack = async (tokens?: number) => {
        const back = tokens === undefined ? counted : ([0, Math.min(counted[1], Math.max(0, Math.floor(tokens)))] as const);
        if (!back[0] && !back[1]) return;
        await callWithin(['eval', giveBackScript, 2, keys[0]!, keys[2]!, back[0], back[1]]).catch((error: unknown) => {
          // At the deadline the call is aborted with "no answer within … ms".
          log({ level: 'warn', event: 'rate_limit_not_given_back', keyId: subject.keyId, error: (error as Error).message });
        });
      };
      return { allowed: true, headers, ample, giveBack };
    },
    async markRevoked({ keyId, accountId }, ttlMs) {
      await callWithin(['set', revocationMark(keyId, accountId), '1', 'px', Math.max(1, Math.round(ttlMs))]);
    },
    owe(subject, tokens) {
      if (!subject.tokensPerMinute || tokens <= 0) return;
      addDebt(subject.accountId, tokens);
    },
  };
}

/** Models per key whose last output bound is remembered. */
const outputsPerKey = 8;

/**
 * What the gateway knows of a key's limits from its last authorization, kept
 * briefly in memory, with the output bound its last authorization of each model
 * had: the estimate a check beside authorize counts for a request that sets none.
 */
export function createLimitsCache(ttlMs = 60_000, maxEntries = 10_000) {
  const entries = new Map<string, { subject: RateLimitSubject; outputs: Map<string, number>; expires: number }>();
  const live = (keyHash: string) => {
    const entry = entries.get(keyHash);
    if (entry && entry.expires < Date.now()) {
      entries.delete(keyHash);
      return undefined;
    }
    return entry;
  };
  return {
    get(keyHash: string): RateLimitSubject | undefined {
      return live(keyHash)?.subject;
    },
    /** The output bound (per choice) of the key's last authorization of `model`, if remembered. */
    output(keyHash: string, model: string): number | undefined {
      return live(keyHash)?.outputs.get(model);
    },
    set(keyHash: string, subject: RateLimitSubject, model?: string, outputTokens?: number): void {
      const outputs = live(keyHash)?.outputs ?? new Map<string, number>();
      if (model !== undefined && outputTokens !== undefined) setBounded(outputs, model, outputTokens, outputsPerKey);
      setBounded(entries, keyHash, { subject, outputs, expires: Date.now() + ttlMs }, maxEntries);
    },
  };
}

import type { Context } from 'hono';
import type { z } from 'zod';
import type { AppEnv, Services } from '../app-env.ts';
import { isRefusedInput, type Authorized, type AuthorizeRequestInput } from '../billing/ledger.ts';
import { hashApiKey } from '../billing/hash-api-key.ts';
import { GatewayError, refusalError } from '../errors.ts';
import { jsonNestingExceeds, maxJsonNesting } from './json-nesting.ts';
import { openRequestHold } from './request-hold.ts';
import { speculationHeadroom } from './warm-keys.ts';
import type { ReadyHold } from './ready-holds.ts';
import { channelsFor, type WireFormat } from '../providers/registry.ts';
import type { ChannelConfig } from '../env.ts';

const apiKeyFormat = /^tg_[A-Za-z0-9_-]{16,128}$/;

/** The caller's key from any of the headers the supported SDKs send it in. */
export function readApiKey(c: Context<AppEnv>): string {
  const authorization = c.req.header('authorization');
  const key =
    (authorization?.match(/^Bearer\s+(.+)$/i)?.[1] ?? undefined) ??
    c.req.header('x-api-key') ??
    c.req.header('x-goog-api-key') ??
    // Only Gemini's API takes the key in the URL (?key=), where proxies and logs keep it: nowhere else.
    (c.req.path.startsWith('/v1beta/') ? c.req.query('key') : undefined);
  if (!key) {
    const inUrl = c.req.query('key') !== undefined;
    throw new GatewayError(401, 'missing_api_key', inUrl
      ? 'API keys are taken in the URL (?key=) only on the Gemini routes (/v1beta). Send it as "Authorization: Bearer <key>".'
      : 'No API key was sent. Send it as "Authorization: Bearer <key>".');
  }
  // A key that cannot be one of ours costs no database round trip.
  if (!apiKeyFormat.test(key.trim())) throw new GatewayError(401, 'invalid_api_key', 'Invalid API key.');
  return key.trim();
}

// Hashes of keys this instance has seen: a busy key is hashed once, not per request.
const keyHashes = new Map<string, string>();
const maxKeyHashes = 10_000;

export async function readKeyHash(c: Context<AppEnv>): Promise<string> {
  const key = readApiKey(c);
  const known = keyHashes.get(key);
  if (known) return known;
  const hash = await hashApiKey(key);
  if (keyHashes.size >= maxKeyHashes) keyHashes.delete(keyHashes.keys().next().value!);
  keyHashes.set(key, hash);
  return hash;
}

/** The JSON body, validated; unknown fields are kept as sent. */
export async function readJsonBody<Schema extends z.ZodType>(c: Context<AppEnv>, schema: Schema): Promise<z.infer<Schema>> {
  const text = await c.req.text();
  // Deeper nesting than any API needs would only make the upstream request builder throw.
  if (jsonNestingExceeds(text, maxJsonNesting)) {
    throw new GatewayError(400, 'invalid_request', `The request body nests JSON deeper than ${maxJsonNesting} levels.`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    throw new GatewayError(400, 'invalid_json', 'The request body is not valid JSON.');
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) {
    throw new GatewayError(400, 'invalid_request', 'The request body must be a JSON object.');
  }
  const parsed = schema.safeParse(json);
  if (!parsed.success) {
    const issue = parsed.error.issues[0]!;
    const param = issue.path.map(String).join('.') || null;
    const code = param === 'max_tokens' || param === 'max_completion_tokens' ? 'invalid_max_tokens' : param === 'model' ? 'invalid_model' : 'invalid_request';
    throw new GatewayError(400, code, param ? `Invalid '${param}': ${issue.message}` : issue.message, { param });
  }
  return parsed.data;
}

const ipv4 = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** A well-formed IPv4 or IPv6 address, or undefined. IPv6 is checked by the URL parser (web standard). */
function validIp(text: string | undefined): string | undefined {
  if (!text) return undefined;
  if (ipv4.test(text)) return text;
  if (!text.includes(':') || !/^[0-9a-fA-F:.]+$/.test(text)) return undefined;
  try {
    new URL(`http://[${text}]/`);
    return text;
  } catch {
    return undefined;
  }
}

/**
 * The client's address: the first X-Forwarded-For entry, which Vercel sets itself.
 * Behind another proxy, that proxy must set it; a malformed value counts as none.
 */
export function clientIp(c: Context<AppEnv>): string | undefined {
  return validIp(c.req.header('x-forwarded-for')?.split(',')[0]?.trim()) ?? validIp(c.req.header('x-real-ip')?.trim());
}

/** The shape the database accepts for model ids; anything else cannot be a model. */
const modelIdFormat = /^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$/;

/** Refuses, before the database is asked, a model id no model can have (a lone surrogate would make the whole call's JSON unreadable to it). */
export function requireModelIdFormat(model: string): void {
  if (!modelIdFormat.test(model)) {
    throw new GatewayError(404, 'model_not_found', `The model ${JSON.stringify(model.slice(0, 130))} does not exist.`, { param: 'model' });
  }
}

export interface AuthorizeOptions {
  /** The refusal for a model whose provider the route cannot serve (the route named `providers`). */
  unsupportedProvider?: (provider: string) => GatewayError;
  /** The authorization a speculative upstream call started with: its output bound is the token estimate. */
  guess?: Authorized | undefined;
  /** Take the next hold ahead for this key and shape (READY_HOLDS; metered routes only). */
  ahead?: boolean | undefined;
  /** The request came within a window of the key's last one of its shape (see ready-holds.ts). */
  again?: boolean | undefined;
  /** The hold taken ahead this request adopts: its authorization, and its request id from now on. */
  ready?: ReadyHold | undefined;
}

export type AuthorizeInput = Omit<AuthorizeRequestInput, 'requestId' | 'clientIp'>;

/** A refused key, or one that crossed a limit, is cold on this instance: no speculation, no hold taken ahead. */
export function coolKey(services: Services, keyHash: string): void {
  services.warmKeys.forget(keyHash);
  services.readyHolds.forget(keyHash);
}

/**
 * The one database round trip before the upstream call, with the rate limits
 * checked in parallel when the key's limits are known from its last request
 * (a brief in-memory cache); on a cache miss they are checked just after.
 * Tokens count the hold's estimate: the input bound and the output cap up
 * front, and whatever the hold added beyond that against the account's next
 * check on this instance. Once the hold is taken it belongs to the request
 * (`c.var.hold`); a client that left while authorize ran is not served, and
 * its hold is given back. An authorization with headroom makes the key warm
 * on this instance (see warm-keys.ts); any refusal makes it cold.
 */
export async function authorize(c: Context<AppEnv>, input: AuthorizeInput, options: AuthorizeOptions = {}): Promise<Authorized> {
  const { services } = c.var;
  const { rateLimiter, limitsCache } = services;
  const known = rateLimiter ? limitsCache.get(input.keyHash) : undefined;
  const choices = input.choices ?? 1;
  // The output bound: the request's own, else the last one this key was authorized with for
  // the model (so a burst of requests that set none is not counted at their input alone).
  const outputGuess = input.maxOutputTokens ?? options.guess?.max_output_tokens ?? (known ? limitsCache.output(input.keyHash, input.model) : undefined) ?? 0;
  const estimate = input.maxInputTokens + outputGuess * choices;
  requireModelIdFormat(input.model);
  const ip = clientIp(c);
  // A hold taken ahead for this key and shape: the request becomes that hold's request.
  const { ready } = options;
  if (ready) c.set('requestId', ready.requestId);
  const { requestId } = c.var;
  // Checked beside the database when the key's limits are known: counted at once, so a
  // request the database then refuses (or does not answer) gives back what it counted.
  const earlyCheck = !ready && known ? rateLimiter!.check(known, estimate) : undefined;
  const giveBackEarly = () => {
    if (earlyCheck) services.waitUntil(earlyCheck.then((decision) => decision.giveBack?.()));
  };
  const [result, early] = ready ? [ready.authorization, undefined] : await Promise.all([
    services.authorizations.authorize({ ...input, requestId, clientIp: ip }).catch((error: unknown) => {
      giveBackEarly();
      // The database refusing the input itself is the client's error; any other refusal
      // (a function missing from the schema, a read-only standby) is ours: a 503.
      if (isRefusedInput(error)) {
        throw new GatewayError(400, 'invalid_request', `The request could not be authorized: ${error.message}`);
      }
      // No answer in time, or a failure: a hold may still be taken when the database
      // comes back, so it is given back (that finds nothing if it never was).
      openRequestHold(services, requestId).release('authorization failed or did not answer in time');
      // And the key's next requests start no upstream call before they hold: while the
      // database is away, each would be answered upstream and paid for by nobody. Its
      // holds taken ahead stay: they are paid for, and serve it through the outage.
      services.warmKeys.forget(input.keyHash);
      throw error;
    }),
    earlyCheck,
  ]);
  if (result.status === 'refused') {
    giveBackEarly();
    coolKey(services, input.keyHash);
    if (result.code === 'unsupported_provider' && result.provider && options.unsupportedProvider) throw options.unsupportedProvider(result.provider);
    throw refusalError(result, services.config.TOPUP_URL);
  }
  const hold = openRequestHold(services, requestId);
  c.set('hold', hold);
  let ampleRateLimit = true;
  if (rateLimiter) {
    const subject = {
      keyId: result.api_key_id,
      accountId: result.account_id,
      requestsPerMinute: result.limits.requests_per_minute,
      tokensPerMinute: result.limits.tokens_per_minute,
    };
    limitsCache.set(input.keyHash, subject, input.model, result.max_output_tokens);
    const heldTokens = result.max_input_tokens + result.max_output_tokens * result.choices;
    // A hold taken ahead: its limits and the key's revocation mark are checked now (beside
    // the upstream call, see metered-request.ts), counted at this request's own bound, not
    // the hold's room for a longer one. The database does not see this request again
    // before it is answered, so this is where a revocation reaches it.
    const decision = ready
      ? await rateLimiter.check(subject, input.maxInputTokens + result.max_output_tokens * result.choices, { revocationCheck: true })
      : (early ?? (await rateLimiter.check(subject, heldTokens)));
    // The check beside authorize counted the estimate: what the hold took beyond it is owed;
    // what it took less (an output bound lowered to what the balance affords, below the one
    // remembered) is given back, or a balance running low would be refused as rate limited.
    if (early && decision.allowed) {
      if (heldTokens >= estimate) rateLimiter.owe(subject, heldTokens - estimate);
      else if (early.giveBack) services.waitUntil(early.giveBack(estimate - heldTokens));
    }
    c.set('rateLimitHeaders', decision.headers);
    if (decision.revoked) {
      coolKey(services, input.keyHash);
      hold.release('the key was revoked');
      throw new GatewayError(401, 'api_key_revoked', 'This API key has been revoked.');
    }
    if (ready && decision.unavailable) {
      // Redis did not answer, so the revocation mark is unknown: the database is asked
      // instead (one round trip, only while Redis fails). Should it fail too, the hold
      // still open is released by the app and the upstream call aborted by the caller.
      const overview = await services.ledger.keyOverview(input.keyHash, ip);
      if (overview.status === 'refused') {
        coolKey(services, input.keyHash);
        hold.release(`the key was refused: ${overview.code}`);
        throw refusalError(overview, services.config.TOPUP_URL);
      }
    }
    if (!decision.allowed) {
      coolKey(services, input.keyHash);
      // The hold was taken in parallel: release it, nothing is charged.
      hold.release('rate limited');
      const what = decision.limitedBy === 'tokens' ? 'tokens per minute for this account' : 'requests per minute for this key';
      throw new GatewayError(429, 'rate_limit_exceeded', `Rate limit reached: ${what}. Retry after ${decision.retryAfterSeconds} s.`, {
        headers: decision.headers,
      });
    }
    ampleRateLimit = decision.ample;
  }
  return readied(c, input, ip, result, ampleRateLimit, options);
}

/** Holds are taken ahead while the instance works on at most this many requests. */
const readyHoldsUpToRequests = 4;

/** The end of an authorization that holds: the key is warm, and the next hold may be taken ahead. */
function readied(
  c: Context<AppEnv>,
  input: AuthorizeInput,
  ip: string | undefined,
  result: Authorized,
  ampleRateLimit: boolean,
  options: AuthorizeOptions,
): Authorized {
  const { services } = c.var;
  const { keyHash, maxInputTokens: _bound, ...shape } = input;
  const requestShape = { ...shape, clientIp: ip };
  if (c.req.raw.signal.aborted) {
    c.var.hold!.release('the client left before the request was authorized', 'aborted');
    // Authorized all the same: the key's next request counts its window from now.
    if (options.ahead) services.readyHolds.finished(keyHash, requestShape);
    throw new GatewayError(499, 'client_closed_request', 'The client closed the request.');
  }
  services.warmKeys.remember(keyHash, requestShape, result, ampleRateLimit);
  if (options.ahead) {
    // Room for twice this request's input: a conversation grows from one request to the
    // next. Taken once this request's answer is complete, so it never competes with it;
    // and not while the instance is busy (authorizations go together then, and holds
    // taken ahead would only add to what the database does).
    // Nor for a request held below its own bound (stored content it refers to, held at what it
    // is): a hold taken ahead is adopted by a request it holds enough for by that bound alone.
    const worthOne = ampleRateLimit && result.key.max_concurrent === null && result.available >= result.hold * speculationHeadroom * 2
      && result.max_input_tokens >= input.maxInputTokens;
    c.var.hold!.whenClosed(() =>
      setTimeout(() => {
        // Not if the key was refused while this request ran: `again` was said before that.
        const stillNoted = services.readyHolds.finished(keyHash, requestShape);
        if (!worthOne || services.authorizations.busy || services.activity.requests > readyHoldsUpToRequests) return;
        services.readyHolds.refill({ ...input, referenced: undefined, maxInputTokens: input.maxInputTokens * 2, clientIp: ip }, stillNoted && (options.again ?? false));
      }, 0),
    );
  }
  return result;
}

/**
 * Hosted web searches held for a request that sets no bound of its own; more are
 * billed as the response reports them, as far as the balance allows.
 */
export const defaultSearchBound = 10;

/**
 * A client's own bound on a server tool's calls (max_uses, max_tool_calls): a
 * positive number, counted at most as a million (already more than any balance
 * holds for), else none.
 */
export function toolCallBound(value: unknown): number | undefined {
  return typeof value === 'number' && value > 0 ? Math.min(Math.ceil(value), 1_000_000) : undefined;
}

/**
 * Input tokens held per hosted web search (Anthropic's web_search, OpenAI's, Gemini's googleSearch) for
 * the results the provider adds to the prompt and bills as input. No provider
 * bounds them: a search is reported at about 6,000 to 13,000 input tokens, and
 * OpenAI bills some models a flat 8,000. An estimate, not a bound: more is
 * charged as the usage reports it, as far as the balance and caps allow.
 */
export const searchResultTokens = 10_000;

/**
 * Refuses request options that make the upstream charge more than the token
 * prices this gateway bills (priority processing, search fees), or charge for
 * what it never sees (work that runs after the request). Named per route; the
 * reason, when given, replaces the one about token prices.
 */
export function refuseUnbilledOptions(options: Array<[boolean, string, string] | [boolean, string, string, string]>): void {
  for (const [present, param, what, why = 'it is billed by the upstream beyond token prices'] of options) {
    if (present) {
      throw new GatewayError(400, 'unsupported_parameter', `${what} is not available through this gateway: ${why}.`, { param });
    }
  }
}

/** The providers whose channels speak `format`: what a route of that format can serve. */
export function providersSpeaking(c: Context<AppEnv>, format: WireFormat): string[] {
  const { config } = c.var.services;
  return [...config.channels.keys()].filter((provider) => channelsFor(config, provider, format));
}

/** The channels of an authorized model, whose provider authorize already checked speaks `format`. */
export function channelsSpeaking(c: Context<AppEnv>, authorization: Authorized, format: WireFormat): ChannelConfig[] {
  const channels = channelsFor(c.var.services.config, authorization.model.provider, format);
  if (!channels) throw new GatewayError(400, 'unsupported_provider', `The model ${authorization.model.id} is not served on this route.`, { param: 'model' });
  return channels;
}

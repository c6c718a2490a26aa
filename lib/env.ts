import { z } from 'zod';

const channelSchema = z.object({
  provider: z.string().regex(/^[a-z0-9-]{1,32}$/, 'provider must be lower-case letters, digits and dashes'),
  kind: z.enum(['openai', 'openai-compatible', 'anthropic', 'google']).default('openai-compatible'),
  baseUrl: z.url(),
  apiKey: z.string().default(''),
  priority: z.number().int().default(0),
});

export type ChannelConfig = z.infer<typeof channelSchema>;

const optionalUrl = z.preprocess((value) => (value === '' ? undefined : value), z.url().optional());
const optionalText = z.preprocess((value) => (value === '' ? undefined : value), z.string().optional());
const positiveInteger = (fallback: number) => z.coerce.number().int().positive().default(fallback);

const environmentSchema = z.object({
  SUPABASE_URL: z.url(),
  SUPABASE_SERVICE_ROLE_KEY: z.string().min(1),
  /** The project's public key (anon or sb_publishable_), for the console in the browser; row-level security guards it. */
  SUPABASE_ANON_KEY: optionalText,
  /** The Supabase URL browsers use, when it differs from SUPABASE_URL (default: SUPABASE_URL). */
  SUPABASE_PUBLIC_URL: optionalUrl,
  OPENAI_BASE_URL: z.url().default('https://api.openai.com/v1'),
  OPENAI_API_KEY: optionalText,
  ANTHROPIC_BASE_URL: z.url().default('https://api.anthropic.com'),
  ANTHROPIC_API_KEY: optionalText,
  GEMINI_BASE_URL: z.url().default('https://generativelanguage.googleapis.com'),
  GEMINI_API_KEY: optionalText,
  /** More upstream channels, as JSON: [{provider, kind, baseUrl, apiKey, priority}]; kind is the wire format. */
  UPSTREAM_CHANNELS: z
    .string()
    .default('[]')
    .transform((text, context) => {
      try {
        return JSON.parse(text) as unknown;
      } catch {
        context.addIssue({ code: 'custom', message: 'must be a JSON array of channels' });
        return z.NEVER;
      }
    })
    .pipe(z.array(channelSchema)),
  /** A Stripe Payment Link (or any page) where customers buy credits. */
  TOPUP_URL: optionalUrl,
  MAX_BODY_BYTES: positiveInteger(4_000_000),
  /** How long a stream waits for upstream headers before answering with its own. */
  STREAM_HEADER_WAIT_MS: positiveInteger(1_000),
  /** Interval of SSE comments while the upstream has not answered. */
  STREAM_HEARTBEAT_MS: positiveInteger(10_000),
  /**
   * The longest an answer may take: a stream still running is ended (what was
   * delivered billed) and a non-streamed call given up, 30 s before the
   * platform's 300 s limit would kill the function with nothing settled, so
   * the settlement's window (SETTLE_RETRY_WINDOW_MS) fits after it.
   */
  REQUEST_MAX_MS: positiveInteger(270_000),
  STRIPE_SECRET_KEY: optionalText,
  STRIPE_WEBHOOK_SECRET: optionalText,
  UPSTASH_REDIS_REST_URL: optionalUrl,
  UPSTASH_REDIS_REST_TOKEN: optionalText,
  /** If Redis has not answered within this, the request is allowed and the failure logged. */
  RATE_LIMIT_TIMEOUT_MS: positiveInteger(500),
  RATE_LIMIT_WINDOW_SECONDS: positiveInteger(60),
  /** Deadline of each database call (authorize, key overview, price list, Stripe events, each settlement attempt). */
  DATABASE_TIMEOUT_MS: positiveInteger(3_000),
  /** How long after it begins a settlement may take, retries and the outbox write included (under the ~30 s that waitUntil work gets on the edge). */
  SETTLE_RETRY_WINDOW_MS: positiveInteger(25_000),
  /** Deadline of each call to the settlement outbox in Redis. */
  OUTBOX_TIMEOUT_MS: positiveInteger(2_000),
  /**
   * For a key this instance authorized within the last minute with ample
   * balance and rate-limit headroom, the upstream call starts while authorize
   * runs (nothing reaches the client before the hold is taken). "off": never.
   */
  SPECULATIVE_UPSTREAM: z.enum(['on', 'off']).default('on'),
  /** Settlements of one instance wait at most this long to go to the database together (one call per batch). */
  SETTLE_BATCH_WINDOW_MS: z.coerce.number().int().min(0).max(1_000).default(10),
  /** Authorization calls one instance has in flight at once; those arriving beyond them go together in one call. */
  AUTHORIZE_IN_FLIGHT: z.coerce.number().int().min(1).max(1_000).default(1),
  /**
   * After a warm request, take the key's next request's hold ahead of time (see
   * README, "Holds taken ahead"), so that request waits for no database round
   * trip. "auto" (the default): only with Upstash Redis, where the revocation
   * route's mark reaches a hold already taken at once. "on": also without Redis,
   * where a revoked key reaches a hold already taken only when its window ends.
   */
  READY_HOLDS: z.enum(['auto', 'on', 'off']).default('auto'),
  /** How long a hold taken ahead may be adopted before it is given back. */
  READY_HOLD_SECONDS: z.coerce.number().int().min(1).max(60).default(10),
  /** Bearer secret of the internal routes (the outbox drain); Vercel Cron sends it. Unset: those routes answer 503. */
  CRON_SECRET: optionalText,
});

export type Environment = z.infer<typeof environmentSchema>;

/**
 * Whether holds are taken ahead (READY_HOLDS): "auto" takes them only with
 * Upstash Redis, where the revocation route's mark reaches them at once.
 */
export function readyHoldsOn(config: Environment): boolean {
  const redis = config.UPSTASH_REDIS_REST_URL !== undefined && config.UPSTASH_REDIS_REST_TOKEN !== undefined;
  return config.READY_HOLDS === 'on' || (config.READY_HOLDS === 'auto' && redis);
}

export interface Config extends Environment {
  /** Every upstream channel, by provider, highest priority first. */
  channels: Map<string, ChannelConfig[]>;
}

export class ConfigError extends Error {
  override readonly name = 'ConfigError';
}

/** Parses the environment once; a missing or malformed variable is an error that names it. */
export function loadConfig(source: Record<string, string | undefined>): Config {
  const parsed = environmentSchema.safeParse(source);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((issue) => `${issue.path.join('.') || '(environment)'}: ${issue.message}`);
    throw new ConfigError(`Invalid environment: ${problems.join('; ')}`);
  }
  const environment = parsed.data;
  const all: ChannelConfig[] = [
    { provider: 'openai', kind: 'openai', baseUrl: environment.OPENAI_BASE_URL, apiKey: environment.OPENAI_API_KEY ?? '', priority: 0 },
    { provider: 'anthropic', kind: 'anthropic', baseUrl: environment.ANTHROPIC_BASE_URL, apiKey: environment.ANTHROPIC_API_KEY ?? '', priority: 0 },
    { provider: 'google', kind: 'google', baseUrl: environment.GEMINI_BASE_URL, apiKey: environment.GEMINI_API_KEY ?? '', priority: 0 },
    ...environment.UPSTREAM_CHANNELS,
  ];
  const channels = new Map<string, ChannelConfig[]>();
  for (const channel of all) channels.set(channel.provider, [...(channels.get(channel.provider) ?? []), channel]);
  for (const list of channels.values()) list.sort((a, b) => b.priority - a.priority);
  return { ...environment, channels };
}

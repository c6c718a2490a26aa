import type { Ledger, RpcClient } from './billing/ledger.ts';
import type { SettlementOutbox } from './billing/settlement-outbox.ts';
import type { Config } from './env.ts';
import type { RateLimiter, createLimitsCache } from './gateway/rate-limits.ts';
import type { RequestHold } from './gateway/request-hold.ts';
import type { ReadyHolds } from './gateway/ready-holds.ts';
import type { WarmKeys } from './gateway/warm-keys.ts';
import type { SettlementBatcher } from './gateway/settlement-batcher.ts';
import type { AuthorizationBatcher } from './gateway/authorization-batcher.ts';

export interface Services {
  config: Config;
  ledger: Ledger;
  /** The service-role PostgREST client, for calls outside the ledger (Stripe events). */
  database: RpcClient;
  /** PostgREST with a signed-in user's session (and the anon key): their grants and row-level security apply. */
  asUser: (accessToken: string) => RpcClient;
  /** Reads the public price list and its aliases. */
  listModels: () => Promise<{ models: ModelPrice[]; aliases: Array<{ alias: string; model_id: string }> }>;
  /** Upstream calls go through this fetch. */
  fetch: typeof fetch;
  /** Keeps work (settlement) running after the response; Vercel's waitUntil in production. */
  waitUntil: (promise: Promise<unknown>) => void;
  log: (entry: Record<string, unknown>) => void;
  /** Present when Upstash Redis is configured. */
  rateLimiter?: RateLimiter | undefined;
  /** Settlements the database could not take in time; present when Upstash Redis is configured. */
  outbox?: SettlementOutbox | undefined;
  limitsCache: ReturnType<typeof createLimitsCache>;
  /** Keys this instance authorized recently: their upstream calls may start while authorize runs. */
  warmKeys: WarmKeys;
  /** Settlements of this instance, sent to the database together. */
  settlements: SettlementBatcher;
  /** Every authorize_request of the instance goes through it (batched when calls are already in flight). */
  authorizations: AuthorizationBatcher;
  /** Holds taken ahead for warm keys' next requests (READY_HOLDS). */
  readyHolds: ReadyHolds;
  /** Requests this instance is working on (until each has its response, a stream's headers). */
  activity: { requests: number };
}

export interface ModelPrice {
  id: string;
  provider: string;
  display_name: string | null;
  max_output_tokens: number;
  price_input: number;
  price_cached_input: number | null;
  price_cache_write: number | null;
  price_cache_write_1h: number | null;
  price_output: number;
  price_reasoning: number | null;
  price_image: number | null;
  price_audio: number | null;
  created_at: string;
  long_context_threshold: number | null;
  long_context_price: Record<string, number> | null;
  /** Micro-units per hosted web search; null: not served. */
  price_web_search: number | null;
}

export interface AppEnv {
  Variables: {
    requestId: string;
    services: Services;
    /** x-ratelimit-* headers for the response. */
    rateLimitHeaders?: Record<string, string>;
    /** The request's hold, once authorized. */
    hold?: RequestHold;
  };
}

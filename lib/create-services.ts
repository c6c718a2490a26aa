import { PostgrestClient } from '@supabase/postgrest-js';
import type { ModelPrice, Services } from './app-env.ts';
import { createLedger } from './billing/ledger.ts';
import type { Config } from './env.ts';
import { createLimitsCache, createRateLimiter } from './gateway/rate-limits.ts';

export interface ServiceOptions {
  waitUntil: (promise: Promise<unknown>) => void;
  /** Upstream fetch (tests may wrap it). */
  fetch?: typeof fetch;
  /** Database fetch: every PostgREST round trip goes through it. */
  databaseFetch?: typeof fetch;
  log?: (entry: Record<string, unknown>) => void;
}

/**
 * The gateway's dependencies. The database is reached through PostgREST with
 * the service-role key, using postgrest-js (supabase-js's own query client)
 * alone: the gateway needs neither realtime nor auth, and stays small on the edge.
 */
export function createServices(config: Config, options: ServiceOptions): Services {
  const key = config.SUPABASE_SERVICE_ROLE_KEY;
  const database = new PostgrestClient(new URL('rest/v1', config.SUPABASE_URL.replace(/\/?$/, '/')).toString(), {
    headers: { apikey: key, authorization: `Bearer ${key}` },
    fetch: options.databaseFetch ?? ((input, init) => fetch(input, init)),
  });
  const log = options.log ?? ((entry: Record<string, unknown>) => console.error(JSON.stringify(entry)));
  const rateLimiter =
    config.UPSTASH_REDIS_REST_URL && config.UPSTASH_REDIS_REST_TOKEN
      ? createRateLimiter({
          url: config.UPSTASH_REDIS_REST_URL,
          token: config.UPSTASH_REDIS_REST_TOKEN,
          timeoutMs: config.RATE_LIMIT_TIMEOUT_MS,
          windowSeconds: config.RATE_LIMIT_WINDOW_SECONDS,
          log,
        })
      : undefined;
  return {
    config,
    rateLimiter,
    limitsCache: createLimitsCache(),
    ledger: createLedger(database),
    database,
    listModels: async () => {
      const { data, error } = await database.from('model_prices').select('*').order('id');
      if (error) throw new Error(`could not read the price list: ${error.message}`);
      return data as ModelPrice[];
    },
    fetch: options.fetch ?? ((input, init) => fetch(input, init)),
    waitUntil: options.waitUntil,
    log,
  };
}

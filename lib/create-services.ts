import { PostgrestClient } from '@supabase/postgrest-js';
import type { ModelPrice, Services } from './app-env.ts';
import { createLedger, LedgerError } from './billing/ledger.ts';
import { createSettlementOutbox } from './billing/settlement-outbox.ts';
import { fetchWithDeadline } from './fetch-with-deadline.ts';
import type { Config } from './env.ts';
import { createLimitsCache, createRateLimiter } from './gateway/rate-limits.ts';
import { batchRetryDelay, deliverSettlement } from './gateway/settle-in-background.ts';
import { createSettlementBatcher } from './gateway/settlement-batcher.ts';
import { createAuthorizationBatcher } from './gateway/authorization-batcher.ts';
import { createWarmKeys } from './gateway/warm-keys.ts';
import { drainSettlementOutbox } from './gateway/drain-settlement-outbox.ts';
import { createReadyHolds } from './gateway/ready-holds.ts';

/** How long the drain an instance starts when the database is back may run (the scheduled one: 20 s). */
const catchUpBudgetMs = 10_000;
/** How soon a catch-up that met another drain, or failed, may go again. */
const catchUpRetryMs = 1_000;

export interface ServiceOptions {
  waitUntil: (promise: Promise<unknown>) => void;
  /**
   * Keeps the instance alive while a hold taken ahead waits for its request, so
   * that one nobody adopts is given back at the end of its window rather than by
   * the six-minute job: Vercel's waitUntil in the deployed functions. Elsewhere
   * (tests, bench, dev, where the process stays up) nothing, so that waiting for
   * what runs after a response does not wait out those windows too.
   */
  keepAlive?: (promise: Promise<unknown>) => void;
  /**
   * The HTTP client every outbound call goes through unless one below is given:
   * the runtime's fetch by default; the Node.js entry passes its node:http one.
   */
  outboundFetch?: typeof fetch;
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
  const outbound = options.outboundFetch ?? ((input, init) => fetch(input, init));
  const restUrl = new URL('rest/v1', config.SUPABASE_URL.replace(/\/?$/, '/')).toString();
  // Every database call has a deadline: a stalled database is an error, never a hang.
  const deadlined = fetchWithDeadline(options.databaseFetch ?? outbound, config.DATABASE_TIMEOUT_MS);
  // Settlements this instance left in the outbox (the database away longer than the
  // retries) are drained as soon as the database answers this instance again, not at the
  // next scheduled drain: until then their holds still count (a key with max_concurrent
  // is refused as busy with nothing in flight, the balance is short by the holds' excess).
  let outboxBacklog = false;
  /** Not again before this: a drain that found another under way, or failed, is retried a second later at the soonest. */
  let catchUpAfter = 0;
  const catchUp = () => {
    outboxBacklog = false;
    const again = () => {
      outboxBacklog = true;
      catchUpAfter = Date.now() + catchUpRetryMs;
    };
    options.waitUntil(
      drainSettlementOutbox(services, { budgetMs: catchUpBudgetMs }).then(
        (report) => {
          // Another drain under way (the scheduled one) may have scanned before this
          // instance's entries came: tried again. Cut short by its budget: the next answer
          // goes on with it (entries kept for a passing failure are left to the scheduled drain).
          if (report.status === 'busy' || report.pending > report.kept) again();
          log({ level: 'info', event: 'settlement_outbox_caught_up', ...report });
        },
        (error: unknown) => {
          again();
          log({ level: 'warn', event: 'settlement_outbox_not_caught_up', error: (error as Error).message });
        },
      ),
    );
  };
  const databaseFetch: typeof fetch = async (input, init) => {
    const response = await deadlined(input, init);
    // Any answer of the database's own (not a gateway's 5xx) means it is back.
    if (outboxBacklog && response.status < 500 && Date.now() >= catchUpAfter) catchUp();
    return response;
  };
  const database = new PostgrestClient(restUrl, { headers: { apikey: key, authorization: `Bearer ${key}` }, fetch: databaseFetch });
  const log = options.log ?? ((entry: Record<string, unknown>) => console.error(JSON.stringify(entry)));
  const upstash =
    config.UPSTASH_REDIS_REST_URL && config.UPSTASH_REDIS_REST_TOKEN
      ? { url: config.UPSTASH_REDIS_REST_URL, token: config.UPSTASH_REDIS_REST_TOKEN }
      : undefined;
  const queue = upstash ? createSettlementOutbox({ ...upstash, timeoutMs: config.OUTBOX_TIMEOUT_MS }) : undefined;
  const outbox = queue && {
    ...queue,
    put: async (...entry: Parameters<typeof queue.put>) => {
      await queue.put(...entry);
      outboxBacklog = true;
    },
  };
  const ledger = createLedger(database);
  // Holds taken ahead go to the database together too, apart from the requests waiting for theirs.
  const aheadAuthorizations = createAuthorizationBatcher({
    authorizeOne: async (input) => {
      const [answer] = await ledger.authorizeAhead([input], config.READY_HOLD_SECONDS);
      if (!answer) throw new LedgerError('authorize_ahead answered nothing', 'invalid_result', 200);
      if (!answer.ok) throw new LedgerError(answer.message, answer.code, 200);
      return answer.result;
    },
    authorizeMany: (inputs) => ledger.authorizeAhead(inputs, config.READY_HOLD_SECONDS),
    inFlight: config.AUTHORIZE_IN_FLIGHT,
    maxWaitMs: config.DATABASE_TIMEOUT_MS,
  });
  const services: Services = {
    config,
    rateLimiter: upstash
      ? createRateLimiter({ ...upstash, timeoutMs: config.RATE_LIMIT_TIMEOUT_MS, windowSeconds: config.RATE_LIMIT_WINDOW_SECONDS, log, fetch: outbound })
      : undefined,
    outbox,
    limitsCache: createLimitsCache(),
    warmKeys: createWarmKeys(),
    settlements: createSettlementBatcher({
      settleMany: (settlements) => ledger.settleRequests(settlements),
      deliverOne: (settlement, since) => deliverSettlement(services, settlement, since),
      log,
      windowMs: config.SETTLE_BATCH_WINDOW_MS,
      retryDelay: batchRetryDelay({ config, outbox }),
    }),
    authorizations: createAuthorizationBatcher({
      authorizeOne: (input) => ledger.authorizeRequest(input),
      authorizeMany: (inputs) => ledger.authorizeRequests(inputs),
      inFlight: config.AUTHORIZE_IN_FLIGHT,
      maxWaitMs: config.DATABASE_TIMEOUT_MS,
    }),
    readyHolds: createReadyHolds({
      authorizeAhead: (input) => aheadAuthorizations.authorize(input),
      returnHolds: (requestIds) => ledger.returnReadyHolds(requestIds),
      readySeconds: config.READY_HOLD_SECONDS,
      waitUntil: options.waitUntil,
      keepAlive: options.keepAlive,
      log,
    }),
    activity: { requests: 0 },
    ledger,
    database,
    asUser: (accessToken) =>
      new PostgrestClient(restUrl, { headers: { apikey: config.SUPABASE_ANON_KEY ?? '', authorization: `Bearer ${accessToken}` }, fetch: databaseFetch }),
    listModels: async () => {
      const [models, aliases] = await Promise.all([
        database.from('model_prices').select('*').order('id').retry(false),
        database.from('model_aliases').select('alias,model_id').order('alias').retry(false),
      ]);
      for (const { error, status } of [models, aliases]) {
        if (error) throw new LedgerError(`could not read the price list: ${error.message}`, error.code || 'unavailable', status);
      }
      return { models: models.data as ModelPrice[], aliases: aliases.data as Array<{ alias: string; model_id: string }> };
    },
    fetch: options.fetch ?? outbound,
    waitUntil: options.waitUntil,
    log,
  };
  return services;
}

import type { Services } from '../app-env.ts';
import { isPermanentSettlementError, LedgerError, settlementRow, type SettleRequestInput } from '../billing/ledger.ts';

import type { DeliveryOutcome } from './settlement-batcher.ts';

export type { DeliveryOutcome };

const firstDelayMs = 100;
const longestDelayMs = 2_000;

const sleep = (milliseconds: number) => new Promise((resolve) => setTimeout(resolve, milliseconds));

/** The backoff after the `failures`-th failure in a row: 100 ms doubling to 2 s, ±25 %. */
const backoff = (failures: number) => Math.min(longestDelayMs, firstDelayMs * 2 ** (failures - 1)) * (0.75 + Math.random() / 2);

/** What must still fit in the window once a single try begins: the try itself, and the outbox write after it. */
const lastTry = ({ config, outbox }: Pick<Services, 'config' | 'outbox'>) => config.DATABASE_TIMEOUT_MS + (outbox ? config.OUTBOX_TIMEOUT_MS : 0);

/**
 * When a batch of settlements failed as a whole, how long before it goes again
 * as a batch (see settlement-batcher.ts): the same backoff as a single
 * settlement's, while the batch window, one more batch call, and then a single
 * try and the outbox write can all still end within SETTLE_RETRY_WINDOW_MS of
 * the settlement's start; past that, undefined: it takes the single path, which
 * then has room for about one try alone before the outbox (a batch function
 * failing where single settlements would not still gets them settled).
 */
export function batchRetryDelay(services: Pick<Services, 'config' | 'outbox'>): (failures: number, since: number) => number | undefined {
  const { config } = services;
  return (failures, since) => {
    const delay = backoff(failures);
    // After the delay: the batch window and one more batch call, then room for a last try alone.
    const tail = config.SETTLE_BATCH_WINDOW_MS + config.DATABASE_TIMEOUT_MS + lastTry(services);
    return Date.now() + delay + tail <= since + config.SETTLE_RETRY_WINDOW_MS ? delay : undefined;
  };
}

/**
 * Delivers one settlement so that it is never lost:
 * 1. to the database, retried with backoff (100 ms doubling to 2 s, each try
 *    within the database deadline);
 * 2. then to the outbox in Upstash Redis, which the scheduled drain empties;
 * 3. if Redis fails too, one error log line (`settlement_unrecorded`) carrying
 *    the whole settlement, which `npm run settlements:replay` settles.
 * All of it within SETTLE_RETRY_WINDOW_MS of `since` (when the settlement was
 * begun, before its batch): a try is begun only while it, and the outbox write
 * after it, can still end within that window — as long as a function may keep
 * working after its response. The line of a settlement queued carries it
 * whole too, so the log can replay it should the outbox be lost.
 * The database settles by request id, so any path may deliver it twice.
 */
export async function deliverSettlement(services: Services, settlement: SettleRequestInput, since = Date.now()): Promise<DeliveryOutcome> {
  const { ledger, outbox, log, config } = services;
  const deadline = since + config.SETTLE_RETRY_WINDOW_MS;
  const tail = lastTry(services);
  let lastError = 'not tried';
  for (let attempt = 0; ; attempt++) {
    if (Date.now() + tail > deadline) {
      if (attempt === 0) lastError = `no time left to try within ${config.SETTLE_RETRY_WINDOW_MS} ms`;
      break;
    }
    try {
      await ledger.settleRequest(settlement);
      return 'settled';
    } catch (error) {
      if (error instanceof LedgerError && error.code === 'invalid_result') {
        // The database answered: the settlement is recorded, only its echo was unexpected.
        log({ level: 'warn', event: 'settlement_result_unexpected', requestId: settlement.requestId, error: error.message });
        return 'settled';
      }
      if (isPermanentSettlementError(error)) {
        log({ level: 'error', event: 'settlement_refused', requestId: settlement.requestId, settlement: settlementRow(settlement), error: (error as Error).message });
        return 'refused';
      }
      lastError = (error as Error).message;
    }
    const delay = backoff(attempt + 1);
    if (Date.now() + delay + tail > deadline) break;
    await sleep(delay);
  }

  if (outbox) {
    try {
      await outbox.put(settlement, lastError);
      // Without CRON_SECRET the drain route refuses every call: nothing empties the outbox.
      const undrained = config.CRON_SECRET ? {} : { problem: 'CRON_SECRET is not set, so nothing drains the outbox' };
      log({ level: config.CRON_SECRET ? 'warn' : 'error', event: 'settlement_queued', requestId: settlement.requestId, settlement: settlementRow(settlement), error: lastError, ...undrained });
      return 'queued';
    } catch (error) {
      lastError = `${lastError}; outbox: ${(error as Error).message}`;
    }
  }
  log({ level: 'error', event: 'settlement_unrecorded', requestId: settlement.requestId, settlement: settlementRow(settlement), error: lastError });
  return 'logged';
}

/**
 * Settles after the response, through waitUntil — never fire-and-forget —
 * in this instance's next batch (see settlement-batcher.ts).
 * Working out the usage may fail (the tokenizer, say): then what is certain,
 * nothing, is settled, so the hold never stays open.
 */
export function settleInBackground(services: Services, requestId: string, compute: () => Promise<SettleRequestInput>): void {
  const run = async () => {
    const since = Date.now();
    let settlement: SettleRequestInput;
    try {
      settlement = await compute();
    } catch (error) {
      services.log({ level: 'error', event: 'usage_unavailable', requestId, error: (error as Error).message });
      settlement = { requestId, outcome: 'failed', usage: {}, error: `usage could not be determined: ${(error as Error).message}` };
    }
    await services.settlements.deliver(settlement, since);
  };
  services.waitUntil(
    run().catch((error: unknown) => {
      services.log({ level: 'error', event: 'settlement_crashed', requestId, error: (error as Error).message });
    }),
  );
}

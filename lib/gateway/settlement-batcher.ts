import type { BatchSettlement, SettleRequestInput } from '../billing/ledger.ts';
import { isDatabaseRefusal, isPermanentSettlementCode, settlementRow } from '../billing/ledger.ts';

export type DeliveryOutcome = 'settled' | 'queued' | 'logged' | 'refused';

export interface SettlementBatcherOptions {
  /** One call for many settlements: settle_requests. */
  settleMany: (settlements: SettleRequestInput[]) => Promise<BatchSettlement>;
  /** The path of one settlement that the batch did not settle: retries, the outbox, the log, within a window from `since`. */
  deliverOne: (settlement: SettleRequestInput, since: number) => Promise<DeliveryOutcome>;
  log: (entry: Record<string, unknown>) => void;
  /** How long the first settlement of a batch waits for others. */
  windowMs: number;
  /** A batch this full goes at once (each item is a subtransaction: at most 64 stay cheap). */
  maxBatch?: number;
  /**
   * After a batch call failed as a whole (`failures` times in a row for this
   * settlement, begun at `since`): how long to wait before it goes again in the
   * next batch, or undefined when its window leaves no time for that (it then
   * takes the single-settlement path: a last try alone, then the outbox). Without
   * it, each goes alone at once.
   */
  retryDelay?: (failures: number, since: number) => number | undefined;
}

export interface SettlementBatcher {
  /** `since`: when the settlement was begun (its delivery window counts from then; now by default). */
  deliver(settlement: SettleRequestInput, since?: number): Promise<DeliveryOutcome>;
}

/**
 * Settlements of one instance go to the database together: the first waits
 * `windowMs` for others (or less, when `maxBatch` are waiting), then all go in
 * one settle_requests call, each item settled or refused on its own. An item
 * the batch could not settle — the call failed or timed out (the database
 * deadline), or the item failed for a passing reason (a deadlock, say) — takes
 * the single-settlement path, which retries and falls back to the outbox; with
 * `retryDelay`, a call that failed as a whole is sent again as a batch instead,
 * with backoff, while the settlements' windows allow. The
 * database settles by request id, so an item delivered twice is charged once.
 * A batch carries at most `maxBatch` settlements; more waiting go in further batches at once.
 */
export function createSettlementBatcher({ settleMany, deliverOne, log, windowMs, maxBatch = 64, retryDelay }: SettlementBatcherOptions): SettlementBatcher {
  type Waiting = { settlement: SettleRequestInput; since: number; failures: number; resolve: (outcome: DeliveryOutcome) => void };
  let waiting: Waiting[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;

  const settleAlone = (item: Waiting) => {
    deliverOne(item.settlement, item.since).then(item.resolve, (error: unknown) => {
      log({ level: 'error', event: 'settlement_unrecorded', requestId: item.settlement.requestId, settlement: settlementRow(item.settlement), error: (error as Error).message });
      item.resolve('logged');
    });
  };

  const flush = async () => {
    clearTimeout(timer);
    timer = undefined;
    const batch = waiting.splice(0, maxBatch);
    if (!batch.length) return;
    if (waiting.length) timer = setTimeout(() => void flush(), 0);
    let results: BatchSettlement;
    try {
      results = await settleMany(batch.map((item) => item.settlement));
      if (results.length !== batch.length) throw new Error(`settle_requests answered ${results.length} results for ${batch.length} settlements`);
    } catch (error) {
      log({ level: 'warn', event: 'settlement_batch_failed', size: batch.length, error: (error as Error).message });
      // The database did not answer: the batch goes again, together, after a backoff. One
      // call per round for all of them, not one per settlement per round, so a database
      // coming back from an outage meets the settlements of its absence in a few batches.
      // A call the database refused as a whole (a 4xx: settle_requests not deployed yet, say)
      // sends each settlement alone, as before.
      const away = !isDatabaseRefusal(error);
      const again: Waiting[] = [];
      let delay = 0;
      for (const item of batch) {
        const wait = away ? retryDelay?.(++item.failures, item.since) : undefined;
        if (wait === undefined) settleAlone(item);
        else {
          again.push(item);
          delay = Math.max(delay, wait);
        }
      }
      if (again.length) setTimeout(() => enqueue(again), delay);
      return;
    }
    results.forEach((result, index) => {
      const item = batch[index]!;
      if (result.ok) item.resolve('settled');
      else if (isPermanentSettlementCode(result.code)) {
        log({ level: 'error', event: 'settlement_refused', requestId: item.settlement.requestId, settlement: settlementRow(item.settlement), error: `${result.code}: ${result.message}` });
        item.resolve('refused');
      } else settleAlone(item);
    });
  };

  const enqueue = (items: Waiting[]) => {
    waiting.push(...items);
    if (waiting.length >= maxBatch) void flush();
    else timer ??= setTimeout(() => void flush(), windowMs);
  };

  return {
    deliver(settlement, since = Date.now()) {
      return new Promise<DeliveryOutcome>((resolve) => enqueue([{ settlement, since, failures: 0, resolve }]));
    },
  };
}

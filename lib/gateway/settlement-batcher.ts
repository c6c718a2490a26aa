import type { BatchSettlement, SettleRequestInput } from '../billing/ledger.ts';
import { isPermanentSettlementCode, settlementRow } from '../billing/ledger.ts';

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
 * the single-settlement path, which retries and falls back to the outbox. The
 * database settles by request id, so an item delivered twice is charged once.
 * No settlement waits longer than the window plus one database deadline before
 * its own retries begin.
 */
export function createSettlementBatcher({ settleMany, deliverOne, log, windowMs, maxBatch = 64 }: SettlementBatcherOptions): SettlementBatcher {
  type Waiting = { settlement: SettleRequestInput; since: number; resolve: (outcome: DeliveryOutcome) => void };
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
    const batch = waiting;
    waiting = [];
    if (!batch.length) return;
    let results: BatchSettlement;
    try {
      results = await settleMany(batch.map((item) => item.settlement));
      if (results.length !== batch.length) throw new Error(`settle_requests answered ${results.length} results for ${batch.length} settlements`);
    } catch (error) {
      log({ level: 'warn', event: 'settlement_batch_failed', size: batch.length, error: (error as Error).message });
      batch.forEach(settleAlone);
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

  return {
    deliver(settlement, since = Date.now()) {
      return new Promise<DeliveryOutcome>((resolve) => {
        waiting.push({ settlement, since, resolve });
        if (waiting.length >= maxBatch) void flush();
        else timer ??= setTimeout(() => void flush(), windowMs);
      });
    },
  };
}

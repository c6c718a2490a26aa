import type { Services } from '../app-env.ts';
import { isPermanentSettlementCode, settleEachIfRefused } from '../billing/ledger.ts';

export interface DrainReport {
  status: 'drained' | 'busy' | 'no_outbox';
  /** Settled now. */
  settled: number;
  /** The database had them already (delivered twice): taken out. */
  replayed: number;
  /** Refused by the database for good: moved aside for an operator, and logged. */
  setAside: number;
  /** Failed for a passing reason (a deadlock, say): left for the next drain. */
  kept: number;
  /** Still waiting when the drain stopped. */
  pending: number;
}

/**
 * Settles what waits in the outbox, in batches (one settle_requests call per
 * batch), until it is empty or `budgetMs` is spent. One drain runs at a time (a
 * lock in Redis); an entry leaves the outbox only after the database has it, and
 * the database settles by request id, so a drain cut short and run again charges
 * nothing twice. A database that does not answer stops the drain (it throws); one
 * that refuses a page as a whole gets its entries one by one, and those it refuses
 * alone are set aside.
 */
export async function drainSettlementOutbox(services: Services, { batchSize = 100, budgetMs = 20_000 } = {}): Promise<DrainReport> {
  const { outbox, ledger, log } = services;
  const report: DrainReport = { status: 'drained', settled: 0, replayed: 0, setAside: 0, kept: 0, pending: 0 };
  if (!outbox) return { ...report, status: 'no_outbox' };
  const lock = await outbox.lock(budgetMs + 30_000);
  if (!lock) return { ...report, status: 'busy' };
  try {
    const deadline = Date.now() + budgetMs;
    let cursor = '0';
    do {
      const page = await outbox.scan(cursor, batchSize);
      cursor = page.cursor;
      const unreadable = page.entries.filter((entry) => !entry.settlement);
      const readable = page.entries.filter((entry) => entry.settlement);
      const done: string[] = [];
      const aside = unreadable.map((entry) => ({ requestId: entry.requestId, raw: entry.raw, error: 'not a settlement' }));
      if (readable.length) {
        // One entry the database cannot read is set aside, not left to stop every drain.
        const results = await settleEachIfRefused(ledger, readable.map((entry) => entry.settlement!));
        results.forEach((result, index) => {
          const entry = readable[index]!;
          if (result.ok) {
            done.push(entry.requestId);
            if (result.result.replayed) report.replayed++;
            else report.settled++;
          } else if (isPermanentSettlementCode(result.code)) {
            aside.push({ requestId: entry.requestId, raw: entry.raw, error: `${result.code}: ${result.message}` });
          } else {
            report.kept++;
          }
        });
      }
      await outbox.remove(done);
      if (aside.length) {
        await outbox.setAside(aside);
        report.setAside += aside.length;
        for (const entry of aside) log({ level: 'error', event: 'settlement_set_aside', requestId: entry.requestId, entry: entry.raw, error: entry.error });
      }
    } while (cursor !== '0' && Date.now() < deadline);
    report.pending = (await outbox.size()).pending;
  } finally {
    await outbox.unlock(lock).catch(() => {});
  }
  return report;
}

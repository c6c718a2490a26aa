import { PostgrestClient } from '@supabase/postgrest-js';
import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Services } from '../../../lib/app-env.ts';
import { createLedger } from '../../../lib/billing/ledger.ts';
import { fetchWithDeadline } from '../../../lib/fetch-with-deadline.ts';
import { batchRetryDelay, deliverSettlement, settleInBackground } from '../../../lib/gateway/settle-in-background.ts';
import { createSettlementBatcher } from '../../../lib/gateway/settlement-batcher.ts';
import { unrecordedSettlements } from '../../../scripts/replay-settlements.ts';

/** A PostgREST that takes every connection and never answers (it only honours an abort). */
const stalled: typeof fetch = (_input, init) =>
  new Promise((_resolve, reject) => init?.signal?.addEventListener('abort', () => reject(init.signal!.reason), { once: true }));

const config = { DATABASE_TIMEOUT_MS: 3_000, SETTLE_RETRY_WINDOW_MS: 25_000, OUTBOX_TIMEOUT_MS: 2_000, SETTLE_BATCH_WINDOW_MS: 10 };

afterEach(() => {
  vi.useRealTimers();
  vi.restoreAllMocks();
});

/**
 * A settlement begun at t = 0 with the database stalled: each try takes the whole
 * database deadline, and the batch before the retries takes one too. `outbox`
 * stands for Upstash: answering at once, or stalled to its own deadline.
 */
async function settleWhileStalled(outbox: 'answers' | 'stalled', jitter: number, batchRetries = true) {
  vi.useFakeTimers();
  vi.spyOn(Math, 'random').mockReturnValue(jitter);
  const ledger = createLedger(new PostgrestClient('http://database.invalid/rest/v1', { fetch: fetchWithDeadline(stalled, config.DATABASE_TIMEOUT_MS) }));
  const began = Date.now();
  const lines: Array<Record<string, unknown> & { at: number }> = [];
  const kept: Array<Promise<unknown>> = [];
  const services = {
    config,
    ledger,
    log: (entry: Record<string, unknown>) => lines.push({ ...entry, at: Date.now() - began }),
    outbox: {
      put: () =>
        outbox === 'answers'
          ? Promise.resolve()
          : new Promise<void>((_resolve, reject) => setTimeout(() => reject(new Error(`no answer within ${config.OUTBOX_TIMEOUT_MS} ms`)), config.OUTBOX_TIMEOUT_MS)),
    },
    waitUntil: (promise: Promise<unknown>) => kept.push(promise),
  } as unknown as Services;
  services.settlements = createSettlementBatcher({
    settleMany: (settlements) => ledger.settleRequests(settlements),
    deliverOne: (settlement, since) => deliverSettlement(services, settlement, since),
    log: services.log,
    windowMs: config.SETTLE_BATCH_WINDOW_MS,
    // As the gateway has it (create-services.ts), or each settlement retried alone.
    ...(batchRetries ? { retryDelay: batchRetryDelay(services) } : {}),
  });
  settleInBackground(services, 'request-1', async () => ({ requestId: 'request-1', outcome: 'completed', usage: { input: 10, output: 100 }, usageSource: 'provider' }));
  await vi.advanceTimersByTimeAsync(60_000);
  await Promise.all(kept);
  return lines;
}

describe('a settlement is recorded somewhere durable within its window, counted from when it began', () => {
  // The batch's own deadline (3 s) comes before the retries, and the last try may begin late in
  // the window: counted from the retries' start, the trace came up to about 32 s after the
  // response, past the ~30 s for which the edge runtime keeps waitUntil work alive.
  for (const [jitter, batchRetries] of [[0, true], [0.5, true], [0.999, true], [0.999, false]] as const) {
    it(`database and outbox stalled (backoff jitter ${jitter}, retried ${batchRetries ? 'in batches' : 'alone'}): the log line that can replay it comes within 25 s`, async () => {
      const lines = await settleWhileStalled('stalled', jitter, batchRetries);
      const unrecorded = lines.filter((line) => line.event === 'settlement_unrecorded');
      expect(unrecorded).toHaveLength(1);
      expect(unrecorded[0]!.at).toBeLessThanOrEqual(config.SETTLE_RETRY_WINDOW_MS);
      expect(unrecordedSettlements(lines.map((line) => JSON.stringify(line)).join('\n'))).toEqual([
        { requestId: 'request-1', outcome: 'completed', usage: { input: 10, output: 100 }, usageSource: 'provider' },
      ]);
    });
  }

  it('database stalled, outbox answering: queued within the window, and the line carries the settlement, so the log can replay it should the outbox be lost', async () => {
    const lines = await settleWhileStalled('answers', 0.999);
    const queued = lines.filter((line) => line.event === 'settlement_queued');
    expect(queued).toHaveLength(1);
    expect(queued[0]!.at).toBeLessThanOrEqual(config.SETTLE_RETRY_WINDOW_MS - config.OUTBOX_TIMEOUT_MS);
    // No CRON_SECRET here: nothing would drain the outbox, and the line says so as an error.
    expect(queued[0]).toMatchObject({ level: 'error', problem: expect.stringContaining('CRON_SECRET') });
    expect(unrecordedSettlements(lines.map((line) => `2026-11-29T12:00:00Z api/index ${JSON.stringify(line)}`).join('\n'))).toEqual([
      { requestId: 'request-1', outcome: 'completed', usage: { input: 10, output: 100 }, usageSource: 'provider' },
    ]);
    // As a log drain exports it: each line the string field of a JSON record of the platform's own.
    const drained = lines.map((line) => JSON.stringify({ id: 'log-1', source: 'lambda', level: 'info', message: `START ${JSON.stringify(line)}` }));
    expect(unrecordedSettlements(drained.join('\n'))).toEqual([
      { requestId: 'request-1', outcome: 'completed', usage: { input: 10, output: 100 }, usageSource: 'provider' },
    ]);
  });
});

describe('settlements of a batch the database did not answer go again together', () => {
  /**
   * `count` settlements begun together; the database (a fake ledger honouring the
   * database deadline) answers nothing until `backAfterMs`, then settles everything.
   */
  async function outage(count: number, backAfterMs: number) {
    vi.useFakeTimers();
    const began = Date.now();
    const calls = { batches: 0, singles: 0 };
    const answering = () => Date.now() - began >= backAfterMs;
    const stall = () => new Promise<never>((_resolve, reject) => setTimeout(() => reject(new Error(`no answer within ${config.DATABASE_TIMEOUT_MS} ms`)), config.DATABASE_TIMEOUT_MS));
    const queued: string[] = [];
    const kept: Array<Promise<unknown>> = [];
    const services = {
      config,
      ledger: {
        settleRequest: async () => {
          calls.singles++;
          return answering() ? {} : stall();
        },
        settleRequests: async (settlements: Array<{ requestId: string }>) => {
          calls.batches++;
          return answering() ? settlements.map((each) => ({ request_id: each.requestId, ok: true, result: {} })) : stall();
        },
      },
      log: () => {},
      outbox: { put: async (settlement: { requestId: string }) => void queued.push(settlement.requestId) },
      waitUntil: (promise: Promise<unknown>) => kept.push(promise),
    } as unknown as Services;
    services.settlements = createSettlementBatcher({
      settleMany: (settlements) => services.ledger.settleRequests(settlements),
      deliverOne: (settlement, since) => deliverSettlement(services, settlement, since),
      log: services.log,
      windowMs: config.SETTLE_BATCH_WINDOW_MS,
      retryDelay: batchRetryDelay(services),
    });
    const outcomes: string[] = [];
    for (let index = 0; index < count; index++) {
      kept.push(services.settlements.deliver({ requestId: `request-${index}`, outcome: 'completed', usage: { input: 1 } }).then((outcome) => void outcomes.push(outcome)));
    }
    await vi.advanceTimersByTimeAsync(60_000);
    await Promise.all(kept);
    return { calls, queued, outcomes };
  }

  it('a database back after 5 s: all settled in a few batch calls, not one call per settlement per try', async () => {
    const { calls, queued, outcomes } = await outage(200, 5_000);
    expect(outcomes.filter((outcome) => outcome === 'settled')).toHaveLength(200);
    expect(queued).toEqual([]);
    expect(calls.singles).toBe(0);
    // 200 settlements, at most 64 a call: 4 calls a round, a handful of rounds.
    expect(calls.batches).toBeLessThan(40);
  });

  it('a database away for the whole window: each settlement reaches the outbox within it, after far fewer calls than retrying alone', async () => {
    const { calls, queued, outcomes } = await outage(200, 120_000);
    expect(outcomes.filter((outcome) => outcome === 'queued')).toHaveLength(200);
    expect(new Set(queued).size).toBe(200);
    // Retried alone, they took 1,004 calls: here batches, then a last try or two each alone.
    expect(calls.batches).toBeLessThan(40);
    expect(calls.batches + calls.singles).toBeLessThan(700);
  });
});

import { Redis } from '@upstash/redis';
import { parseSettlementRow, settlementRow, type SettleRequestInput } from './ledger.ts';

const pendingKey = 'tollgate:settlements:pending';
const deadKey = 'tollgate:settlements:dead';
const drainLockKey = 'tollgate:settlements:drain-lock';

export interface OutboxEntry {
  requestId: string;
  /** Undefined when what was stored is not a settlement (it is then kept aside, never dropped). */
  settlement: SettleRequestInput | undefined;
  raw: string;
}

export interface SettlementOutbox {
  /** Stores a settlement the database could not take; one entry per request id. */
  put(settlement: SettleRequestInput, reason: string): Promise<void>;
  /** Up to about `count` waiting settlements from `cursor` ('0' to start); the cursor is '0' again at the end. */
  scan(cursor: string, count: number): Promise<{ cursor: string; entries: OutboxEntry[] }>;
  /** Settled (or replayed): taken out. */
  remove(requestIds: string[]): Promise<void>;
  /** Refused by the database for good: moved aside, with why, for an operator. */
  setAside(entries: Array<{ requestId: string; raw: string; error: string }>): Promise<void>;
  size(): Promise<{ pending: number; setAside: number }>;
  /** One drain at a time: a token when this caller holds the lock, null when another does. */
  lock(ttlMs: number): Promise<string | null>;
  unlock(token: string): Promise<void>;
}

/**
 * Settlements the database could not take within the function's lifetime,
 * kept in Upstash Redis (a hash by request id: delivering one twice stores it
 * once) until the scheduled drain settles them. Every call has a deadline.
 */
export function createSettlementOutbox({ url, token, timeoutMs }: { url: string; token: string; timeoutMs: number }): SettlementOutbox {
  const redis = new Redis({
    url,
    token,
    retry: { retries: 0 },
    enableTelemetry: false,
    automaticDeserialization: false,
    signal: () => AbortSignal.timeout(timeoutMs),
  });
  return {
    async put(settlement, reason) {
      await redis.hset(pendingKey, {
        [settlement.requestId]: JSON.stringify({ settlement: settlementRow(settlement), reason, queued_at: new Date().toISOString() }),
      });
    },
    async scan(cursor, count) {
      const [next, flat] = await redis.hscan(pendingKey, cursor, { count });
      const entries: OutboxEntry[] = [];
      for (let index = 0; index + 1 < flat.length; index += 2) {
        const requestId = String(flat[index]);
        const raw = String(flat[index + 1]);
        let settlement: SettleRequestInput | undefined;
        try {
          settlement = parseSettlementRow((JSON.parse(raw) as { settlement?: unknown }).settlement);
        } catch {
          settlement = undefined;
        }
        entries.push({ requestId, settlement, raw });
      }
      return { cursor: String(next), entries };
    },
    async remove(requestIds) {
      if (requestIds.length) await redis.hdel(pendingKey, ...requestIds);
    },
    async setAside(entries) {
      if (!entries.length) return;
      const pipeline = redis.multi();
      pipeline.hset(deadKey, Object.fromEntries(entries.map((entry) => [entry.requestId, JSON.stringify({ entry: entry.raw, error: entry.error, set_aside_at: new Date().toISOString() })])));
      pipeline.hdel(pendingKey, ...entries.map((entry) => entry.requestId));
      await pipeline.exec();
    },
    async size() {
      const [pending, setAside] = await Promise.all([redis.hlen(pendingKey), redis.hlen(deadKey)]);
      return { pending, setAside };
    },
    async lock(ttlMs) {
      const lockToken = crypto.randomUUID();
      const taken = await redis.set(drainLockKey, lockToken, { nx: true, px: ttlMs });
      return taken === 'OK' ? lockToken : null;
    },
    async unlock(lockToken) {
      // Only the holder's own lock is removed: compare and delete in one step.
      await redis.eval("if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0", [drainLockKey], [lockToken]);
    },
  };
}

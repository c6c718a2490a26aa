import type { Authorization, Authorized, AuthorizeRequestInput } from '../billing/ledger.ts';
import { shapeOf, type RequestShape } from './warm-keys.ts';

/** A hold taken ahead for a key and one shape of request, adoptable by the next such request. */
export interface ReadyHold {
  requestId: string;
  authorization: Authorized;
  /** Rate limits left a tenth or more of their window when it was taken. */
  ampleRateLimit: boolean;
}

export interface ReadyHoldsOptions {
  /** authorize_ahead for one hold, marked adoptable for `readySeconds` (batched like authorizations). */
  authorizeAhead: (input: AuthorizeRequestInput) => Promise<Authorization>;
  /** return_ready_holds: gives back the holds nobody adopted. */
  returnHolds: (requestIds: string[]) => Promise<number>;
  readySeconds: number;
  waitUntil: (promise: Promise<unknown>) => void;
  log: (entry: Record<string, unknown>) => void;
}

type Slot =
  | { state: 'taking' }
  | { state: 'declined'; until: number }
  | { state: 'ready'; hold: ReadyHold; adoptableUntil: number; timer: ReturnType<typeof setTimeout> };

/**
 * Holds taken ahead: after a warm request, this instance authorizes the key's
 * next request of the same shape in the background (a real hold, in its own
 * usage_events row), so that request adopts it — its request id becomes the
 * hold's — and reaches the upstream and its client with no database round
 * trip. At most one per key and shape; adopted only within the window the
 * database was told (`readySeconds`, counted from before the call was sent)
 * and only by a request whose input bound fits the hold's. One nobody adopts in
 * its window is given back; one whose key was refused is given back at once.
 * A call that failed may still have taken its hold: it is given back too (and
 * if that fails, expire_stale_holds releases it once its window is long over).
 */
export function createReadyHolds({ authorizeAhead, returnHolds, readySeconds, waitUntil, log }: ReadyHoldsOptions) {
  const keys = new Map<string, Map<string, Slot>>();
  const maxKeys = 10_000;
  const declinedForMs = 60_000;

  const giveBack = (requestIds: string[], reason: string) => {
    waitUntil(
      returnHolds(requestIds).then(
        (returned) => log({ level: 'info', event: 'ready_holds_returned', requestIds, returned, reason }),
        (error: unknown) => log({ level: 'warn', event: 'ready_holds_not_returned', requestIds, reason, error: (error as Error).message }),
      ),
    );
  };

  const slotsOf = (keyHash: string) => {
    let slots = keys.get(keyHash);
    if (!slots) {
      if (keys.size >= maxKeys) forget(keys.keys().next().value!);
      slots = new Map();
      keys.set(keyHash, slots);
    }
    return slots;
  };

  function forget(keyHash: string): void {
    const slots = keys.get(keyHash);
    if (!slots) return;
    keys.delete(keyHash);
    const ready: string[] = [];
    for (const slot of slots.values()) {
      if (slot.state !== 'ready') continue;
      clearTimeout(slot.timer);
      ready.push(slot.hold.requestId);
    }
    if (ready.length) giveBack(ready, 'the key was refused');
  }

  return {
    /** The ready hold for this key and shape, taken out for the caller to adopt; undefined if none fits. */
    take(keyHash: string, shape: RequestShape, maxInputTokens: number): ReadyHold | undefined {
      const shapeKey = shapeOf(shape);
      const slot = keys.get(keyHash)?.get(shapeKey);
      if (slot?.state !== 'ready' || Date.now() >= slot.adoptableUntil || slot.hold.authorization.max_input_tokens < maxInputTokens) return undefined;
      clearTimeout(slot.timer);
      keys.get(keyHash)!.delete(shapeKey);
      return slot.hold;
    },

    /**
     * Takes a hold ahead for the key's next request of this shape, with room for
     * `input.maxInputTokens` input tokens, unless one is ready (and fits) or on its way.
     */
    refill(input: Omit<AuthorizeRequestInput, 'requestId'>, ampleRateLimit: boolean): void {
      const { keyHash, maxInputTokens, ...rest } = input;
      const shapeKey = shapeOf(rest);
      const slots = slotsOf(keyHash);
      const current = slots.get(shapeKey);
      if (current?.state === 'taking' || (current?.state === 'declined' && Date.now() < current.until)) return;
      if (current?.state === 'ready') {
        if (current.hold.authorization.max_input_tokens >= maxInputTokens && Date.now() < current.adoptableUntil) return;
        clearTimeout(current.timer);
        giveBack([current.hold.requestId], 'too small for the requests now coming');
      }
      const slot: Slot = { state: 'taking' };
      slots.set(shapeKey, slot);
      const requestId = crypto.randomUUID();
      const sentAt = Date.now();
      const leave = () => {
        if (keys.get(keyHash)?.get(shapeKey) === slot) keys.get(keyHash)!.delete(shapeKey);
      };
      waitUntil(
        authorizeAhead({ ...input, requestId }).then(
          (authorization) => {
            leave();
            if (authorization.status !== 'authorized') {
              // Refused (a key whose policy counts what is in flight, say): not asked again for a while.
              if (keys.get(keyHash) === slots && !slots.has(shapeKey)) slots.set(shapeKey, { state: 'declined', until: Date.now() + declinedForMs });
              return;
            }
            const adoptableUntil = sentAt + readySeconds * 1000;
            // The key forgotten meanwhile (refused, or evicted): its slots are no longer the key's.
            if (authorization.replayed || keys.get(keyHash) !== slots) {
              giveBack([requestId], 'the key was refused while the hold was being taken');
              return;
            }
            const timer = setTimeout(() => {
              if (slots.get(shapeKey) === ready) slots.delete(shapeKey);
              giveBack([requestId], 'not adopted in time');
            }, Math.max(0, adoptableUntil - Date.now()));
            // Never what keeps a process alive.
            if (typeof timer === 'object' && timer && 'unref' in timer) (timer as { unref: () => void }).unref();
            const ready: Slot = { state: 'ready', hold: { requestId, authorization, ampleRateLimit }, adoptableUntil, timer };
            slots.set(shapeKey, ready);
          },
          (error: unknown) => {
            leave();
            log({ level: 'warn', event: 'ready_hold_not_taken', requestId, error: (error as Error).message });
            giveBack([requestId], 'the call that took it failed');
          },
        ),
      );
    },

    forget,
  };
}

export type ReadyHolds = ReturnType<typeof createReadyHolds>;

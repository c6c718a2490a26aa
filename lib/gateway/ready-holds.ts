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
  /** A request of this key and shape arrived at `at`; `again`: it came within a window of the one before it. */
  | { state: 'seen'; at: number; again: boolean }
  | { state: 'taking' }
  | { state: 'declined'; until: number }
  | { state: 'ready'; hold: ReadyHold; adoptableUntil: number; timer: ReturnType<typeof setTimeout> };

/**
 * Holds taken ahead: after a warm request, this instance authorizes the key's
 * next request of the same shape in the background (a real hold, in its own
 * usage_events row), so that request adopts it — its request id becomes the
 * hold's — and reaches the upstream and its client with no database round
 * trip. Taken only for a key and shape whose requests come within a window of
 * each other (a request arriving within `readySeconds` of the one before it,
 * or adopting a hold): for a key used once in a while, a hold taken ahead
 * would only be taken and given back, two database calls for nothing. At most
 * one per key and shape; adopted only within the window the database was told
 * (`readySeconds`, counted from before the call was sent) and only by a
 * request whose input bound fits the hold's. One nobody adopts in its window
 * is given back; one whose key was refused is given back at once.
 * A call that failed may still have taken its hold: it is given back too (and
 * if that fails, expire_stale_holds releases it once its window is long over).
 */
export function createReadyHolds({ authorizeAhead, returnHolds, readySeconds, waitUntil, log }: ReadyHoldsOptions) {
  const keys = new Map<string, Map<string, Slot>>();
  const maxKeys = 10_000;
  /** Shapes noted per key (a client may vary its output cap from one request to the next). */
  const maxShapesPerKey = 32;
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
    /**
     * The ready hold for this key and shape, taken out for the caller to adopt;
     * undefined if none fits. Called as each request of the key arrives, so it
     * also notes when one came (see `refill`).
     */
    take(keyHash: string, shape: RequestShape, maxInputTokens: number): ReadyHold | undefined {
      const shapeKey = shapeOf(shape);
      const slots = slotsOf(keyHash);
      const slot = slots.get(shapeKey);
      const now = Date.now();
      if (slot?.state === 'ready') {
        if (now >= slot.adoptableUntil || slot.hold.authorization.max_input_tokens < maxInputTokens) return undefined;
        clearTimeout(slot.timer);
        slots.set(shapeKey, { state: 'seen', at: now, again: true });
        return slot.hold;
      }
      if (slot?.state === 'taking' || slot?.state === 'declined') return undefined;
      if (!slot && slots.size >= maxShapesPerKey) {
        // Room for a shape not seen before: the oldest one only noted goes (ready holds stay).
        const oldest = [...slots].find(([, each]) => each.state === 'seen' || each.state === 'declined');
        if (!oldest) return undefined;
        slots.delete(oldest[0]);
      }
      slots.set(shapeKey, { state: 'seen', at: now, again: slot !== undefined && now - slot.at < readySeconds * 1000 });
      return undefined;
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
      // A request alone in its window (or none noted): the next may well not come within one either.
      if (current === undefined || (current.state === 'seen' && !current.again)) return;
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

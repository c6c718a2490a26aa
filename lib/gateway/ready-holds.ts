import type { Authorization, Authorized, AuthorizeRequestInput } from '../billing/ledger.ts';
import { shapeOf, type RequestShape } from './warm-keys.ts';

/** A hold taken ahead for a key and one shape of request, adoptable by the next such request. */
export interface ReadyHold {
  requestId: string;
  authorization: Authorized;
}

export interface ReadyHoldsOptions {
  /** authorize_ahead for one hold, marked adoptable for `readySeconds` (batched like authorizations). */
  authorizeAhead: (input: AuthorizeRequestInput) => Promise<Authorization>;
  /** return_ready_holds: gives back the holds nobody adopted. */
  returnHolds: (requestIds: string[]) => Promise<number>;
  readySeconds: number;
  waitUntil: (promise: Promise<unknown>) => void;
  /** Given a promise that settles when a ready hold is adopted or given back (see create-services.ts); none by default. */
  keepAlive?: ((promise: Promise<unknown>) => void) | undefined;
  log: (entry: Record<string, unknown>) => void;
}

type Slot =
  | { state: 'taking' }
  | { state: 'declined'; until: number }
  | { state: 'ready'; hold: ReadyHold; adoptableUntil: number; end: () => void };

/** A ready hold, if one fits; `again`: the request came within a window of the key's last one of its shape. */
export interface Taken {
  hold: ReadyHold | undefined;
  again: boolean;
}

/**
 * Holds taken ahead: after a warm request, this instance authorizes the key's
 * next request of the same shape in the background (a real hold, in its own
 * usage_events row), so that request adopts it — its request id becomes the
 * hold's — and reaches the upstream and its client with no database round
 * trip. Taken only for a key and shape whose requests come within a window of
 * each other: a request arriving within `readySeconds` of the last one of its
 * key and shape arriving or finishing (so an agent whose answers take longer
 * than the window still gets one), or adopting a hold. For a key used once in
 * a while, a hold taken ahead would only be taken and given back, two database
 * calls for nothing. At most one per key and shape; adopted only within the
 * window the database was told (`readySeconds`, counted from before the call
 * was sent) and only by a request whose input bound fits the hold's. One
 * nobody adopts in its window is given back; one whose key was refused is
 * given back at once. A call that failed may still have taken its hold: it is
 * given back too (and if that fails, expire_stale_holds releases it once its
 * window is long over).
 *
 * What is noted of a key's requests is kept apart from its holds and bounded
 * on its own, least recently used first out: notes are made only for requests
 * that were authorized, and forgetting one never gives a hold back, so no run
 * of requests (with keys that do not exist, or with many keys) can push out
 * the holds of the keys in use.
 */
export function createReadyHolds({ authorizeAhead, returnHolds, readySeconds, waitUntil, keepAlive, log }: ReadyHoldsOptions) {
  /** When a request of each key and shape last arrived or finished, least recently used first. */
  const notes = new Map<string, Map<string, number>>();
  const keys = new Map<string, Map<string, Slot>>();
  const maxKeys = 10_000;
  /** Shapes per key (a client may vary its output cap from one request to the next). */
  const maxShapesPerKey = 32;
  const declinedForMs = 60_000;
  const windowMs = readySeconds * 1000;

  const giveBack = (requestIds: string[], reason: string) => {
    waitUntil(
      returnHolds(requestIds).then(
        (returned) => log({ level: 'info', event: 'ready_holds_returned', requestIds, returned, reason }),
        (error: unknown) => log({ level: 'warn', event: 'ready_holds_not_returned', requestIds, reason, error: (error as Error).message }),
      ),
    );
  };

  /** Notes that a request of this key and shape arrived or finished now; `create`: a key not noted yet is noted. */
  const note = (keyHash: string, shapeKey: string, now: number, create: boolean): number | undefined => {
    let shapes = notes.get(keyHash);
    if (!shapes && !create) return undefined;
    if (shapes) notes.delete(keyHash);
    else {
      if (notes.size >= maxKeys) notes.delete(notes.keys().next().value!);
      shapes = new Map();
    }
    notes.set(keyHash, shapes);
    const last = shapes.get(shapeKey);
    if (last === undefined && !create) return undefined;
    shapes.delete(shapeKey);
    if (shapes.size >= maxShapesPerKey) shapes.delete(shapes.keys().next().value!);
    shapes.set(shapeKey, now);
    return last;
  };

  /** Slots with nothing ready or on its way: dropping them gives nothing back. */
  const idle = (slots: Map<string, Slot>, now: number) =>
    [...slots.values()].every((slot) => slot.state === 'declined' && now >= slot.until);

  /** Drops a key left with no slots (callbacks still on their way keep a slot in the map). */
  const prune = (keyHash: string, slots: Map<string, Slot>) => {
    if (slots.size === 0 && keys.get(keyHash) === slots) keys.delete(keyHash);
  };

  /** The key's slots with room for this shape, or undefined when the instance keeps all it may. */
  const slotsWithRoom = (keyHash: string, shapeKey: string, now: number) => {
    let slots = keys.get(keyHash);
    if (!slots) {
      if (keys.size >= maxKeys) {
        let spare: string | undefined;
        for (const [each, eachSlots] of keys) {
          if (!idle(eachSlots, now)) continue;
          spare = each;
          break;
        }
        if (spare === undefined) return undefined;
        keys.delete(spare);
      }
      slots = new Map();
      keys.set(keyHash, slots);
    }
    if (!slots.has(shapeKey) && slots.size >= maxShapesPerKey) {
      const spare = [...slots].find(([, slot]) => slot.state === 'declined' && now >= slot.until);
      if (!spare) return undefined;
      slots.delete(spare[0]);
    }
    return slots;
  };

  function forget(keyHash: string): void {
    notes.delete(keyHash);
    const slots = keys.get(keyHash);
    if (!slots) return;
    keys.delete(keyHash);
    const ready: string[] = [];
    for (const slot of slots.values()) {
      if (slot.state !== 'ready') continue;
      slot.end();
      ready.push(slot.hold.requestId);
    }
    if (ready.length) giveBack(ready, 'the key was refused');
  }

  return {
    /**
     * The ready hold for this key and shape, taken out for the caller to adopt
     * (undefined if none fits), and whether the request came within a window of
     * the key's last one of its shape. Called as each request of the key
     * arrives, before the key is checked: it notes the arrival only for a key
     * and shape already noted (see `finished`).
     */
    take(keyHash: string, shape: RequestShape, maxInputTokens: number): Taken {
      const shapeKey = shapeOf(shape);
      const now = Date.now();
      const last = note(keyHash, shapeKey, now, false);
      const again = last !== undefined && now - last < windowMs;
      const slots = keys.get(keyHash);
      const slot = slots?.get(shapeKey);
      if (slot?.state !== 'ready' || now >= slot.adoptableUntil || slot.hold.authorization.max_input_tokens < maxInputTokens) {
        return { hold: undefined, again };
      }
      slot.end();
      slots!.delete(shapeKey);
      prune(keyHash, slots!);
      return { hold: slot.hold, again: true };
    },

    /**
     * An authorized request of this key and shape finished: the next one's
     * window counts from now. Returns whether the key and shape were still
     * noted: not if the key was refused (forgotten) while the request ran, so
     * what `take` said of it then no longer earns a hold ahead.
     */
    finished(keyHash: string, shape: RequestShape): boolean {
      return note(keyHash, shapeOf(shape), Date.now(), true) !== undefined;
    },

    /**
     * Takes a hold ahead for the key's next request of this shape, with room for
     * `input.maxInputTokens` input tokens, unless one is ready (and fits) or on
     * its way. `again` is what `take` said of the request that just finished: a
     * request alone in its window takes none (the next may well not come within
     * one either).
     */
    refill(input: Omit<AuthorizeRequestInput, 'requestId'>, again: boolean): void {
      if (!again) return;
      const { keyHash, maxInputTokens, ...rest } = input;
      const shapeKey = shapeOf(rest);
      const now = Date.now();
      const slots = slotsWithRoom(keyHash, shapeKey, now);
      if (!slots) return;
      const current = slots.get(shapeKey);
      if (current?.state === 'taking' || (current?.state === 'declined' && now < current.until)) return;
      if (current?.state === 'ready') {
        if (current.hold.authorization.max_input_tokens >= maxInputTokens && now < current.adoptableUntil) return;
        current.end();
        giveBack([current.hold.requestId], 'too small for the requests now coming');
      }
      const slot: Slot = { state: 'taking' };
      slots.set(shapeKey, slot);
      const requestId = crypto.randomUUID();
      const sentAt = now;
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
              prune(keyHash, slots);
              return;
            }
            const adoptableUntil = sentAt + readySeconds * 1000;
            // The key forgotten meanwhile (refused, or evicted): its slots are no longer the key's.
            if (authorization.replayed || keys.get(keyHash) !== slots) {
              prune(keyHash, slots);
              giveBack([requestId], 'the key was refused while the hold was being taken');
              return;
            }
            // Settled when the hold is adopted or given back: what keeps a serverless instance
            // alive until then (keepAlive), so the give-back below is not left to the job.
            let ended: () => void = () => {};
            keepAlive?.(new Promise<void>((resolve) => (ended = resolve)));
            const timer = setTimeout(() => {
              if (slots.get(shapeKey) === ready) slots.delete(shapeKey);
              prune(keyHash, slots);
              giveBack([requestId], 'not adopted in time');
              ended();
            }, Math.max(0, adoptableUntil - Date.now()));
            // Never what keeps a process alive.
            if (typeof timer === 'object' && timer && 'unref' in timer) (timer as { unref: () => void }).unref();
            const end = () => {
              clearTimeout(timer);
              ended();
            };
            const ready: Slot = { state: 'ready', hold: { requestId, authorization }, adoptableUntil, end };
            slots.set(shapeKey, ready);
          },
          (error: unknown) => {
            leave();
            prune(keyHash, slots);
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

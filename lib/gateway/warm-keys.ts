import type { Authorized, AuthorizeRequestInput } from '../billing/ledger.ts';

/**
 * The last authorization this instance got for a key and one shape of request
 * (model, output cap, choices, priced calls, client address), for starting the
 * upstream call while the next authorize runs. Kept a minute at most; forgotten
 * for the whole key at its first refusal.
 */
export interface WarmAuthorization {
  authorization: Authorized;
  seenAt: number;
  /** Rate limits left a tenth or more of their window (or none applies). */
  ampleRateLimit: boolean;
}

/** How much larger than a request's hold the account's available balance must have been. */
export const speculationHeadroom = 20;
const maxAgeMs = 60_000;
const maxKeys = 10_000;

export type RequestShape = Omit<AuthorizeRequestInput, 'requestId' | 'clientIp' | 'keyHash' | 'maxInputTokens'> & { clientIp?: string | undefined };

export function shapeOf(input: RequestShape): string {
  return JSON.stringify([input.model, input.maxOutputTokens ?? null, input.choices ?? 1, input.capOutput ?? false, input.providers ?? null, input.calls ?? null, input.clientIp ?? null]);
}

export function createWarmKeys() {
  const keys = new Map<string, { shapes: Map<string, WarmAuthorization>; inFlight: number }>();
  return {
    remember(keyHash: string, input: RequestShape, authorization: Authorized, ampleRateLimit: boolean): void {
      let entry = keys.get(keyHash);
      if (!entry) {
        if (keys.size >= maxKeys) keys.delete(keys.keys().next().value!);
        entry = { shapes: new Map(), inFlight: 0 };
        keys.set(keyHash, entry);
      }
      if (entry.shapes.size >= 32) entry.shapes.delete(entry.shapes.keys().next().value!);
      entry.shapes.set(shapeOf(input), { authorization, seenAt: Date.now(), ampleRateLimit });
    },

    forget(keyHash: string): void {
      keys.delete(keyHash);
    },

    /**
     * What a warm request may start the upstream with, and the speculative hold
     * it counts while authorize runs (give it back with `settled`); undefined
     * unless the key is warm with headroom: authorized here within the minute,
     * the account then able to pay 20 times this request's hold on top of every
     * speculation of the key in flight, no concurrency cap on the key.
     */
    speculate(keyHash: string, input: RequestShape & { maxInputTokens: number }): { authorization: Authorized; settled: () => void } | undefined {
      const entry = keys.get(keyHash);
      const warm = entry?.shapes.get(shapeOf(input));
      if (!entry || !warm) return undefined;
      if (Date.now() - warm.seenAt > maxAgeMs || !warm.ampleRateLimit) return undefined;
      const last = warm.authorization;
      if (last.key.max_concurrent !== null) return undefined;
      // The hold scales with the token bound; never estimated below the last one.
      const lastBound = last.max_input_tokens + last.max_output_tokens * last.choices;
      const bound = input.maxInputTokens + last.max_output_tokens * last.choices;
      const hold = Math.ceil(last.hold * Math.max(1, bound / Math.max(1, lastBound)));
      if ((entry.inFlight + hold) * speculationHeadroom > last.available) return undefined;
      entry.inFlight += hold;
      let open = true;
      return {
        authorization: last,
        settled: () => {
          if (!open) return;
          open = false;
          entry.inFlight -= hold;
        },
      };
    },
  };
}

export type WarmKeys = ReturnType<typeof createWarmKeys>;

/** Whether an upstream request built from `guess` is the one `actual` allows: the fields request plans read. */
export function sameUpstreamRequest(guess: Authorized, actual: Authorized): boolean {
  return (
    guess.model.id === actual.model.id &&
    guess.model.provider === actual.model.provider &&
    guess.model.upstream_model === actual.model.upstream_model &&
    guess.max_output_tokens === actual.max_output_tokens &&
    guess.output_capped === actual.output_capped &&
    guess.choices === actual.choices
  );
}

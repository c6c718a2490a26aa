import type { Services } from '../app-env.ts';
import type { SettleRequestInput } from '../billing/ledger.ts';
import { settleInBackground } from './settle-in-background.ts';

/**
 * The hold of one authorized request, closed exactly once: settled with what
 * was used, or released (nothing delivered, nothing charged). A stream takes it
 * over and closes it when it ends; whatever else is left open when the request
 * is answered — an exception, a refusal after authorize — the app releases.
 */
export interface RequestHold {
  settle(compute: () => Promise<SettleRequestInput>): void;
  release(reason: string, outcome?: 'failed' | 'aborted'): void;
  /** A stream owns the hold from now on and settles it when it ends. */
  handOff(): void;
  /** Neither closed nor handed off. */
  readonly open: boolean;
  /** Runs `callback` once the hold is closed (settled or released), after that close has begun. */
  whenClosed(callback: () => void): void;
}

export function openRequestHold(services: Services, requestId: string): RequestHold {
  let state: 'open' | 'handed_off' | 'closed' = 'open';
  const waiting: Array<() => void> = [];
  const close = (compute: () => Promise<SettleRequestInput>) => {
    if (state === 'closed') return;
    state = 'closed';
    settleInBackground(services, requestId, compute);
    for (const callback of waiting.splice(0)) callback();
  };
  return {
    settle: close,
    release: (reason, outcome = 'failed') => close(async () => ({ requestId, outcome, usage: {}, error: reason })),
    handOff: () => {
      if (state === 'open') state = 'handed_off';
    },
    get open() {
      return state === 'open';
    },
    whenClosed(callback) {
      if (state === 'closed') callback();
      else waiting.push(callback);
    },
  };
}

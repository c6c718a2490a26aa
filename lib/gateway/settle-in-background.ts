import type { Services } from '../app-env.ts';
import type { SettleRequestInput } from '../billing/ledger.ts';
import { LedgerError } from '../billing/ledger.ts';

const retryDelaysMs = [100, 500, 2000];

/**
 * Settles after the response, through waitUntil — never fire-and-forget. A
 * failure to reach the database is retried; a hold that still cannot be settled
 * stays open for the scheduled stale-hold job.
 */
export function settleInBackground(services: Services, input: () => Promise<SettleRequestInput>, requestId?: string): void {
  const run = async () => {
    let settlement: SettleRequestInput;
    try {
      settlement = await input();
    } catch (error) {
      // Working out the usage failed: settle what is certain (nothing), never leave the hold open.
      services.log({ level: 'error', event: 'usage_unavailable', requestId, error: (error as Error).message });
      if (!requestId) throw error;
      settlement = { requestId, outcome: 'failed', usage: {}, error: `usage could not be determined: ${(error as Error).message}` };
    }
    for (let attempt = 0; ; attempt++) {
      try {
        return await services.ledger.settleRequest(settlement);
      } catch (error) {
        const retriable = !(error instanceof LedgerError) || error.status >= 500 || error.status === 0;
        const delay = retryDelaysMs[attempt];
        if (!retriable || delay === undefined) {
          services.log({ level: 'error', event: 'settle_failed', requestId: settlement.requestId, error: (error as Error).message });
          return undefined;
        }
        await new Promise((resolve) => setTimeout(resolve, delay));
      }
    }
  };
  services.waitUntil(
    run().catch((error: unknown) => {
      services.log({ level: 'error', event: 'settle_failed', error: (error as Error).message });
    }),
  );
}

/** Nothing was sent upstream, or nothing came back: the hold is released and nothing is charged. */
export function releaseHold(services: Services, requestId: string, reason: string, outcome: 'failed' | 'aborted' = 'failed'): void {
  settleInBackground(services, async () => ({ requestId, outcome, usage: {}, error: reason }), requestId);
}

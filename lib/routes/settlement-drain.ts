import type { Context } from 'hono';
import type { AppEnv } from '../app-env.ts';
import { LedgerError } from '../billing/ledger.ts';
import { GatewayError } from '../errors.ts';
import { drainSettlementOutbox } from '../gateway/drain-settlement-outbox.ts';

const encoder = new TextEncoder();

/** Compares two secrets without leaking where they differ (digests of equal length, every byte looked at). */
async function sameSecret(given: string, expected: string): Promise<boolean> {
  const [a, b] = await Promise.all([given, expected].map((text) => crypto.subtle.digest('SHA-256', encoder.encode(text))));
  const left = new Uint8Array(a!);
  const right = new Uint8Array(b!);
  let difference = 0;
  for (let index = 0; index < left.length; index++) difference |= left[index]! ^ right[index]!;
  return difference === 0;
}

/**
 * GET or POST /internal/settlements/drain: settles what waits in the settlement
 * outbox. Called every minute by Vercel Cron (vercel.ts), which sends
 * `Authorization: Bearer $CRON_SECRET`; `npm run dev` calls it on the same schedule.
 */
export async function settlementDrain(c: Context<AppEnv>): Promise<Response> {
  const { services } = c.var;
  const secret = services.config.CRON_SECRET;
  if (!secret) throw new GatewayError(503, 'not_configured', 'CRON_SECRET is not set, so the internal routes are closed.');
  if (!(await sameSecret(c.req.header('authorization') ?? '', `Bearer ${secret}`))) {
    throw new GatewayError(401, 'invalid_api_key', 'This route needs the cron secret.');
  }
  let report;
  try {
    report = await drainSettlementOutbox(services);
  } catch (error) {
    if (error instanceof GatewayError || error instanceof LedgerError) throw error;
    // Redis (the outbox itself) did not answer: nothing was taken out of it; the next run tries again.
    services.log({ level: 'warn', event: 'settlement_outbox_unavailable', error: (error as Error).message });
    throw new GatewayError(503, 'outbox_unavailable', 'The settlement outbox did not answer; nothing was taken out of it. The next drain tries again.', {
      headers: { 'retry-after': '60' },
    });
  }
  if (report.setAside || report.pending) services.log({ level: 'warn', event: 'settlement_drain', ...report });
  return c.json(report);
}

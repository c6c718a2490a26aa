// `npm run settlements:replay -- <log file>… | -`: settles the requests whose
// settlement could reach neither the database nor the Redis outbox. The gateway
// logged each of them as one JSON line with event `settlement_unrecorded` and
// the whole settlement (and each one it put in the outbox, as
// `settlement_queued`, for when the outbox itself is lost); this reads such lines (from files, or standard input
// with `-`; any prefix a log platform puts before the JSON is skipped, and a
// line a platform wraps in a JSON record of its own is read from that record), and
// settles them with settle_requests. The database settles by request id, so
// replaying a line twice, or a line whose settlement did get through, charges
// nothing more.
//
// Needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (as the gateway).
import { readFile } from 'node:fs/promises';
import { PostgrestClient } from '@supabase/postgrest-js';
import { createLedger, parseSettlementRow, settleEachIfRefused, type SettleRequestInput } from '../lib/billing/ledger.ts';
import { ConfigError, loadConfig } from '../lib/env.ts';

const batchSize = 100;

async function readInput(source: string): Promise<string> {
  if (source !== '-') return readFile(source, 'utf8');
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}

type LogEntry = { event?: unknown; settlement?: unknown };

const carriesSettlement = (entry: LogEntry) => entry.event === 'settlement_unrecorded' || entry.event === 'settlement_queued';

/**
 * The gateway's own line in a parsed log line: the line itself, or, where a log
 * platform exports each line as a JSON record of its own (a Vercel log drain),
 * the gateway's line as a string field of that record (`message`, say).
 */
function gatewayEntry(parsed: unknown): LogEntry | undefined {
  if (!parsed || typeof parsed !== 'object') return undefined;
  if (carriesSettlement(parsed as LogEntry)) return parsed as LogEntry;
  for (const value of Object.values(parsed)) {
    if (typeof value !== 'string' || !value.includes('settlement_')) continue;
    try {
      const inner = JSON.parse(value.slice(Math.max(0, value.indexOf('{')))) as LogEntry;
      if (inner && typeof inner === 'object' && carriesSettlement(inner)) return inner;
    } catch {
      // Not the gateway's line.
    }
  }
  return undefined;
}

/** The unrecorded settlements in a log, one per request id. */
export function unrecordedSettlements(log: string): SettleRequestInput[] {
  const found = new Map<string, SettleRequestInput>();
  for (const line of log.split('\n')) {
    const start = line.indexOf('{');
    if (start < 0 || !(line.includes('settlement_unrecorded') || line.includes('settlement_queued'))) continue;
    let parsed: unknown;
    try {
      parsed = JSON.parse(line.slice(start));
    } catch {
      continue;
    }
    const settlement = parseSettlementRow(gatewayEntry(parsed)?.settlement);
    if (settlement) found.set(settlement.requestId, settlement);
  }
  return [...found.values()];
}

async function main() {
  const sources = process.argv.slice(2);
  if (!sources.length) {
    console.error('usage: npm run settlements:replay -- <log file>… (or - for standard input)');
    process.exit(2);
  }
  const config = loadConfig(process.env);
  const key = config.SUPABASE_SERVICE_ROLE_KEY;
  const ledger = createLedger(
    new PostgrestClient(new URL('rest/v1', config.SUPABASE_URL.replace(/\/?$/, '/')).toString(), {
      headers: { apikey: key, authorization: `Bearer ${key}` },
    }),
  );
  const settlements = (await Promise.all(sources.map(readInput))).flatMap(unrecordedSettlements);
  console.log(`${settlements.length} unrecorded settlement(s) found`);
  let settled = 0;
  let replayed = 0;
  let failed = 0;
  for (let start = 0; start < settlements.length; start += batchSize) {
    const batch = settlements.slice(start, start + batchSize);
    // A batch the database refuses as a whole goes one by one: one bad line holds back no other.
    const results = await settleEachIfRefused(ledger, batch);
    for (const result of results) {
      if (!result.ok) {
        failed++;
        console.log(`  ${result.request_id}: refused (${result.code}) ${result.message}`);
      } else {
        const { result: settlement } = result;
        const charged = settlement.status === 'cancelled' ? 'nothing held' : `charged ${settlement.charged}`;
        if (settlement.replayed) replayed++;
        else settled++;
        console.log(`  ${result.request_id}: ${settlement.replayed ? 'already settled' : 'settled'} (${settlement.status}, ${charged})`);
      }
    }
  }
  console.log(`settled ${settled}, already settled ${replayed}, refused ${failed}`);
  process.exit(failed ? 1 : 0);
}

if (import.meta.url === `file://${process.argv[1]}`) {
  main().catch((error: unknown) => {
    console.error(error instanceof ConfigError ? error.message : error);
    process.exit(1);
  });
}

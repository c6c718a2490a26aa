// `npm run settlements:replay -- <log file>… | -`: settles the requests whose
// settlement could reach neither the database nor the Redis outbox. The gateway
// logged each of them as one JSON line with event `settlement_unrecorded` and
// the whole settlement (and each one it put in the outbox, as
// `settlement_queued`, for when the outbox itself is lost); this reads such lines (from files, or standard input
// with `-`; any prefix a log platform puts before the JSON is skipped), and
// settles them with settle_requests. The database settles by request id, so
// replaying a line twice, or a line whose settlement did get through, charges
// nothing more.
//
// Needs SUPABASE_URL and SUPABASE_SERVICE_ROLE_KEY (as the gateway).
import { readFile } from 'node:fs/promises';
import { PostgrestClient } from '@supabase/postgrest-js';
import { createLedger, parseSettlementRow, type SettleRequestInput } from '../lib/billing/ledger.ts';
import { ConfigError, loadConfig } from '../lib/env.ts';

const batchSize = 100;

async function readInput(source: string): Promise<string> {
  if (source !== '-') return readFile(source, 'utf8');
  let text = '';
  for await (const chunk of process.stdin) text += chunk;
  return text;
}

/** The unrecorded settlements in a log, one per request id. */
export function unrecordedSettlements(log: string): SettleRequestInput[] {
  const found = new Map<string, SettleRequestInput>();
  for (const line of log.split('\n')) {
    const start = line.indexOf('{');
    if (start < 0 || !(line.includes('settlement_unrecorded') || line.includes('settlement_queued'))) continue;
    let entry: { event?: unknown; settlement?: unknown };
    try {
      entry = JSON.parse(line.slice(start)) as typeof entry;
    } catch {
      continue;
    }
    if (entry.event !== 'settlement_unrecorded' && entry.event !== 'settlement_queued') continue;
    const settlement = parseSettlementRow(entry.settlement);
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
    const results = await ledger.settleRequests(batch);
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

import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import pg from 'pg';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { startLocalSupabase, type LocalSupabase } from '../../scripts/local-supabase/index.ts';
import { findInvariantViolations } from './invariants.ts';
import { insertModel, type ModelOptions, type ModelRates } from './supabase.ts';

export interface PrivateCustomer {
  userId: string;
  accountId: string;
  apiKey: string;
  apiKeyId: string;
  keyHash: string;
}

/**
 * A stack of its own (PostgreSQL, PostgREST, the router) for tests that stop,
 * pause and restart its processes, and for the benchmark: the suite's shared
 * stack stays up for everyone else.
 */
export async function startPrivateStack() {
  const dataDir = await mkdtemp(join(tmpdir(), 'tollgate-private-'));
  const stack: LocalSupabase = await startLocalSupabase({ dataDir, persistent: false });
  const admin = new pg.Pool({ connectionString: stack.adminDatabaseUrl, max: 4 });
  admin.on('error', () => {}); // a restarted database drops idle connections

  return {
    stack,
    admin,
    clusterDir: join(dataDir, 'postgres'),
    async createCustomer(balance: number): Promise<PrivateCustomer> {
      const customer = await stack.createCustomer(balance);
      return { ...customer, keyHash: await hashApiKey(customer.apiKey) };
    },
    createModel: (price: ModelRates, options: ModelOptions = {}) => insertModel(admin, price, options),
    invariantViolations: () => findInvariantViolations(admin),
    async stop() {
      await admin.end();
      await stack.stop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

export type PrivateStack = Awaited<ReturnType<typeof startPrivateStack>>;

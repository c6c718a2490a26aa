import { createClient, type SupabaseClient } from '@supabase/supabase-js';
import pg from 'pg';
import { inject } from 'vitest';
import WebSocket from 'ws';
import { createApiKeyManager, createLedger } from '../../lib/billing/ledger.ts';
import { hashApiKey } from '../../lib/billing/hash-api-key.ts';
import { signUserJwt } from '../../scripts/local-supabase/jwt.ts';
import { createAuthUser } from '../../scripts/local-supabase/index.ts';

export const stack = inject('stack');

const clientOptions = {
  auth: { persistSession: false, autoRefreshToken: false, detectSessionInUrl: false },
  // supabase-js on Node 20 needs a WebSocket implementation for its realtime client.
  realtime: { transport: WebSocket as never },
};

export function anonClient(): SupabaseClient {
  return createClient(stack.supabaseUrl, stack.anonKey, clientOptions);
}

export function serviceClient(): SupabaseClient {
  return createClient(stack.supabaseUrl, stack.serviceRoleKey, clientOptions);
}

export function userClient(userId: string): SupabaseClient {
  const token = signUserJwt(userId, stack.jwtSecret);
  return createClient(stack.supabaseUrl, stack.anonKey, { ...clientOptions, accessToken: async () => token });
}

let adminPool: pg.Pool | undefined;

/** Superuser access to the test database, for the tests' own checks and fixtures. */
export function admin(): pg.Pool {
  adminPool ??= new pg.Pool({ connectionString: stack.adminDatabaseUrl, max: 5 });
  return adminPool;
}

export async function closeAdmin(): Promise<void> {
  await adminPool?.end();
  adminPool = undefined;
}

export const ledger = createLedger(serviceClient());

export interface Customer {
  userId: string;
  accountId: string;
  client: SupabaseClient;
  apiKey: string;
  apiKeyId: string;
  keyHash: string;
}

/**
 * A new signed-up user with one API key. With `balance`, the account is brought
 * to exactly that balance by an adjustment (a ledger row, like any change).
 */
export async function createCustomer(options: { balance?: number } = {}): Promise<Customer> {
  const userId = await createAuthUser(stack.authAdminDatabaseUrl);
  const client = userClient(userId);
  const { data: account, error } = await client.from('accounts').select('id, balance').single();
  if (error) throw error;
  const created = await createApiKeyManager(client).createApiKey('test key');
  if (options.balance !== undefined && options.balance !== account.balance) {
    await ledger.grantCredits({
      accountId: account.id,
      amount: options.balance - account.balance,
      reason: options.balance > account.balance ? 'grant' : 'adjustment',
    });
  }
  return {
    userId,
    accountId: account.id,
    client,
    apiKey: created.key,
    apiKeyId: created.id,
    keyHash: await hashApiKey(created.key),
  };
}

export interface ModelRates {
  input: number;
  output: number;
  cached_input?: number | null;
  cache_write?: number | null;
  cache_write_1h?: number | null;
  reasoning?: number | null;
  image?: number | null;
  audio?: number | null;
  /** Micro-units per hosted web search (not per 1M). */
  web_search?: number | null;
}

let modelCounter = 0;

export interface ModelOptions {
  maxOutputTokens?: number;
  cost?: Partial<ModelRates>;
  upstreamModel?: string;
  provider?: string;
}

/** Inserts a model with the given prices (micro-units per 1M tokens) through `pool`; returns its id. */
export async function insertModel(pool: pg.Pool, price: ModelRates, options: ModelOptions = {}): Promise<string> {
  const id = `test-model-${process.pid}-${Date.now()}-${modelCounter++}`;
  const { cost = {} } = options;
  await pool.query(
    `insert into public.models (id, provider, upstream_model, max_output_tokens,
       price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output, price_reasoning, price_image, price_audio, price_web_search,
       cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h, cost_output, cost_reasoning, cost_image, cost_audio, cost_web_search)
     values ($1, $19, $20, $2, $3, $4, $5, $6, $7, $8, $9, $10, $21, $11, $12, $13, $14, $15, $16, $17, $18, $22)`,
    [
      id, options.maxOutputTokens ?? 1000,
      price.input, price.cached_input ?? null, price.cache_write ?? null, price.cache_write_1h ?? null,
      price.output, price.reasoning ?? null, price.image ?? null, price.audio ?? null,
      cost.input ?? null, cost.cached_input ?? null, cost.cache_write ?? null, cost.cache_write_1h ?? null,
      cost.output ?? null, cost.reasoning ?? null, cost.image ?? null, cost.audio ?? null,
      options.provider ?? 'openai', options.upstreamModel ?? id,
      price.web_search ?? null, cost.web_search ?? null,
    ],
  );
  return id;
}

/** A model with the given prices (micro-units per 1M tokens), private to the calling test. */
export function createModel(price: ModelRates, options: ModelOptions = {}): Promise<string> {
  return insertModel(admin(), price, options);
}

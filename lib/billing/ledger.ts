import { z } from 'zod';
import type { TokenUsage } from './token-buckets.ts';

/** A call to a money function failed (bad input, missing privilege, unreachable database). */
export class LedgerError extends Error {
  override readonly name = 'LedgerError';
  constructor(
    message: string,
    readonly code: string,
    readonly status: number,
    readonly details: string | null = null,
  ) {
    super(message);
  }
}

// Rates per 1M tokens by bucket; a model with a long-context tier also has `long: {threshold, …rates}`.
const priceSchema = z.record(z.string(), z.unknown());

const authorizedSchema = z.object({
  status: z.literal('authorized'),
  replayed: z.boolean(),
  request_id: z.string(),
  event_status: z.string(),
  account_id: z.string(),
  api_key_id: z.string(),
  model: z.object({ id: z.string(), provider: z.string(), upstream_model: z.string() }),
  hold: z.number().int(),
  max_input_tokens: z.number().int(),
  max_output_tokens: z.number().int(),
  output_capped: z.boolean(),
  choices: z.number().int(),
  price: priceSchema,
  balance: z.number().int(),
  held: z.number().int(),
  available: z.number().int(),
  key: z.object({ requests_per_minute: z.number().int().nullable(), max_concurrent: z.number().int().nullable() }),
  plan: z.string(),
  limits: z.object({ requests_per_minute: z.number().int().nullable(), tokens_per_minute: z.number().int().nullable() }),
});

const topUpLinkSchema = z.object({
  name: z.string(),
  url: z.string(),
  unit_amount: z.number().int(),
  currency: z.string(),
  credits: z.number().int(),
});

export type TopUpLink = z.infer<typeof topUpLinkSchema>;

const refusedSchema = z
  .object({
    status: z.literal('refused'),
    code: z.string(),
    message: z.string(),
    account_id: z.string().optional(),
    required: z.number().int().optional(),
    available: z.number().int().optional(),
    limit: z.number().int().optional(),
    provider: z.string().optional(),
    top_up_links: z.array(topUpLinkSchema).optional(),
  });

const authorizationSchema = z.discriminatedUnion('status', [authorizedSchema, refusedSchema]);

const cancelledSchema = z.object({ status: z.literal('cancelled'), replayed: z.boolean(), request_id: z.string() });

const closedSchema = z.object({
  status: z.enum(['completed', 'aborted', 'failed', 'expired']),
  replayed: z.boolean(),
  request_id: z.string(),
  account_id: z.string(),
  hold: z.number().int(),
  amount: z.number().int().nullable(),
  charged: z.number().int().nullable(),
  upstream_cost: z.number().int().nullable(),
  usage_source: z.enum(['provider', 'tokenizer', 'estimate']).nullable(),
  balance: z.number().int(),
  held: z.number().int(),
  available: z.number().int(),
});

/** A settled request, or a hold given back before its authorization arrived (`cancelled`). */
const settlementSchema = z.discriminatedUnion('status', [closedSchema, cancelledSchema]);

const unchargedCallSchema = z.discriminatedUnion('status', [
  z.object({
    status: z.literal('ok'),
    account_id: z.string(),
    api_key_id: z.string(),
    model: z.object({ id: z.string(), provider: z.string(), upstream_model: z.string() }),
    limits: z.object({ requests_per_minute: z.number().int().nullable(), tokens_per_minute: z.number().int().nullable() }),
  }),
  refusedSchema,
]);

export type UnchargedCall = z.infer<typeof unchargedCallSchema>;

const batchSettlementSchema = z.array(
  z.union([
    z.object({ request_id: z.string().nullable(), ok: z.literal(true), result: settlementSchema }),
    z.object({ request_id: z.string().nullable(), ok: z.literal(false), code: z.string(), message: z.string() }),
  ]),
);

export type BatchSettlement = z.infer<typeof batchSettlementSchema>;

const batchAuthorizationSchema = z.array(
  z.union([
    z.object({ request_id: z.string().nullable(), ok: z.literal(true), result: authorizationSchema }),
    z.object({ request_id: z.string().nullable(), ok: z.literal(false), code: z.string(), message: z.string() }),
  ]),
);

export type BatchAuthorization = z.infer<typeof batchAuthorizationSchema>;

const grantSchema = z.object({
  replayed: z.boolean(),
  entry_id: z.number().int(),
  account_id: z.string(),
  amount: z.number().int(),
  balance: z.number().int(),
});

const keyOverviewSchema = z.discriminatedUnion('status', [
  z.object({
    status: z.literal('ok'),
    account: z.object({
      id: z.string(),
      balance: z.number().int(),
      held: z.number().int(),
      credit_limit: z.number().int(),
      available: z.number().int(),
      plan: z.string(),
    }),
    key: z.object({
      id: z.string(),
      name: z.string(),
      prefix: z.string(),
      allowed_models: z.array(z.string()).nullable(),
      expires_at: z.string().nullable(),
    }),
    top_up_links: z.array(topUpLinkSchema),
  }),
  refusedSchema,
]);

const keyPolicySchema = z.object({
  allowed_models: z.array(z.string()).nullable(),
  allowed_ips: z.array(z.string()).nullable(),
  spend_limit: z.number().int().nullable(),
  monthly_spend_limit: z.number().int().nullable(),
  max_concurrent: z.number().int().nullable(),
  requests_per_minute: z.number().int().nullable(),
  tokens_per_minute: z.number().int().nullable(),
});

export type KeyPolicy = z.infer<typeof keyPolicySchema>;

const keySummarySchema = z.object({
  id: z.string(),
  name: z.string(),
  prefix: z.string(),
  expires_at: z.string().nullable(),
  created_at: z.string(),
  policy: keyPolicySchema,
});

const createdKeySchema = keySummarySchema.extend({ key: z.string() });

export type Authorization = z.infer<typeof authorizationSchema>;
export type Authorized = z.infer<typeof authorizedSchema>;
export type Refusal = z.infer<typeof refusedSchema>;
export type Settlement = z.infer<typeof settlementSchema>;
export type CreditGrant = z.infer<typeof grantSchema>;
export type CreatedApiKey = z.infer<typeof createdKeySchema>;
export type KeyOverview = z.infer<typeof keyOverviewSchema>;

export interface AuthorizeRequestInput {
  requestId: string;
  keyHash: string;
  model: string;
  /** A strict upper bound on the request's input tokens (e.g. its UTF-8 byte count). */
  maxInputTokens: number;
  /** The output cap; omitted means the model's own maximum. */
  maxOutputTokens?: number | undefined;
  clientIp?: string | undefined;
  /** Completions requested (`n`); the output bound is held once per choice. */
  choices?: number | undefined;
  /** When the caller set no output limit: hold what the balance affords instead of refusing. */
  capOutput?: boolean | undefined;
  /** The providers the route can serve; a model of another is refused (`unsupported_provider`) before any hold. */
  providers?: string[] | undefined;
  /** Priced calls the request may make at most (`{web_search: 10}`): held per call, refused (`tool_not_priced`) where unpriced. */
  calls?: Partial<Record<'web_search', number>> | undefined;
  /**
   * Stored content the request refers to (a response it continues, stored items sent back
   * by id), which `maxInputTokens` holds as content of unknown size, and the bound of the
   * request without it: the database holds the request at that bound plus what the
   * responses it refers to read and wrote, when it knows them all.
   */
  referenced?: ReferencedInput | undefined;
}

export type RequestOutcome = 'completed' | 'aborted' | 'failed';
export type UsageSource = 'provider' | 'tokenizer' | 'estimate';

export interface SettleRequestInput {
  requestId: string;
  outcome: RequestOutcome;
  usage: TokenUsage;
  usageSource?: UsageSource | undefined;
  error?: string | undefined;
}

export interface GrantCreditsInput {
  accountId: string;
  /** Micro-units; negative only with reason `adjustment`. */
  amount: number;
  reason?: 'grant' | 'adjustment';
  /** Makes the grant idempotent: the same reason and reference post once. */
  reference?: string;
  note?: string;
}

/**
 * What the ledger needs of a client: PostgREST's rpc. Both a supabase-js client
 * and a bare postgrest-js client (the gateway's, no realtime or auth) fit.
 */
export interface RpcClient {
  rpc(
    name: string,
    args: Record<string, unknown>,
  ): PromiseLike<{ data: unknown; error: { message: string; code?: string; details?: string | null } | null; status: number }>;
}

async function callFunction<T>(
  client: RpcClient,
  name: string,
  args: Record<string, unknown>,
  schema: z.ZodType<T>,
): Promise<T> {
  const { data, error, status } = await client.rpc(name, args);
  if (error) {
    throw new LedgerError(error.message, error.code ?? 'unknown', status, error.details ?? null);
  }
  const parsed = schema.safeParse(data);
  if (!parsed.success) {
    throw new LedgerError(`unexpected result from ${name}: ${parsed.error.message}`, 'invalid_result', status);
  }
  return parsed.data;
}

/**
 * Stored content a request refers to, its input bound besides, and the model it asks for:
 * the responses it refers to bound what they add only when made by the same model, with
 * neither reasoning.context nor truncation "auto" (recorded as whole), and the request
 * itself has neither.
 */
export interface ReferencedInput {
  previousResponseId: string | null;
  itemIds: string[];
  besides: number;
  model: string;
}

/** An authorization as authorize_requests takes it; authorize_request takes the same with `p_` before each name. */
function authorizationItem(input: AuthorizeRequestInput) {
  return {
    request_id: input.requestId,
    key_hash: input.keyHash,
    model: input.model,
    max_input_tokens: input.maxInputTokens,
    max_output_tokens: input.maxOutputTokens ?? null,
    client_ip: input.clientIp ?? null,
    choices: input.choices ?? 1,
    cap_output: input.capOutput ?? false,
    providers: input.providers ?? null,
    calls: input.calls ?? {},
    referenced: input.referenced
      ? { previous_response_id: input.referenced.previousResponseId, item_ids: input.referenced.itemIds, besides: input.referenced.besides, model: input.referenced.model }
      : null,
  };
}

/**
 * Text as PostgreSQL stores it: no NUL (a text value cannot hold one: 22P05)
 * and no lone surrogate (PostgREST refuses the whole body as invalid JSON).
 * An upstream's error message, or 500 characters cut from one mid-emoji, is
 * such text; so is an id a client sends.
 */
export function storableText(text: string): string {
  return text.replaceAll('\u0000', '').replace(loneSurrogate, '\uFFFD');
}

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g;

/** A settlement as the database (and the outbox, and the replay log) writes it. */
export function settlementRow(input: SettleRequestInput) {
  return {
    request_id: input.requestId,
    outcome: input.outcome,
    usage: input.usage,
    usage_source: input.usageSource ?? null,
    error: input.error === undefined || input.error === null ? null : storableText(input.error),
  };
}

export type SettlementRow = ReturnType<typeof settlementRow>;

const settlementRowSchema = z.object({
  request_id: z.string().min(1),
  outcome: z.enum(['completed', 'aborted', 'failed']),
  usage: z.record(z.string(), z.number().int()),
  usage_source: z.enum(['provider', 'tokenizer', 'estimate']).nullable(),
  error: z.string().nullable(),
});

/** A settlement read back from the outbox or a log line; undefined when it is not one. */
export function parseSettlementRow(value: unknown): SettleRequestInput | undefined {
  const parsed = settlementRowSchema.safeParse(value);
  if (!parsed.success) return undefined;
  const row = parsed.data;
  return {
    requestId: row.request_id,
    outcome: row.outcome,
    usage: row.usage,
    ...(row.usage_source ? { usageSource: row.usage_source } : {}),
    ...(row.error !== null ? { error: row.error } : {}),
  };
}

/** The database answered and refused the call (a 4xx): it was reached, and sending the same again gets the same. */
export function isDatabaseRefusal(error: unknown): error is LedgerError {
  return error instanceof LedgerError && error.status >= 400 && error.status < 500;
}

/**
 * The database refused a call's input itself (SQLSTATE class 22, data exception:
 * a value it cannot take): the caller's error. Other refusals (a function
 * missing from the schema cache, a read-only standby, a permission) are ours.
 */
export function isRefusedInput(error: unknown): error is LedgerError {
  return isDatabaseRefusal(error) && error.code.startsWith('22');
}

/**
 * The database answered and refused the settlement itself (bad usage, or a
 * request it never authorized): retrying cannot help. Anything else (no answer,
 * a deadline, a 5xx, a misconfigured key) may pass later.
 */
export function isPermanentSettlementError(error: unknown): boolean {
  return error instanceof LedgerError && isPermanentSettlementCode(error.code);
}

/** The same, for one item's SQLSTATE in a settle_requests answer: an unknown request or bad usage. */
export function isPermanentSettlementCode(code: string): boolean {
  // PGRST1xx: PostgREST could not read the request (its body, say).
  return code === 'PT404' || code.startsWith('22') || code.startsWith('PGRST1');
}

/**
 * settle_requests for many settlements; when the database refuses the call as a
 * whole (a 4xx: one entry it cannot read), each goes again alone, so one entry
 * never holds back the others: an entry refused alone is answered as refused,
 * with the database's code. No answer (or a 5xx) still fails the call.
 */
export async function settleEachIfRefused(ledger: Pick<Ledger, 'settleRequests'>, inputs: SettleRequestInput[]): Promise<BatchSettlement> {
  const alone = async (input: SettleRequestInput): Promise<BatchSettlement> => {
    try {
      return await ledger.settleRequests([input]);
    } catch (error) {
      if (!isDatabaseRefusal(error)) throw error;
      return [{ request_id: input.requestId, ok: false, code: error.code, message: error.message }];
    }
  };
  if (inputs.length === 1) return alone(inputs[0]!);
  try {
    return await ledger.settleRequests(inputs);
  } catch (error) {
    if (!isDatabaseRefusal(error)) throw error;
  }
  const results: BatchSettlement = [];
  for (const input of inputs) results.push(...(await alone(input)));
  return results;
}

/** The money functions, for the gateway (a service-role client). */
export function createLedger(serviceClient: RpcClient) {
  return {
    authorizeRequest(input: AuthorizeRequestInput): Promise<Authorization> {
      const args = Object.fromEntries(Object.entries(authorizationItem(input)).map(([name, value]) => [`p_${name}`, value]));
      return callFunction(serviceClient, 'authorize_request', args, authorizationSchema);
    },

    /** Many authorizations in one call (authorize_requests), each answered on its own, in order. */
    authorizeRequests(inputs: AuthorizeRequestInput[]): Promise<BatchAuthorization> {
      return callFunction(serviceClient, 'authorize_requests', { p_items: inputs.map(authorizationItem) }, batchAuthorizationSchema);
    },

    /**
     * Holds taken ahead (authorize_ahead): authorized like any request, adoptable by
     * this instance for `readySeconds`; keys whose policy counts what is in flight
     * are answered with the refusal `not_taken_ahead`.
     */
    authorizeAhead(inputs: AuthorizeRequestInput[], readySeconds: number): Promise<BatchAuthorization> {
      return callFunction(serviceClient, 'authorize_ahead', { p_items: inputs.map(authorizationItem), p_ready_seconds: readySeconds }, batchAuthorizationSchema);
    },

    /** Gives back holds taken ahead that were not used (return_ready_holds); answers how many went back. */
    returnReadyHolds(requestIds: string[]): Promise<number> {
      return callFunction(serviceClient, 'return_ready_holds', { p_request_ids: requestIds }, z.number().int());
    },

    settleRequest(input: SettleRequestInput): Promise<Settlement> {
      return callFunction(
        serviceClient,
        'settle_request',
        {
          p_request_id: input.requestId,
          p_outcome: input.outcome,
          p_usage: input.usage,
          p_usage_source: input.usageSource ?? null,
          p_error: input.error ?? null,
        },
        settlementSchema,
      );
    },

    /** Many settlements in one call; each item succeeds or fails on its own. */
    settleRequests(inputs: SettleRequestInput[]): Promise<BatchSettlement> {
      return callFunction(serviceClient, 'settle_requests', { p_settlements: inputs.map(settlementRow) }, batchSettlementSchema);
    },

    /** A call that is checked like a request and charged nothing (token counting). */
    authorizeUnchargedCall(input: { keyHash: string; model: string; clientIp?: string | undefined; providers?: string[] | undefined }): Promise<UnchargedCall> {
      return callFunction(
        serviceClient,
        'authorize_uncharged_call',
        { p_key_hash: input.keyHash, p_model: input.model, p_client_ip: input.clientIp ?? null, p_providers: input.providers ?? null },
        unchargedCallSchema,
      );
    },

    /**
     * Records the request's account as the stored response's owner, and of its output items
     * (`itemIds`, added to those recorded before); `whole`: its usage covers all that a request
     * continuing it adds (see ReferencedInput).
     */
    recordStoredResponse(requestId: string, responseId: string, itemIds: string[] = [], whole = false): Promise<unknown> {
      return callFunction(
        serviceClient,
        'record_stored_response',
        { p_request_id: requestId, p_response_id: storableText(responseId), p_item_ids: itemIds.map(storableText), p_whole: whole },
        z.unknown(),
      );
    },

    /**
     * The first of the ids a request refers to (the stored response it continues,
     * then its input items') recorded as another account's than this key's, or null.
     */
    storedElsewhere(keyHash: string, responseId: string | null, itemIds: string[]): Promise<string | null> {
      // An id with a NUL in it was never recorded: the id without it is not either.
      return callFunction(
        serviceClient,
        'stored_elsewhere',
        { p_key_hash: keyHash, p_response_id: responseId === null ? null : storableText(responseId), p_item_ids: itemIds.map(storableText) },
        z.string().nullable(),
      );
    },

    /** May this key read that stored response (its account's, from an address the key allows)? */
    authorizeStoredResponse(keyHash: string, responseId: string, clientIp?: string): Promise<{ status: 'ok'; account_id: string } | Refusal> {
      return callFunction(
        serviceClient,
        'authorize_stored_response',
        { p_key_hash: keyHash, p_response_id: storableText(responseId), p_client_ip: clientIp ?? null },
        z.discriminatedUnion('status', [z.object({ status: z.literal('ok'), account_id: z.string() }), refusedSchema]),
      );
    },

    /** The key's account as the key may see it; `clientIp` is checked against its allowed addresses. */
    keyOverview(keyHash: string, clientIp?: string): Promise<KeyOverview> {
      return callFunction(serviceClient, 'key_overview', { p_key_hash: keyHash, p_client_ip: clientIp ?? null }, keyOverviewSchema);
    },

    grantCredits(input: GrantCreditsInput): Promise<CreditGrant> {
      return callFunction(
        serviceClient,
        'grant_credits',
        {
          p_account_id: input.accountId,
          p_amount: input.amount,
          p_reason: input.reason ?? 'grant',
          p_reference: input.reference ?? null,
          p_note: input.note ?? null,
        },
        grantSchema,
      );
    },
  };
}

export type Ledger = ReturnType<typeof createLedger>;

/** Key management for a signed-in user (a client carrying the user's session). */
export function createApiKeyManager(userClient: RpcClient) {
  return {
    createApiKey(name: string, expiresAt?: Date, policy: Partial<KeyPolicy> = {}): Promise<CreatedApiKey> {
      return callFunction(
        userClient,
        'create_api_key',
        { p_name: name, p_expires_at: expiresAt?.toISOString() ?? null, p_policy: policy },
        createdKeySchema,
      );
    },
    /** Fields left out stay as they are; null removes a limit. */
    updateApiKeyPolicy(keyId: string, policy: Partial<KeyPolicy>): Promise<z.infer<typeof keySummarySchema>> {
      return callFunction(userClient, 'update_api_key_policy', { p_key_id: keyId, p_policy: policy }, keySummarySchema);
    },
    revokeApiKey(keyId: string): Promise<{ id: string; account_id: string; revoked_at: string }> {
      return callFunction(
        userClient,
        'revoke_api_key',
        { p_key_id: keyId },
        z.object({ id: z.string(), account_id: z.string(), revoked_at: z.string() }),
      );
    },
  };
}

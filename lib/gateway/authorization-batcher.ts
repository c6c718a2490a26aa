import { isDatabaseRefusal, LedgerError, type Authorization, type AuthorizeRequestInput, type BatchAuthorization } from '../billing/ledger.ts';

export interface AuthorizationBatcherOptions {
  /** One authorization: authorize_request. */
  authorizeOne: (input: AuthorizeRequestInput) => Promise<Authorization>;
  /** Many in one call: authorize_requests. */
  authorizeMany: (inputs: AuthorizeRequestInput[]) => Promise<BatchAuthorization>;
  /** Calls in flight at once; authorizations arriving beyond them wait and go together. */
  inFlight: number;
  /**
   * The most one call carries. Each item is a subtransaction; PostgreSQL caches 64 of them
   * per transaction, and beyond that every other session's visibility checks slow down.
   */
  maxBatch?: number;
  /** An authorization not sent within this long (every call in flight stalled) fails without being sent. */
  maxWaitMs: number;
}

export interface AuthorizationBatcher {
  authorize(input: AuthorizeRequestInput): Promise<Authorization>;
  /** Every call it may have out is out: authorizations arriving now would wait and go together. */
  readonly busy: boolean;
}

/**
 * Group commit for authorizations. A request that finds fewer than `inFlight`
 * calls in flight goes at once, alone, as before: an idle instance adds no
 * wait. When `inFlight` calls are out, the authorizations that arrive wait
 * for the first of them to return and then go together in one
 * authorize_requests call (one PostgREST request, one transaction, one commit),
 * each authorized on its own. The busier the instance, the larger the
 * batches, and the database sees at most `inFlight` of its calls at once.
 *
 * An authorization waits for a call at most `maxWaitMs` (the database
 * deadline): when every call in flight has stalled, it fails unsent, so a
 * request waits at most two deadlines for its authorization (three when its
 * batch's answer sends it again alone, below; those calls go at once, beside
 * the calls in flight, since the database has just answered).
 * A call that fails or misses its deadline rejects every authorization it
 * carried, as a single call would (the caller gives the holds back); one the
 * database refuses as a whole (4xx) sends each again alone. An item the batch reports as
 * failed is sent again alone, so its error is exactly the one a single call
 * gives (a malformed client address is the client's error, say).
 */
export function createAuthorizationBatcher({ authorizeOne, authorizeMany, inFlight, maxBatch = 64, maxWaitMs }: AuthorizationBatcherOptions): AuthorizationBatcher {
  type Waiting = {
    input: AuthorizeRequestInput;
    resolve: (authorization: Authorization) => void;
    reject: (error: unknown) => void;
    timer?: ReturnType<typeof setTimeout>;
  };
  let waiting: Waiting[] = [];
  let running = 0;

  // Never throws synchronously: whatever authorizeOne does, the item settles and the slot is freed.
  const alone = (item: Waiting) => Promise.resolve(item.input).then(authorizeOne).then(item.resolve, item.reject);

  const together = async (batch: Waiting[]) => {
    let results: BatchAuthorization;
    try {
      results = await authorizeMany(batch.map((item) => item.input));
      if (results.length !== batch.length) throw new Error(`authorize_requests answered ${results.length} results for ${batch.length} authorizations`);
    } catch (error) {
      // The database refusing the call itself (a 4xx: the batch function missing from the
      // schema, say) says nothing about any one request: each goes again alone and gets its
      // own answer. A timeout or a failure to reach the database fails them all, as it
      // would fail each of them alone.
      if (isDatabaseRefusal(error)) await Promise.all(batch.map(alone));
      else for (const item of batch) item.reject(error);
      return;
    }
    const retried: Array<Promise<void>> = [];
    results.forEach((result, index) => {
      const item = batch[index]!;
      if (result.ok) item.resolve(result.result);
      else retried.push(alone(item));
    });
    await Promise.all(retried);
  };

  const pump = () => {
    while (running < inFlight && waiting.length) {
      const batch = waiting.slice(0, maxBatch);
      waiting = waiting.slice(batch.length);
      for (const item of batch) clearTimeout(item.timer);
      running++;
      void (batch.length === 1 ? alone(batch[0]!) : together(batch)).finally(() => {
        running--;
        pump();
      });
    }
  };

  return {
    get busy() {
      return running >= inFlight;
    },
    authorize(input) {
      return new Promise<Authorization>((resolve, reject) => {
        const item: Waiting = { input, resolve, reject };
        waiting.push(item);
        pump();
        if (waiting.includes(item)) {
          item.timer = setTimeout(() => {
            waiting = waiting.filter((other) => other !== item);
            reject(new LedgerError(`the database did not take the authorization within ${maxWaitMs} ms: every call in flight is waiting`, 'unavailable', 0));
          }, maxWaitMs);
        }
      });
    },
  };
}

import { describe, expect, it } from 'vitest';
import type { Authorization } from '../../lib/billing/ledger.ts';
import { admin, createCustomer, createModel, ledger } from '../support/supabase.ts';

// authorize_request's input bound for stored content a request refers to (migration
// 20261130000100), asked directly: what it takes, and what it never lowers the bound for.

const price = { input: 1_000_000, output: 2_000_000 };
const conservative = 1_048_600;

async function storedResponse(accountId: string, keyHash: string, model: string, usage: { input: number; output: number }, whole = true) {
  const requestId = crypto.randomUUID();
  const authorized = await ledger.authorizeRequest({ requestId, keyHash, model, maxInputTokens: 100, maxOutputTokens: 100 });
  expect(authorized.status).toBe('authorized');
  await ledger.settleRequest({ requestId, outcome: 'completed', usage, usageSource: 'provider' });
  const responseId = `resp_${crypto.randomUUID()}`;
  const itemId = `msg_${crypto.randomUUID()}`;
  await ledger.recordStoredResponse(requestId, responseId, [itemId], whole);
  const { rows: [stored] } = await admin().query('select account_id from public.stored_responses where response_id = $1', [responseId]);
  expect(stored.account_id).toBe(accountId);
  return { responseId, itemId };
}

describe('authorize_request with referenced stored content', () => {
  it('holds at the bound besides plus what the responses read and wrote; never above the bound it was given; another account\'s content as unknown', async () => {
    const model = await createModel(price, { maxOutputTokens: 1_000 });
    const [owner, other] = [await createCustomer({ balance: 100_000_000 }), await createCustomer({ balance: 100_000_000 })];
    const mine = await storedResponse(owner.accountId, owner.keyHash, model, { input: 3_000, output: 500 });
    const theirs = await storedResponse(other.accountId, other.keyHash, model, { input: 7_000, output: 900 });
    const held = async (references: { previousResponseId: string | null; itemIds: string[]; besides: number }, maxInputTokens = conservative, asked = model) => {
      const referenced = { ...references, model: asked };
      const result = (await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: owner.keyHash, model, maxInputTokens, maxOutputTokens: 10, referenced })) as Authorization & { max_input_tokens?: number };
      expect(result.status).toBe('authorized');
      return result.max_input_tokens;
    };
    // 3,000 + 500, 64 for the response, 8 for its one item.
    expect(await held({ previousResponseId: mine.responseId, itemIds: [], besides: 40 })).toBe(40 + 3_500 + 64 + 8);
    expect(await held({ previousResponseId: null, itemIds: [mine.itemId, mine.itemId], besides: 40 })).toBe(40 + 3_500 + 64 + 8);
    // The bound the gateway gave stays the most it is held at.
    expect(await held({ previousResponseId: mine.responseId, itemIds: [], besides: 40 }, 1_000)).toBe(1_000);
    // Made by another model, or with settings that left some of what it carries on out of
    // its usage (recorded as not whole): held as content of unknown size.
    const otherModel = await createModel(price, { maxOutputTokens: 1_000 });
    const byOther = await storedResponse(owner.accountId, owner.keyHash, otherModel, { input: 3_000, output: 500 });
    const partial = await storedResponse(owner.accountId, owner.keyHash, model, { input: 3_000, output: 500 }, false);
    expect(await held({ previousResponseId: mine.responseId, itemIds: [], besides: 40 }, conservative, 'no-such-model')).toBe(conservative);
    for (const referenced of [
      { previousResponseId: byOther.responseId, itemIds: [], besides: 40 },
      { previousResponseId: mine.responseId, itemIds: [byOther.itemId], besides: 40 },
      { previousResponseId: partial.responseId, itemIds: [], besides: 40 },
      { previousResponseId: theirs.responseId, itemIds: [], besides: 40 },
      { previousResponseId: null, itemIds: [mine.itemId, theirs.itemId], besides: 40 },
      { previousResponseId: `resp_${crypto.randomUUID()}`, itemIds: [], besides: 40 },
    ]) {
      expect(await held(referenced)).toBe(conservative);
    }
  });

  it('refuses references not as the gateway sends them, writing nothing', async () => {
    const model = await createModel(price, { maxOutputTokens: 1_000 });
    const customer = await createCustomer({ balance: 100_000_000 });
    for (const referenced of [
      { previousResponseId: null, itemIds: [], besides: 40 },
      { previousResponseId: '', itemIds: [], besides: 40 },
      { previousResponseId: 'resp_x', itemIds: ['x'.repeat(201)], besides: 40 },
      { previousResponseId: 'resp_x', itemIds: [], besides: -1 },
      { previousResponseId: 'resp_x', itemIds: [], besides: 1.5 },
      { previousResponseId: null, itemIds: Array.from({ length: 1001 }, (_, index) => `msg_${index}`), besides: 40 },
    ]) {
      const result = await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: conservative, maxOutputTokens: 10, referenced: { ...referenced, model } });
      expect(result, JSON.stringify(referenced).slice(0, 80)).toMatchObject({ status: 'refused', code: 'invalid_request' });
    }
    const { rows } = await admin().query('select count(*)::int as n from public.usage_events where account_id = $1', [customer.accountId]);
    expect(rows[0].n).toBe(0);
  });
});

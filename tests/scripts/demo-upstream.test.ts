import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startDemoUpstream } from '../../scripts/demo-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel } from '../support/supabase.ts';

// The demo model of `npm run dev` answers the Responses API (what Codex and the AI SDK
// speak) as it answers chat completions: through the gateway, streamed and not, billed
// from the usage it reports.

let demo: { url: string; close: () => Promise<void> };
let gateway: Gateway;

beforeAll(async () => {
  demo = await startDemoUpstream();
  gateway = await startGateway({ UPSTREAM_CHANNELS: JSON.stringify([{ provider: 'demo', kind: 'openai-compatible', baseUrl: demo.url }]) });
});

afterAll(async () => {
  await gateway?.close();
  await demo?.close();
});

describe('the demo upstream', () => {
  it('answers the Responses API through the gateway, streamed and not, billed from its usage', async () => {
    const model = await createModel({ input: 1_000_000, output: 2_000_000 }, { provider: 'demo', upstreamModel: 'demo', maxOutputTokens: 1_000 });
    const customer = await createCustomer({ balance: 1_000_000 });
    const client = gateway.openai(customer.apiKey);
    const expected = 'This is Tollgate\'s local demo model. You said: "Hello!". Every token of this answer is metered and billed.';
    const answered = await client.responses.create({ model, input: 'Hello!' });
    expect(answered.output_text).toBe(expected);
    const stream = await client.responses.create({ model, input: [{ role: 'user', content: 'Hello!' }], stream: true });
    let text = '';
    let completed: { usage?: { input_tokens: number; output_tokens: number } | null } | undefined;
    for await (const event of stream) {
      if (event.type === 'response.output_text.delta') text += event.delta;
      if (event.type === 'response.completed') completed = event.response;
    }
    expect(text).toBe(expected);
    await gateway.settled();
    const { rows } = await admin().query(
      'select status, usage_source, input_tokens::int, output_tokens::int from public.usage_events where account_id = $1 order by created_at', [customer.accountId]);
    expect(rows).toEqual([
      { status: 'completed', usage_source: 'provider', input_tokens: answered.usage!.input_tokens, output_tokens: answered.usage!.output_tokens },
      { status: 'completed', usage_source: 'provider', input_tokens: completed!.usage!.input_tokens, output_tokens: completed!.usage!.output_tokens },
    ]);
    expect(rows[0].output_tokens).toBeGreaterThan(10);
  });
});

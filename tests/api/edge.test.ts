import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { buildEdgeBundle, buildEdgeChunks } from '../../scripts/build-edge.ts';
import { pdfPageTokenBound } from '../../lib/metering/prompt-pieces.ts';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startEdgeRuntime } from '../support/edge-runtime.ts';
import { buildPdf } from '../support/pdf.ts';
import { readFixture, startFakeUpstream, withoutUsage, type FakeUpstream } from '../support/fake-upstream.ts';
import { checkoutSession, signature, stripeEvent } from '../support/stripe-events.ts';
import { admin, createCustomer, createModel, stack } from '../support/supabase.ts';

// Vercel's edge limit for the Hobby plan: 1 MB after gzip.
const edgeLimitBytes = 1024 * 1024;

let fake: FakeUpstream;
let upstash: LocalUpstash;

beforeAll(async () => {
  [fake, upstash] = await Promise.all([startFakeUpstream(), startLocalUpstash()]);
});

afterAll(async () => {
  await fake.close();
  await upstash.stop();
});

describe('the edge entry', () => {
  it('bundles to at most 1 MB gzip, minified or not', async () => {
    const minified = await buildEdgeBundle('esm', true);
    const plain = await buildEdgeBundle('esm', false);
    expect(minified.gzipBytes).toBeLessThanOrEqual(edgeLimitBytes);
    expect(plain.gzipBytes).toBeLessThanOrEqual(edgeLimitBytes);
  });

  it('loads the fallback tokenizer lazily: outside a main chunk of at most 250 KB gzip', async () => {
    const chunks = await buildEdgeChunks();
    const main = chunks.filter((chunk) => chunk.entry);
    expect(main).toHaveLength(1);
    expect(main[0]!.gzipBytes).toBeLessThanOrEqual(250 * 1024);
    const tokenizer = (chunk: (typeof chunks)[number]) => chunk.inputs.some((input) => input.includes('node_modules/js-tiktoken/'));
    expect(tokenizer(main[0]!)).toBe(false);
    // The ranks (the bulk of it) are a chunk of their own, fetched on first use.
    expect(chunks.some((chunk) => !chunk.entry && tokenizer(chunk) && chunk.gzipBytes > 400 * 1024)).toBe(true);
  });

  it('runs inside Vercel\'s edge-runtime VM and serves a streamed request there', async () => {
    const runtime = await startEdgeRuntime({
      SUPABASE_URL: stack.supabaseUrl,
      SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey,
      OPENAI_BASE_URL: `${fake.url}/v1`,
      STRIPE_WEBHOOK_SECRET: 'whsec_edge_test',
      UPSTASH_REDIS_REST_URL: upstash.url,
      UPSTASH_REDIS_REST_TOKEN: upstash.token,
      CRON_SECRET: 'edge-cron-secret',
    });
    // Node built-ins do not exist in there: the bundle must not need them.
    expect(runtime.evaluate('typeof require')).toBe('undefined');

    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 1_000_000 });
    const response = await runtime.dispatchFetch('https://gateway.example/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Say hello' }], stream: true }),
    });
    expect(response.status).toBe(200);
    expect(await response.text()).toBe(withoutUsage(readFixture('chat-basic.chunks.txt')));
    await response.waitUntil();

    const requestId = response.headers.get('x-request-id');
    await expect
      .poll(async () => (await admin().query('select status, charged from public.usage_events where request_id = $1', [requestId])).rows[0], { timeout: 10_000 })
      .toEqual({ status: 'completed', charged: '55' });

    // A PDF sent inline is held by its pages: its object stream inflated in there, with no DecompressionStream (the edge runtime has none).
    const pdf = buildPdf({ pages: 5, objectStreams: true }).toString('base64');
    const withPdf = await runtime.dispatchFetch('https://gateway.example/v1/chat/completions', {
      method: 'POST',
      headers: { authorization: `Bearer ${customer.apiKey}`, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: [{ type: 'file', file: { filename: 'a.pdf', file_data: `data:application/pdf;base64,${pdf}` } }] }] }),
    });
    expect(withPdf.status).toBe(200);
    await withPdf.text();
    await withPdf.waitUntil();
    const { rows: [pdfEvent] } = await admin().query('select max_input_tokens::int from public.usage_events where request_id = $1', [withPdf.headers.get('x-request-id')]);
    expect(pdfEvent.max_input_tokens).toBeGreaterThanOrEqual(5 * pdfPageTokenBound);

    // A Stripe webhook verified with SubtleCrypto inside the edge runtime.
    const link = `plink_test_edge_${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.credit_packs (name, stripe_payment_link_id, unit_amount, credits) values ('Edge', $1, 1000, 10000000)`, [link]);
    const event = JSON.stringify(stripeEvent('checkout.session.completed', checkoutSession({ clientReferenceId: customer.accountId, paymentLink: link, amount: 1000 })));
    const webhook = await runtime.dispatchFetch('https://gateway.example/webhooks/stripe', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signature(event, 'whsec_edge_test') },
      body: event,
    });
    expect(webhook.status).toBe(200);
    expect(await webhook.json()).toMatchObject({ status: 'credited' });
    const forged = await runtime.dispatchFetch('https://gateway.example/webhooks/stripe', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'stripe-signature': signature(event, 'whsec_someone_else') },
      body: event,
    });
    expect(forged.status).toBe(400);

    // The settlement outbox's drain (Redis over REST, a lock, a compare-and-delete script) runs in there too.
    const drain = await runtime.dispatchFetch('https://gateway.example/internal/settlements/drain', {
      headers: { authorization: 'Bearer edge-cron-secret' },
    });
    expect(drain.status).toBe(200);
    expect(await drain.json()).toMatchObject({ status: 'drained', pending: 0 });
  });
});

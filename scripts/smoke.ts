// npm run smoke -- <deployment URL>
//
// Checks a live deployment the way a customer and Stripe would:
//   1. /health answers;
//   2. /v1/models lists priced models for the test key;
//   3. a priced request with the test key answers, and the balance falls by
//      exactly its charge, ceil(Σ tokens × price / 1,000,000), once settled;
//   4. the console page, its script and its configuration are served;
//   5. a signed test event is accepted by the Stripe webhook, delivered again
//      is a duplicate, and neither credits anything.
//
// Environment: SMOKE_API_KEY (a key of a test account with some credit),
// SMOKE_MODEL (default: the cheapest priced model the key may use),
// STRIPE_WEBHOOK_SECRET (the endpoint's signing secret; without it step 4 is
// skipped and said so). Exits 1 when a check fails.

export interface SmokeOptions {
  url: string;
  apiKey: string;
  model?: string | undefined;
  webhookSecret?: string | undefined;
  /** How long to wait for the request's settlement to reach the balance. */
  settleTimeoutMs?: number;
  log?: (line: string) => void;
}

export interface SmokeCheck {
  name: string;
  ok: boolean;
  skipped?: boolean;
  detail: string;
}

interface Pricing {
  input: number;
  cached_input: number;
  output: number;
  reasoning: number;
}

interface Credits {
  balance: number;
  held: number;
}

class SmokeFailure extends Error {}

async function readJson(response: Response, what: string): Promise<Record<string, unknown>> {
  const text = await response.text();
  if (!response.ok) throw new SmokeFailure(`${what}: HTTP ${response.status} ${text.slice(0, 300)}`);
  try {
    return JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new SmokeFailure(`${what}: not JSON: ${text.slice(0, 300)}`);
  }
}

/** A Stripe-Signature header for `payload`, as Stripe computes it (HMAC-SHA256 of "t.payload"). */
export async function stripeSignature(payload: string, secret: string, timestamp = Math.floor(Date.now() / 1000)): Promise<string> {
  const key = await crypto.subtle.importKey('raw', new TextEncoder().encode(secret), { name: 'HMAC', hash: 'SHA-256' }, false, ['sign']);
  const mac = await crypto.subtle.sign('HMAC', key, new TextEncoder().encode(`${timestamp}.${payload}`));
  const hex = Array.from(new Uint8Array(mac), (byte) => byte.toString(16).padStart(2, '0')).join('');
  return `t=${timestamp},v1=${hex}`;
}

export async function runSmoke(options: SmokeOptions): Promise<SmokeCheck[]> {
  const base = options.url.replace(/\/+$/, '');
  const log = options.log ?? (() => {});
  const auth = { authorization: `Bearer ${options.apiKey}` };
  const checks: SmokeCheck[] = [];
  const check = async (name: string, run: () => Promise<string>) => {
    try {
      const detail = await run();
      checks.push({ name, ok: true, detail });
      log(`ok    ${name}: ${detail}`);
    } catch (error) {
      const detail = error instanceof SmokeFailure ? error.message : `${(error as Error).name}: ${(error as Error).message}`;
      checks.push({ name, ok: false, detail });
      log(`FAIL  ${name}: ${detail}`);
    }
  };
  const credits = async (): Promise<Credits> => {
    const body = await readJson(await fetch(`${base}/v1/credits`, { headers: auth }), 'GET /v1/credits');
    return { balance: Number(body.balance), held: Number(body.held) };
  };

  await check('health', async () => {
    const body = await readJson(await fetch(`${base}/health`), 'GET /health');
    if (body.status !== 'ok') throw new SmokeFailure(`GET /health answered ${JSON.stringify(body)}`);
    return 'GET /health: ok';
  });

  let model = options.model;
  let pricing: Pricing | undefined;
  await check('models with prices', async () => {
    const body = await readJson(await fetch(`${base}/v1/models`, { headers: auth }), 'GET /v1/models');
    const data = (body.data ?? []) as Array<{ id: string; pricing?: Partial<Pricing> }>;
    const priced = data.filter((entry) => [entry.pricing?.input, entry.pricing?.output].every((rate) => Number.isSafeInteger(rate) && rate! >= 0));
    if (!priced.length) throw new SmokeFailure('GET /v1/models lists no priced model for this key');
    const cheapest = [...priced].sort((a, b) => a.pricing!.input! + a.pricing!.output! - (b.pricing!.input! + b.pricing!.output!))[0]!;
    const chosen = model ? priced.find((entry) => entry.id === model) : cheapest;
    if (!chosen) throw new SmokeFailure(`the model ${model} is not among the key's priced models`);
    model = chosen.id;
    pricing = chosen.pricing as Pricing;
    return `${priced.length} priced models; using ${model} (input ${pricing.input}, output ${pricing.output} micro-USD per 1M tokens)`;
  });

  await check('a priced request is charged exactly', async () => {
    if (!model || !pricing) throw new SmokeFailure('no priced model to send a request to');
    const before = await credits();
    const response = await fetch(`${base}/v1/chat/completions`, {
      method: 'POST',
      headers: { ...auth, 'content-type': 'application/json' },
      body: JSON.stringify({ model, messages: [{ role: 'user', content: 'Reply with the single word: ok' }], max_tokens: 16 }),
    });
    const body = await readJson(response, `POST /v1/chat/completions (${model})`);
    const usage = body.usage as
      | { prompt_tokens: number; completion_tokens: number; prompt_tokens_details?: { cached_tokens?: number }; completion_tokens_details?: { reasoning_tokens?: number } }
      | undefined;
    if (!usage) throw new SmokeFailure('the answer reports no usage');
    const cached = usage.prompt_tokens_details?.cached_tokens ?? 0;
    const reasoning = usage.completion_tokens_details?.reasoning_tokens ?? 0;
    const weighted =
      (usage.prompt_tokens - cached) * pricing.input + cached * pricing.cached_input + (usage.completion_tokens - reasoning) * pricing.output + reasoning * pricing.reasoning;
    const expected = Math.ceil(weighted / 1_000_000);
    // Settlement happens after the response: wait for it to reach the balance.
    const deadline = Date.now() + (options.settleTimeoutMs ?? 30_000);
    let after = await credits();
    while ((after.held !== before.held || after.balance === before.balance) && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 250));
      after = await credits();
    }
    const charged = before.balance - after.balance;
    const tokens = `${usage.prompt_tokens} prompt (${cached} cached) + ${usage.completion_tokens} completion (${reasoning} reasoning) tokens`;
    // Other requests of the same account running meanwhile would move the balance too: use a key of its own.
    if (charged !== expected) throw new SmokeFailure(`${tokens}: expected a charge of ${expected} micro-USD, the balance fell by ${charged}`);
    return `${tokens}: charged ${charged} micro-USD, as priced; balance ${before.balance} → ${after.balance}`;
  });

  await check('the console loads', async () => {
    const page = await fetch(`${base}/console/`);
    const html = await page.text();
    if (!page.ok || !/text\/html/.test(page.headers.get('content-type') ?? '') || !html.includes('app.js')) {
      throw new SmokeFailure(`GET /console/ answered HTTP ${page.status} ${page.headers.get('content-type')}, not the console page`);
    }
    const script = await fetch(`${base}/console/app.js`);
    await script.arrayBuffer();
    if (!script.ok) throw new SmokeFailure(`GET /console/app.js answered HTTP ${script.status}: was the console built (npm run build:console)?`);
    const config = await readJson(await fetch(`${base}/console/config.json`), 'GET /console/config.json');
    if (typeof config.supabaseUrl !== 'string' || typeof config.anonKey !== 'string') throw new SmokeFailure(`GET /console/config.json answered ${JSON.stringify(config)}`);
    return `page, script and configuration served (Supabase at ${config.supabaseUrl})`;
  });

  if (!options.webhookSecret) {
    checks.push({ name: 'Stripe webhook', ok: true, skipped: true, detail: 'STRIPE_WEBHOOK_SECRET not set: not checked' });
    log('skip  Stripe webhook: STRIPE_WEBHOOK_SECRET not set');
  } else {
    const secret = options.webhookSecret;
    await check('Stripe webhook: a signed event once, credited nothing', async () => {
      const before = await credits();
      // A type the gateway records and otherwise ignores: it can touch no balance.
      const id = `evt_smoke_${crypto.randomUUID().replaceAll('-', '')}`;
      const payload = JSON.stringify({ id, object: 'event', type: 'tollgate.smoke_test', created: Math.floor(Date.now() / 1000), livemode: false, data: { object: { object: 'smoke_test' } } });
      const deliver = async () =>
        readJson(
          await fetch(`${base}/webhooks/stripe`, {
            method: 'POST',
            headers: { 'content-type': 'application/json', 'stripe-signature': await stripeSignature(payload, secret) },
            body: payload,
          }),
          'POST /webhooks/stripe',
        );
      const first = await deliver();
      const second = await deliver();
      if (first.received !== true || first.status !== 'ignored') throw new SmokeFailure(`first delivery answered ${JSON.stringify(first)}`);
      if (second.status !== 'duplicate') throw new SmokeFailure(`second delivery answered ${JSON.stringify(second)}, not a duplicate`);
      const after = await credits();
      if (after.balance !== before.balance) throw new SmokeFailure(`the balance moved from ${before.balance} to ${after.balance}`);
      return `${id}: accepted, then answered as a duplicate; balance unchanged`;
    });
  }
  return checks;
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const url = process.argv[2];
  const apiKey = process.env.SMOKE_API_KEY;
  if (!url || !/^https?:\/\//.test(url) || !apiKey) {
    console.error('usage: SMOKE_API_KEY=tg_… [SMOKE_MODEL=…] [STRIPE_WEBHOOK_SECRET=whsec_…] npm run smoke -- <deployment URL>');
    process.exit(2);
  }
  const checks = await runSmoke({ url, apiKey, model: process.env.SMOKE_MODEL || undefined, webhookSecret: process.env.STRIPE_WEBHOOK_SECRET || undefined, log: console.log });
  const failed = checks.filter((check) => !check.ok);
  console.log(failed.length ? `\n${failed.length} of ${checks.length} checks failed` : `\nall ${checks.filter((check) => !check.skipped).length} checks passed`);
  process.exit(failed.length ? 1 : 0);
}

import { execFile } from 'node:child_process';
import { resolve } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { runSmoke } from '../../scripts/smoke.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer, createModel, stack } from '../support/supabase.ts';
import { buildConsole } from '../../scripts/build-console.ts';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');
const webhookSecret = 'whsec_smoke_test';

let fake: FakeUpstream;
let gateway: Gateway;

beforeAll(async () => {
  fake = await startFakeUpstream();
  await buildConsole();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, STRIPE_WEBHOOK_SECRET: webhookSecret, SUPABASE_ANON_KEY: stack.anonKey }, { publicFiles: true });
});

afterAll(async () => {
  await gateway.close();
  await fake.close();
});

describe('npm run smoke', () => {
  it('passes against the local stack: health, priced models, an exact charge, a webhook event once', async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 10_000_000 });
    const lines: string[] = [];
    const checks = await runSmoke({ url: gateway.url, apiKey: customer.apiKey, model, webhookSecret, log: (line) => lines.push(line) });
    expect(checks.map((check) => [check.name, check.ok, check.skipped ?? false])).toEqual([
      ['health', true, false],
      ['models with prices', true, false],
      ['a priced request is charged exactly', true, false],
      ['the console loads', true, false],
      ['Stripe webhook: a signed event once, credited nothing', true, false],
    ]);
    // 19 prompt tokens at $1/M + 9 completion tokens at $4/M = 55 micro-dollars.
    expect(checks[2]!.detail).toContain('charged 55 micro-USD');
    const { rows: [account] } = await admin().query('select balance::int, held::int from public.accounts where id = $1', [customer.accountId]);
    expect(account).toEqual({ balance: 10_000_000 - 55, held: 0 });
  });

  it('fails, naming what, when the deployment does not answer as it should', async () => {
    const customer = await createCustomer({ balance: 10_000_000 });
    const checks = await runSmoke({ url: gateway.url, apiKey: customer.apiKey, model: 'no-such-model', webhookSecret: 'whsec_wrong' });
    expect(checks.filter((check) => !check.ok).map((check) => check.name)).toEqual([
      'models with prices',
      'a priced request is charged exactly',
      'Stripe webhook: a signed event once, credited nothing',
    ]);
    expect(checks.find((check) => check.name.startsWith('Stripe'))!.detail).toContain('could not be verified');
  });

  it('runs from the command line, exit code and all', { timeout: 60_000 }, async () => {
    const model = await createModel({ input: 1_000_000, output: 4_000_000 }, { upstreamModel: 'chat-basic' });
    const customer = await createCustomer({ balance: 10_000_000 });
    const { stdout } = await run('npm', ['run', '--silent', 'smoke', '--', gateway.url], {
      cwd: root,
      env: { ...process.env, SMOKE_API_KEY: customer.apiKey, SMOKE_MODEL: model, STRIPE_WEBHOOK_SECRET: webhookSecret },
    });
    expect(stdout).toContain('all 5 checks passed');
    const failed = await run('npm', ['run', '--silent', 'smoke', '--', gateway.url], {
      cwd: root,
      env: { ...process.env, SMOKE_API_KEY: 'tg_not_a_key_of_anyone_0000', STRIPE_WEBHOOK_SECRET: '' },
    }).catch((error: { code: number; stdout: string }) => error);
    expect((failed as { code: number }).code).toBe(1);
    expect((failed as { stdout: string }).stdout).toContain('skip  Stripe webhook');
  });
});

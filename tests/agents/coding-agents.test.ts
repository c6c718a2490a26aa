import { execFile } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { TokenUsage } from '../../lib/billing/token-buckets.ts';
import { startFakeUpstream, type FakeUpstream } from '../support/fake-upstream.ts';
import { startGateway, type Gateway } from '../support/gateway.ts';
import { admin, createCustomer } from '../support/supabase.ts';

// Claude Code, Codex CLI and Gemini CLI, installed from npm, run headless in
// their default model configuration against the gateway, which stands in front
// of the fake upstream. Only the base URL and the key are set, plus what each
// needs to run unattended; telemetry and update checks are off, and nothing
// here can reach the internet (every base URL is local). `.ci/run` installs the
// agents into .local/agents; elsewhere set AGENTS_BIN, or this is skipped (never in CI).

const root = resolve(import.meta.dirname, '../..');
const bin = process.env.AGENTS_BIN ?? join(root, '.local/agents/node_modules/.bin');
const available = existsSync(join(bin, 'claude')) || process.env.CI === 'true';

let fake: FakeUpstream;
let gateway: Gateway;

interface Price { input: number; cached_input?: number; cache_write?: number; cache_write_1h?: number; output: number; web_search?: number }

/** The agents' default models today, priced for the test; each answered by a fixture. */
const models: Array<{ id: string; provider: string; fixture: string; price: Price; longContext?: Price; maxOutput?: number }> = [
  {
    // Claude Code asks for the model's whole output limit (128,000) as max_tokens.
    id: 'claude-opus-5-5', provider: 'anthropic', fixture: 'messages-cache', maxOutput: 128_000,
    price: { input: 4_000_000, cached_input: 200_000, cache_write: 5_000_000, cache_write_1h: 8_000_000, output: 20_000_000, web_search: 10_000 },
  },
  {
    id: 'claude-opus-4-8', provider: 'anthropic', fixture: 'messages-cache',
    price: { input: 5_000_000, cached_input: 500_000, cache_write: 6_250_000, cache_write_1h: 10_000_000, output: 25_000_000, web_search: 10_000 },
    longContext: { input: 10_000_000, output: 37_500_000 },
  },
  { id: 'gpt-6.2-sol', provider: 'openai', fixture: 'responses-basic', price: { input: 1_250_000, cached_input: 125_000, output: 10_000_000 } },
  { id: 'gemini-3.5-flash-lite', provider: 'google', fixture: 'generate-router', price: { input: 100_000, output: 400_000 } },
  { id: 'gemini-3.8-flash', provider: 'google', fixture: 'generate-cached-thoughts', price: { input: 300_000, cached_input: 30_000, output: 2_500_000 } },
  { id: 'gemini-3.1-pro-preview', provider: 'google', fixture: 'generate-cached-thoughts', price: { input: 2_000_000, cached_input: 200_000, output: 12_000_000 } },
];

beforeAll(async () => {
  fake = await startFakeUpstream();
  gateway = await startGateway({ OPENAI_BASE_URL: `${fake.url}/v1`, ANTHROPIC_BASE_URL: fake.url, GEMINI_BASE_URL: fake.url });
  for (const model of models) {
    fake.scenarios.set(model.id, { fixture: model.fixture });
    await admin().query(
      `insert into public.models (id, provider, upstream_model, max_output_tokens, price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output,
                                  long_context_threshold, long_context_price, price_web_search)
       values ($1, $2, $1, $11, $3, $4, $5, $6, $7, $8, $9, $10)
       on conflict (id) do update set provider = excluded.provider, upstream_model = excluded.upstream_model, enabled = true,
         max_output_tokens = excluded.max_output_tokens, price_input = excluded.price_input, price_cached_input = excluded.price_cached_input,
         price_cache_write = excluded.price_cache_write, price_cache_write_1h = excluded.price_cache_write_1h, price_output = excluded.price_output,
         long_context_threshold = excluded.long_context_threshold, long_context_price = excluded.long_context_price,
         price_web_search = excluded.price_web_search`,
      [
        model.id, model.provider, model.price.input, model.price.cached_input ?? null, model.price.cache_write ?? null,
        model.price.cache_write_1h ?? null, model.price.output, model.longContext ? 200_000 : null, model.longContext ?? null,
        model.price.web_search ?? null, model.maxOutput ?? 64_000,
      ],
    );
  }
});

afterAll(async () => {
  await gateway?.close();
  await fake?.close();
});

/** Runs an agent with its own empty home directory and working directory; nothing on standard input. */
async function runAgent(name: string, args: string[], env: Record<string, string>, prepare?: (home: string) => Promise<void>) {
  const home = await mkdtemp(join(tmpdir(), `tollgate-${name}-home-`));
  const work = await mkdtemp(join(tmpdir(), `tollgate-${name}-work-`));
  try {
    await prepare?.(home);
    return await new Promise<{ code: number | null; stdout: string; stderr: string }>((done) => {
      const child = execFile(join(bin, name), args, { cwd: work, env: { PATH: process.env.PATH, HOME: home, ...env }, timeout: 150_000, maxBuffer: 16 * 1024 * 1024 }, (error, stdout, stderr) => {
        done({ code: error ? ((error as { code?: number }).code ?? 1) : 0, stdout, stderr });
      });
      child.stdin?.end();
    });
  } finally {
    await rm(home, { recursive: true, force: true });
    await rm(work, { recursive: true, force: true });
  }
}

/** What each request of the account was billed, bucket by bucket. */
async function billed(accountId: string) {
  await gateway.settled();
  const { rows } = await admin().query(
    `select model_id, status, usage_source, input_tokens::int as input, cached_input_tokens::int as cached_input,
            cache_write_tokens::int as cache_write, cache_write_1h_tokens::int as cache_write_1h,
            output_tokens::int as output, reasoning_tokens::int as reasoning, charged::int
       from public.usage_events where account_id = $1 order by created_at`,
    [accountId],
  );
  return rows;
}

/** The charge the price sheet gives a usage: Σ tokens × rate / 1e6, rounded up once; reasoning at the output rate. */
function chargeFor(modelId: string, usage: TokenUsage): number {
  const { price } = models.find((model) => model.id === modelId)!;
  const rate = (bucket: keyof Price) => price[bucket] ?? price.input;
  const micro =
    (usage.input ?? 0) * price.input + (usage.cached_input ?? 0) * rate('cached_input') + (usage.cache_write ?? 0) * rate('cache_write')
    + (usage.cache_write_1h ?? 0) * rate('cache_write_1h') + ((usage.output ?? 0) + (usage.reasoning ?? 0)) * price.output;
  return Math.ceil(micro / 1_000_000);
}

function expectBill(row: Record<string, unknown>, modelId: string, usage: Required<Pick<TokenUsage, 'input' | 'output'>> & TokenUsage) {
  const buckets = { cached_input: 0, cache_write: 0, cache_write_1h: 0, reasoning: 0, ...usage };
  expect(row).toEqual({ model_id: modelId, status: 'completed', usage_source: 'provider', ...buckets, charged: chargeFor(modelId, buckets) });
}

/** Codex's settings for a Tollgate deployment, as the README gives them. */
function codexConfig(): string {
  return [
    'model_provider = "tollgate"',
    '',
    '[model_providers.tollgate]',
    'name = "Tollgate"',
    `base_url = "${gateway.url}/v1"`,
    'env_key = "TOLLGATE_API_KEY"',
    'wire_api = "responses"',
    '',
  ].join('\n');
}

describe.skipIf(!available)('the coding agents, headless, in their default configuration', () => {
  it('Claude Code: claude-opus-5-5 with its default betas, billed from the stream\'s usage', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const result = await runAgent('claude', ['-p', 'Say hello'], {
      ANTHROPIC_BASE_URL: gateway.url,
      ANTHROPIC_API_KEY: customer.apiKey,
      DISABLE_TELEMETRY: '1',
      DISABLE_AUTOUPDATER: '1',
      DISABLE_ERROR_REPORTING: '1',
      CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
    });
    expect(result.stdout, result.stderr).toContain('Hello! The cached context says hi.');
    const request = fake.requestsFor('claude-opus-5-5').at(-1)!;
    // Its betas go through as sent (the 1M context is this model's own, with no beta).
    expect(String(request.headers['anthropic-beta'])).toMatch(/^claude-code-\d+,.*mid-conversation-tool-changes-.*thinking-token-count-/);
    const [row, ...rest] = await billed(customer.accountId);
    expect(rest).toEqual([]);
    // messages-cache: 25 input, 3000 cache reads, 1000 5-minute and 200 1-hour cache writes, 14 output.
    expectBill(row!, 'claude-opus-5-5', { input: 25, cached_input: 3000, cache_write: 1000, cache_write_1h: 200, output: 14 });
  });

  it('Codex CLI: gpt-6.2-sol over the Responses API, billed from response.completed', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const result = await runAgent('codex', ['exec', '--skip-git-repo-check', 'Say hello'], { TOLLGATE_API_KEY: customer.apiKey }, async (home) => {
      await mkdir(join(home, '.codex'));
      await writeFile(join(home, '.codex/config.toml'), codexConfig());
    });
    expect(result.stdout, result.stderr).toContain('Hello! How can I help you today?');
    const [row, ...rest] = await billed(customer.accountId);
    expect(rest).toEqual([]);
    // responses-basic: 20 input, 74 output of which 64 reasoning.
    expectBill(row!, 'gpt-6.2-sol', { input: 20, output: 10, reasoning: 64 });
  });

  it('Codex CLI driving a Claude model: the Responses API translated to Anthropic\'s and back, billed from Anthropic\'s usage', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const result = await runAgent('codex', ['exec', '--skip-git-repo-check', '-m', 'claude-opus-4-8', 'Say hello'], { TOLLGATE_API_KEY: customer.apiKey }, async (home) => {
      await mkdir(join(home, '.codex'));
      await writeFile(join(home, '.codex/config.toml'), codexConfig());
    });
    expect(result.stdout, result.stderr).toContain('Hello! The cached context says hi.');
    const request = fake.requestsFor('claude-opus-4-8').at(-1)!;
    expect(request.path).toBe('/v1/messages');
    // Codex's hosted web search went as Anthropic's server tool, its namespaces flattened.
    expect((request.body.tools as Array<{ name: string; type?: string }>).map((tool) => tool.type ?? tool.name)).toEqual(
      expect.arrayContaining(['exec_command', 'web_search_20250305', expect.stringMatching(/^multi_agent_v1__/)]),
    );
    const [row, ...rest] = await billed(customer.accountId);
    expect(rest).toEqual([]);
    expectBill(row!, 'claude-opus-4-8', { input: 25, cached_input: 3000, cache_write: 1000, cache_write_1h: 200, output: 14 });
  });

  it('Gemini CLI: its router model, then the model it picks, each billed from its usageMetadata', async () => {
    const customer = await createCustomer({ balance: 100_000_000 });
    const result = await runAgent('gemini', ['-p', 'Say hello'], {
      GOOGLE_GEMINI_BASE_URL: gateway.url,
      GEMINI_API_KEY: customer.apiKey,
      GEMINI_CLI_TRUST_WORKSPACE: 'true',
    }, async (home) => {
      await mkdir(join(home, '.gemini'));
      await writeFile(join(home, '.gemini/settings.json'), JSON.stringify({
        security: { auth: { selectedType: 'gemini-api-key' } },
        privacy: { usageStatisticsEnabled: false },
        general: { disableAutoUpdate: true },
      }));
    });
    expect(result.stdout, result.stderr).toContain('The answer is 42.');
    const rows = await billed(customer.accountId);
    expect(rows.map((row) => row.model_id)).toEqual(['gemini-3.5-flash-lite', 'gemini-3.8-flash']);
    // generate-router: 1850 prompt, 21 candidates, 66 thoughts.
    expectBill(rows[0]!, 'gemini-3.5-flash-lite', { input: 1850, output: 21, reasoning: 66 });
    // generate-cached-thoughts: 1200 prompt of which 1000 cached, 12 candidates, 140 thoughts.
    expectBill(rows[1]!, 'gemini-3.8-flash', { input: 200, cached_input: 1000, output: 12, reasoning: 140 });
  });
});

import { execFile } from 'node:child_process';
import { readFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { promisify } from 'node:util';
import { findProvider, type ModelPrice } from '@pydantic/genai-prices';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { importRow, seedSql } from '../../scripts/prices.ts';
import { datasetModelFor } from '../../scripts/prices/dataset.ts';
import { microPerMillion } from '../../scripts/prices/micro-units.ts';
import { admin, createCustomer, ledger } from '../support/supabase.ts';
import { startPrivateStack, type PrivateStack } from '../support/private-stack.ts';

const run = promisify(execFile);
const root = resolve(import.meta.dirname, '../..');

describe('units: the dataset\'s dollars per million as integer micro-dollars per million', () => {
  it('converts every price of the installed dataset exactly, or rounds up and says so', () => {
    let checked = 0;
    let roundedUp = 0;
    for (const providerId of ['openai', 'anthropic', 'google', 'mistral', 'deepseek', 'groq', 'x-ai']) {
      for (const model of findProvider({ providerId })?.models ?? []) {
        const entries = Array.isArray(model.prices) ? model.prices.map((entry) => entry.prices) : [model.prices as ModelPrice];
        for (const prices of entries) {
          for (const value of Object.values(prices)) {
            const numbers = typeof value === 'number' ? [value] : value ? [value.base, ...value.tiers.map((tier) => tier.price)] : [];
            for (const dollars of numbers) {
              const { micro, exact } = microPerMillion(dollars);
              checked++;
              if (exact) {
                // Exact: back to dollars it is the very same number.
                expect(micro / 1_000_000).toBe(dollars);
              } else {
                // Rounded up: never below the price, by less than one micro-dollar.
                roundedUp++;
                expect(micro - 1).toBeLessThan(dollars * 1_000_000);
                expect(micro).toBeGreaterThanOrEqual(dollars * 1_000_000);
              }
            }
          }
        }
      }
    }
    expect(checked).toBeGreaterThan(500);
    // In 0.1.8 every price is a whole number of micro-dollars per million.
    expect(roundedUp).toBe(0);
  });

  it('handles the decimal forms a number takes', () => {
    expect(microPerMillion(0.075)).toEqual({ micro: 75_000, exact: true });
    expect(microPerMillion(1.25)).toEqual({ micro: 1_250_000, exact: true });
    expect(microPerMillion(0.1 + 0.2)).toEqual({ micro: 300_001, exact: false });
    expect(microPerMillion(2.5e-7)).toEqual({ micro: 1, exact: false });
    expect(microPerMillion(12)).toEqual({ micro: 12_000_000, exact: true });
  });
});

describe('the seed', () => {
  it('is what `npm run prices:seed` makes of the installed dataset (never edited by hand)', async () => {
    expect(await readFile(join(root, 'supabase/seed.sql'), 'utf8')).toBe(seedSql().sql);
  });

  it('prices the agents\' default models, dated changes included, and aliases their other ids', async () => {
    const { rows } = await admin().query(
      `select id, price_source, price_input::int, price_output::int, cost_input::int, price_version_id is not null as versioned
         from public.models where id = any ($1) order by id`,
      [['claude-opus-4-8', 'claude-opus-5-5', 'gemini-3.1-pro-preview', 'gemini-3.5-flash-lite', 'gemini-3.8-flash', 'gpt-6-sol']],
    );
    expect(rows.map((row) => row.id)).toEqual(['claude-opus-4-8', 'claude-opus-5-5', 'gemini-3.1-pro-preview', 'gemini-3.5-flash-lite', 'gemini-3.8-flash', 'gpt-6-sol']);
    for (const row of rows) {
      expect(row).toMatchObject({ price_source: 'dataset', versioned: true });
      // cost + 20%, rounded up.
      expect(row.price_input).toBe(Math.ceil(row.cost_input * 1.2));
    }
    const { rows: [opus] } = await admin().query(
      `select cost_input::int, cost_cached_input::int, cost_cache_write_1h::int, cost_output::int, cost_web_search::int, price_web_search::int
         from public.models where id = 'claude-opus-4-8'`,
    );
    // Web search: the dataset's $10 per thousand is 10,000 micro-dollars per search, + 20%.
    expect(opus).toEqual({
      cost_input: 5_000_000, cost_cached_input: 500_000, cost_cache_write_1h: 10_000_000, cost_output: 25_000_000, cost_web_search: 10_000, price_web_search: 12_000,
    });
    const { rows: [later] } = await admin().query(`select costs, applied_at from public.price_versions where model_id = 'gemini-3.8-flash' and effective_from = '2027-01-01T00:00:00Z'`);
    expect(later).toEqual({ costs: { input: 1_500_000, cached_input: 150_000, output: 7_500_000 }, applied_at: null });
    const { rows: aliases } = await admin().query(`select alias, model_id from public.model_aliases where alias in ('gpt-6.2-sol', 'gpt-4.1-2025-04-14') order by alias`);
    expect(aliases).toEqual([{ alias: 'gpt-4.1-2025-04-14', model_id: 'gpt-4.1' }, { alias: 'gpt-6.2-sol', model_id: 'gpt-6-sol' }]);
  });
});

describe('models that search the web on every request', () => {
  // gpt-4o-mini-search-preview searches on every chat request, and OpenAI bills each search beyond tokens;
  // the dataset lists its ids among gpt-4o-mini's own, priced as gpt-4o-mini's tokens alone.
  const searchIds = ['gpt-4o-mini-search-preview', 'gpt-4o-mini-search-preview-2025-03-11', 'gpt-4o-search-preview'];

  it('are never an alias of a plain model, in the seed or the database, and a request for one is refused as unknown', async () => {
    const { sql } = seedSql();
    expect(sql).not.toContain('search-preview');
    expect(datasetModelFor('openai', 'gpt-4o-mini')!.exactIds).toEqual(['gpt-4o-mini-2024-07-18']);
    const { rows } = await admin().query(`select alias, model_id from public.model_aliases where alias ~ '-search-(preview|api)'`);
    expect(rows).toEqual([]);
    const customer = await createCustomer({ balance: 1_000_000 });
    for (const model of searchIds) {
      expect(await ledger.authorizeRequest({ requestId: crypto.randomUUID(), keyHash: customer.keyHash, model, maxInputTokens: 10, maxOutputTokens: 10 }))
        .toMatchObject({ status: 'refused', code: 'model_not_found' });
    }
  });

  it('are not priced by a sync either, under their own id or as the plain model the dataset lists them under', () => {
    for (const id of searchIds) {
      const dataset = datasetModelFor('openai', id);
      expect(dataset?.unsupported).toMatch(/searches the web on every request/);
      const row = importRow({ id, provider: 'openai', upstreamModel: id, displayName: null, maxOutputTokens: 16_384 }, dataset, new Date());
      expect(row).toMatch(/searches the web on every request/);
    }
    // The plain model is priced as before.
    expect(typeof importRow({ id: 'gpt-4o-mini', provider: 'openai', upstreamModel: 'gpt-4o-mini', displayName: null, maxOutputTokens: 16_384 }, datasetModelFor('openai', 'gpt-4o-mini'), new Date())).toBe('object');
  });
});

describe('models that answer in images, audio or video', () => {
  it('are not priced by a sync: their output would be billed at the text output price', () => {
    for (const [provider, id, kind] of [
      ['google', 'gemini-2.5-flash-image', 'image'],
      ['openai', 'gpt-audio', 'audio'],
      ['openai', 'gpt-realtime', 'audio'],
    ] as const) {
      const dataset = datasetModelFor(provider, id);
      expect(dataset?.unsupported).toMatch(new RegExp(`^answers in ${kind} \\(output_${kind}_mtok\\)`));
      expect(importRow({ id, provider, upstreamModel: id, displayName: null, maxOutputTokens: 8_192 }, dataset, new Date())).toMatch(/text output price/);
    }
    // A model that reads images and answers in text is priced as before.
    expect(typeof importRow({ id: 'gemini-2.5-flash', provider: 'google', upstreamModel: 'gemini-2.5-flash', displayName: null, maxOutputTokens: 65_536 }, datasetModelFor('google', 'gemini-2.5-flash'), new Date())).toBe('object');
  });
});

describe('price versions and margins', () => {
  const importModel = (id: string, costs: Record<string, number>, effectiveFrom: string | null = null) =>
    admin().query(`select public.import_model_costs($1, 'test') as report`, [
      JSON.stringify([{ id, provider: 'openai', upstream_model: id, display_name: null, max_output_tokens: 1000, versions: [{ effective_from: effectiveFrom, costs, long: null }] }]),
    ]);

  it('prices follow the margin rules in SQL: per model, else per provider, else the default, rounded up', async () => {
    const id = `margin-${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.margin_rules (model_id, markup_bps) values ($1, 3333)`, [id]);
    await importModel(id, { input: 1_000_001, output: 3 });
    const { rows: [model] } = await admin().query('select price_input::int, price_output::int from public.models where id = $1', [id]);
    // 1,000,001 × 1.3333 = 1,333,301.3333 → 1,333,302; 3 × 1.3333 = 3.9999 → 4.
    expect(model).toEqual({ price_input: 1_333_302, price_output: 4 });
  });

  it('a request authorized before a price change settles at the rates it was authorized with, and names their version', async () => {
    const id = `versioned-${crypto.randomUUID().slice(0, 8)}`;
    await importModel(id, { input: 1_000_000, output: 1_000_000 });
    const { rows: [before] } = await admin().query('select price_version_id::int from public.models where id = $1', [id]);
    const customer = await createCustomer({ balance: 10_000_000 });
    const requestId = crypto.randomUUID();
    await ledger.authorizeRequest({ requestId, keyHash: customer.keyHash, model: id, maxInputTokens: 1000, maxOutputTokens: 1000 });
    // The upstream doubles its price while the request runs.
    await importModel(id, { input: 2_000_000, output: 2_000_000 });
    const settled = await ledger.settleRequest({ requestId, outcome: 'completed', usage: { input: 1000, output: 1000 }, usageSource: 'provider' });
    // At the old price: 1000 × 1.2 + 1000 × 1.2 = 2400.
    expect(settled).toMatchObject({ amount: 2400, charged: 2400 });
    const { rows: [event] } = await admin().query(`select (rates ->> 'version')::int as version from public.usage_events where request_id = $1`, [requestId]);
    expect(event.version).toBe(before.price_version_id);
    const { rows: [after] } = await admin().query('select price_input::int, price_version_id::int from public.models where id = $1', [id]);
    expect(after.price_input).toBe(2_400_000);
    expect(after.price_version_id).not.toBe(before.price_version_id);
  });

  it('a dated price waits for its date: apply_price_versions puts it in force then', async () => {
    const id = `dated-${crypto.randomUUID().slice(0, 8)}`;
    await importModel(id, { input: 1_000_000, output: 1_000_000 });
    await importModel(id, { input: 3_000_000, output: 3_000_000 }, '2030-01-01T00:00:00Z');
    const priceOf = async () => (await admin().query('select price_input::int from public.models where id = $1', [id])).rows[0].price_input;
    expect(await priceOf()).toBe(1_200_000);
    await admin().query(`select public.apply_price_versions('2029-12-31T23:59:59Z')`);
    expect(await priceOf()).toBe(1_200_000);
    await admin().query(`select public.apply_price_versions('2030-01-01T00:00:00Z')`);
    expect(await priceOf()).toBe(3_600_000);
  });

  it('a model whose cost rises above its price raises an alert, whoever changed it; fixing it resolves the alert', async () => {
    const id = `loss-${crypto.randomUUID().slice(0, 8)}`;
    await admin().query(`insert into public.models (id, provider, upstream_model, max_output_tokens, cost_input, cost_output, price_input, price_output)
                         values ($1, 'openai', $1, 100, 1000000, 1000000, 1200000, 1200000)`, [id]);
    const open = async () => (await admin().query(`select details ->> 'buckets' as buckets from public.alerts where dedupe_key = $1 and resolved_at is null`, [`price_below_cost:${id}`])).rows;
    expect(await open()).toEqual([]);
    await admin().query(`update public.models set cost_output = 1500000 where id = $1`, [id]);
    expect(await open()).toEqual([{ buckets: '["output", "reasoning"]' }]);
    await admin().query(`update public.models set price_output = 1800000 where id = $1`, [id]);
    expect(await open()).toEqual([]);
  });
});

describe('npm run prices:sync', () => {
  let privateStack: PrivateStack;

  beforeAll(async () => {
    privateStack = await startPrivateStack();
  }, 120_000);

  afterAll(async () => {
    await privateStack?.stop();
  });

  it('against the installed dataset, writes exactly the rows that changed, and never a row priced by hand', { timeout: 120_000 }, async () => {
    const { admin: db, stack } = privateStack;
    // A model a sync created earlier, whose costs have since changed in the dataset…
    await db.query(`update public.models set cost_output = 1, price_output = 2 where id = 'claude-haiku-4-5'`);
    await db.query(`update public.models set price_source = 'manual' where id = 'gpt-5-mini'`);
    // …and one the operator prices by hand, now below what the dataset says it costs.
    await db.query(`update public.models set price_source = 'manual', price_output = 100000 where id = 'gpt-5-nano'`);
    const environment = { ...process.env, SUPABASE_URL: stack.supabaseUrl, SUPABASE_SERVICE_ROLE_KEY: stack.serviceRoleKey };

    const preview = await run('npx', ['tsx', 'scripts/prices.ts', 'sync'], { env: environment, cwd: root });
    expect(preview.stdout).toMatch(/claude-haiku-4-5 \(dataset\)\n {4}output 1 → 5,000,000/);
    expect(preview.stdout).toContain('Nothing written');
    const { rows: [unchanged] } = await db.query(`select cost_output::int from public.models where id = 'claude-haiku-4-5'`);
    expect(unchanged.cost_output).toBe(1);

    const versionsBefore = (await db.query('select count(*)::int as n from public.price_versions')).rows[0].n;
    const applied = await run('npx', ['tsx', 'scripts/prices.ts', 'sync', '--apply'], { env: environment, cwd: root });
    const written = applied.stdout.slice(applied.stdout.indexOf('Written:'));
    expect(written).toContain('claude-haiku-4-5: updated (1 price version)');
    expect(written).toMatch(/gpt-5-nano: kept_manual — below cost: output/);
    expect(written).toContain('gpt-5-mini: kept_manual\n');
    // Only the stale row got a new version.
    expect((await db.query('select count(*)::int as n from public.price_versions')).rows[0].n).toBe(versionsBefore + 1);
    const { rows: [haiku] } = await db.query(`select cost_output::int, price_output::int from public.models where id = 'claude-haiku-4-5'`);
    expect(haiku).toEqual({ cost_output: 5_000_000, price_output: 6_000_000 });
    const { rows: [nano] } = await db.query(`select price_output::int from public.models where id = 'gpt-5-nano'`);
    expect(nano.price_output).toBe(100_000);
    const { rows: alerts } = await db.query(`select kind from public.alerts where dedupe_key = 'price_below_cost:gpt-5-nano' and resolved_at is null`);
    expect(alerts).toEqual([{ kind: 'price_below_cost' }]);

    // Run again: nothing more to write.
    await run('npx', ['tsx', 'scripts/prices.ts', 'sync', '--apply'], { env: environment, cwd: root });
    expect((await db.query('select count(*)::int as n from public.price_versions')).rows[0].n).toBe(versionsBefore + 1);
    expect(await privateStack.invariantViolations()).toEqual([]);
  });
});

// The maintained price dataset shipped in @pydantic/genai-prices (read from the
// installed package, no network), in the gateway's terms: integer micro-dollars
// per million tokens per bucket, one long-context tier at most, dated changes.
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { findProvider, type ConditionalPrice, type MatchLogic, type ModelInfo, type ModelPrice, type TieredPrices } from '@pydantic/genai-prices';
import { microPerMillion } from './micro-units.ts';

/** The installed dataset's version (its package.json is not exported: read beside its entry). */
export const datasetVersion: string = (JSON.parse(
  readFileSync(join(dirname(fileURLToPath(import.meta.resolve('@pydantic/genai-prices'))), '..', 'package.json'), 'utf8'),
) as { version: string }).version;

/** The dataset's price keys this gateway bills, and the bucket each becomes (web_searches_kcount, per thousand searches, too). Others (image output, file search…) are not billed here. */
const bucketOfKey: Record<string, string> = {
  input_mtok: 'input',
  cache_read_mtok: 'cached_input',
  cache_write_mtok: 'cache_write',
  cache_write_1h_mtok: 'cache_write_1h',
  output_mtok: 'output',
  input_audio_mtok: 'audio',
  input_image_mtok: 'image',
};

export type Rates = Record<string, number>;

/** One dated price of a model: ordinary rates, and the tier the whole request pays once its prompt passes `threshold`. */
export interface DatedCosts {
  /** null: in effect from the start. */
  effectiveFrom: string | null;
  costs: Rates;
  long: { threshold: number; costs: Rates } | null;
  /** Conversions that had to round up (finer than a micro-dollar per million). */
  inexact: string[];
  /** Price keys the gateway does not bill (hosted tool fees, image output…). */
  ignored: string[];
}

export interface DatasetModel {
  provider: string;
  id: string;
  name: string | undefined;
  contextWindow: number | undefined;
  /** Ids the dataset matches exactly besides its own (dated snapshots and the like). */
  exactIds: string[];
  prices: DatedCosts[];
  /** Why the model cannot be imported, if it cannot (a pricing shape this gateway does not bill). */
  unsupported: string | null;
}

const isTiered = (value: unknown): value is TieredPrices =>
  typeof value === 'object' && value !== null && 'base' in value && 'tiers' in value;

function convert(modelPrice: ModelPrice, effectiveFrom: string | null): DatedCosts | string {
  const costs: Rates = {};
  const longCosts: Rates = {};
  let threshold: number | null = null;
  const inexact: string[] = [];
  const ignored: string[] = [];
  const micro = (key: string, dollars: number) => {
    const converted = microPerMillion(dollars);
    if (!converted.exact) inexact.push(`${key} ${dollars}`);
    return converted.micro;
  };
  for (const [key, value] of Object.entries(modelPrice)) {
    if (value === undefined) continue;
    if (key === 'web_searches_kcount' && typeof value === 'number') {
      // Dollars per thousand searches → micro-dollars per search.
      const perThousand = micro(key, value);
      if (perThousand % 1000 !== 0) inexact.push(`${key} ${value}`);
      costs.web_search = Math.ceil(perThousand / 1000);
      continue;
    }
    const bucket = bucketOfKey[key];
    const modality = /^output_(image|audio|video)_mtok$/.exec(key)?.[1];
    if (modality) {
      // Output of that kind reaches this gateway as output tokens and would be billed at
      // the text output price (gemini-2.5-flash-image's images: $2.50 a million, not $30).
      return `answers in ${modality} (${key}), which this gateway would bill at the text output price`;
    }
    if (!bucket) {
      ignored.push(key);
      continue;
    }
    if (typeof value === 'number') {
      costs[bucket] = micro(key, value);
    } else if (isTiered(value)) {
      if (value.tiers.length > 1) return `${key} has ${value.tiers.length} tiers; one long-context tier is supported`;
      costs[bucket] = micro(key, value.base);
      const tier = value.tiers[0];
      if (tier) {
        if (threshold !== null && threshold !== tier.start) return `tiers start at different prompt sizes (${threshold}, ${tier.start})`;
        threshold = tier.start;
        longCosts[bucket] = micro(key, tier.price);
      }
    } else {
      return `${key} has a price shape this gateway does not read`;
    }
  }
  // Embedding models have no output price: the catalog says which models may lack one.
  if (costs.input === undefined) return 'no input price';
  return { effectiveFrom, costs, long: threshold === null ? null : { threshold, costs: longCosts }, inexact, ignored };
}

/**
 * Models that search the web on every request (OpenAI's chat search models,
 * `gpt-4o-mini-search-preview` and the like): OpenAI bills each search beyond
 * tokens, and a chat completion reports no count of them, so the price sheet
 * cannot bill them. The dataset lists some of their ids among a plain model's
 * own (gpt-4o-mini's), priced as its tokens alone: such an id is never that
 * model's alias, and nothing is priced for it.
 */
export function searchesOnEveryRequest(modelId: string): boolean {
  return /-search-(preview|api)(-|$)/i.test(modelId);
}

const searchingModel = 'searches the web on every request, billed per search beyond tokens, which a chat completion does not count';

function exactIds(match: MatchLogic): string[] {
  if ('equals' in match) return [match.equals];
  if ('or' in match) return match.or.flatMap(exactIds);
  return [];
}

function read(provider: string, model: ModelInfo): DatasetModel {
  const conditional = Array.isArray(model.prices) ? (model.prices as ConditionalPrice[]) : [{ prices: model.prices as ModelPrice }];
  const prices: DatedCosts[] = [];
  let unsupported: string | null = null;
  for (const entry of conditional) {
    const constraint = entry.constraint;
    if (constraint && constraint.type !== 'start_date') {
      unsupported = 'prices that change with the time of day';
      break;
    }
    const converted = convert(entry.prices, constraint?.start_date ?? null);
    if (typeof converted === 'string') {
      unsupported = converted;
      break;
    }
    prices.push(converted);
  }
  return {
    provider,
    id: model.id,
    name: model.name,
    contextWindow: model.context_window,
    exactIds: exactIds(model.match).filter((id) => id !== model.id && (!searchesOnEveryRequest(id) || searchesOnEveryRequest(model.id))),
    prices,
    unsupported: searchesOnEveryRequest(model.id) ? searchingModel : unsupported,
  };
}

/** Every model of the providers Tollgate speaks natively, as the dataset prices them. */
export function datasetModels(providers: readonly string[] = ['openai', 'anthropic', 'google']): DatasetModel[] {
  return providers.flatMap((id) => (findProvider({ providerId: id })?.models ?? []).map((model) => read(id, model)));
}

/** Does the dataset's match logic take this model id? (As the dataset itself decides, case-insensitively.) */
export function matches(match: MatchLogic, modelId: string): boolean {
  const id = modelId.toLowerCase();
  if ('or' in match) return match.or.some((inner) => matches(inner, modelId));
  if ('and' in match) return match.and.every((inner) => matches(inner, modelId));
  if ('equals' in match) return id === match.equals.toLowerCase();
  if ('starts_with' in match) return id.startsWith(match.starts_with.toLowerCase());
  if ('ends_with' in match) return id.endsWith(match.ends_with.toLowerCase());
  if ('contains' in match) return id.includes(match.contains.toLowerCase());
  if ('regex' in match) return new RegExp(match.regex).test(modelId);
  return false;
}

/** The dataset model that prices an upstream model id, if any (one that searches on every request cannot be imported). */
export function datasetModelFor(provider: string, upstreamModel: string): DatasetModel | undefined {
  const info = findProvider({ providerId: provider })?.models.find((model) => matches(model.match, upstreamModel));
  if (!info) return undefined;
  const model = read(provider, info);
  return searchesOnEveryRequest(upstreamModel) ? { ...model, unsupported: searchingModel } : model;
}

/** The dated price in effect at `at`: the last whose start has passed. */
export function costsAt(model: DatasetModel, at: Date): DatedCosts | undefined {
  let current: DatedCosts | undefined;
  for (const price of model.prices) if (!price.effectiveFrom || new Date(price.effectiveFrom) <= at) current = price;
  return current;
}

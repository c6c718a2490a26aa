import type { Context } from 'hono';
import type { AppEnv, ModelPrice } from '../app-env.ts';
import { GatewayError, refusalError, topUpOptions } from '../errors.ts';
import { clientIp, readKeyHash } from '../gateway/request-helpers.ts';

async function overview(c: Context<AppEnv>) {
  const { services } = c.var;
  const result = await services.ledger.keyOverview(await readKeyHash(c), clientIp(c));
  if (result.status === 'refused') throw refusalError(result);
  return result;
}

/** GET /v1/credits: the key's account. Amounts are micro-units (1 USD = 1,000,000). */
export async function credits(c: Context<AppEnv>): Promise<Response> {
  const { account, top_up_links: links } = await overview(c);
  const topUp = topUpOptions(links, account.id, c.var.services.config.TOPUP_URL);
  return c.json({
    object: 'credits',
    account_id: account.id,
    currency: 'usd',
    unit: 'micro',
    balance: account.balance,
    held: account.held,
    available: account.available,
    credit_limit: account.credit_limit,
    plan: account.plan,
    top_up_url: topUp.url ?? null,
    top_up_options: topUp.options,
  });
}

/** GET /v1/models: the models this key may use, aliases included, with their prices per 1M tokens in micro-units. */
export async function models(c: Context<AppEnv>): Promise<Response> {
  const [{ key }, list] = await Promise.all([overview(c), c.var.services.listModels()]);
  const allowed = key.allowed_models ? new Set(key.allowed_models) : null;
  const entry = (model: ModelPrice, id: string) => ({
    id,
    object: 'model',
    created: Math.floor(Date.parse(model.created_at) / 1000),
    owned_by: model.provider,
    ...(id === model.id ? {} : { alias_of: model.id }),
    max_output_tokens: model.max_output_tokens,
    pricing: {
      unit: 'micro-usd per 1M tokens',
      input: model.price_input,
      cached_input: model.price_cached_input ?? model.price_input,
      cache_write: model.price_cache_write ?? model.price_input,
      cache_write_1h: model.price_cache_write_1h ?? model.price_cache_write ?? model.price_input,
      output: model.price_output,
      reasoning: model.price_reasoning ?? model.price_output,
      ...(model.long_context_threshold
        ? { long_context: { above_prompt_tokens: model.long_context_threshold, ...model.long_context_price } }
        : {}),
      ...(model.price_web_search !== null && model.price_web_search !== undefined ? { web_search_per_call: model.price_web_search } : {}),
    },
  });
  const byId = new Map(list.models.map((model) => [model.id, model]));
  const data = [
    ...list.models.filter((model) => !allowed || allowed.has(model.id)).map((model) => entry(model, model.id)),
    ...list.aliases
      .filter(({ alias, model_id: modelId }) => byId.has(modelId) && (!allowed || allowed.has(alias) || allowed.has(modelId)))
      .map(({ alias, model_id: modelId }) => entry(byId.get(modelId)!, alias)),
  ];
  return c.json({ object: 'list', data });
}

export function notFound(): never {
  throw new GatewayError(404, 'not_found', 'There is no such route.');
}

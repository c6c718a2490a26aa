-- Local development data. `supabase db reset` runs this after the migrations;
-- `supabase db push` does not, so production price sheets are set by the operator.
--
-- Price sheet: list prices in USD micro-units per 1M tokens (1 USD = 1,000,000),
-- standard tier, short-context tier where a provider has two. Sources, read in
-- November 2026:
--   OpenAI     developers.openai.com/api/docs/models/* (per-model pages; gpt-4.1/4o
--              family as last published on platform.openai.com/docs/pricing)
--   Anthropic  platform.claude.com/docs/en/about-claude/pricing
--   Google     ai.google.dev/gemini-api/docs/pricing, as quoted by third-party copies
--              (the official page could not be read from here; check before selling)
-- cost_* is what the upstream charges us; price_* is what we charge: cost plus a 20%
-- margin, rounded up to a whole micro-unit. Reasoning tokens are priced as output.
-- OpenAI and Gemini report no cache writes for these models, so those stay null.

with sheet (id, provider, upstream_model, display_name, max_output_tokens,
            input, cached_input, cache_write, cache_write_1h, output) as (
  values
    -- OpenAI
    ('gpt-5',                  'openai', 'gpt-5',                  'GPT-5',                   128000, 1250000, 125000, null::bigint, null::bigint, 10000000),
    ('gpt-5-mini',             'openai', 'gpt-5-mini',             'GPT-5 mini',              128000,  250000,  25000, null, null,  2000000),
    ('gpt-5-nano',             'openai', 'gpt-5-nano',             'GPT-5 nano',              128000,   50000,   5000, null, null,   400000),
    ('gpt-4.1',                'openai', 'gpt-4.1',                'GPT-4.1',                  32768, 2000000, 500000, null, null,  8000000),
    ('gpt-4.1-mini',           'openai', 'gpt-4.1-mini',           'GPT-4.1 mini',             32768,  400000, 100000, null, null,  1600000),
    ('gpt-4.1-nano',           'openai', 'gpt-4.1-nano',           'GPT-4.1 nano',             32768,  100000,  25000, null, null,   400000),
    ('gpt-4o',                 'openai', 'gpt-4o',                 'GPT-4o',                   16384, 2500000, 1250000, null, null, 10000000),
    ('gpt-4o-mini',            'openai', 'gpt-4o-mini',            'GPT-4o mini',              16384,  150000,  75000, null, null,   600000),
    ('o4-mini',                'openai', 'o4-mini',                'o4-mini',                 100000, 1100000, 275000, null, null,  4400000),
    ('text-embedding-3-small', 'openai', 'text-embedding-3-small', 'text-embedding-3-small',       1,   20000,   null, null, null,        0),
    ('text-embedding-3-large', 'openai', 'text-embedding-3-large', 'text-embedding-3-large',       1,  130000,   null, null, null,        0),
    -- Anthropic (cache_write: 5-minute writes; cache_write_1h: 1-hour writes)
    ('claude-opus-4-5',        'anthropic', 'claude-opus-4-5',     'Claude Opus 4.5',          64000, 5000000, 500000, 6250000, 10000000, 25000000),
    ('claude-sonnet-4-5',      'anthropic', 'claude-sonnet-4-5',   'Claude Sonnet 4.5',        64000, 3000000, 300000, 3750000,  6000000, 15000000),
    ('claude-haiku-4-5',       'anthropic', 'claude-haiku-4-5',    'Claude Haiku 4.5',         64000, 1000000, 100000, 1250000,  2000000,  5000000),
    -- Google Gemini (paid tier, prompts up to 200K tokens; thinking priced as output)
    ('gemini-2.5-pro',         'google', 'gemini-2.5-pro',         'Gemini 2.5 Pro',           65536, 1250000, 125000, null, null, 10000000),
    ('gemini-2.5-flash',       'google', 'gemini-2.5-flash',       'Gemini 2.5 Flash',         65536,  300000,  30000, null, null,  2500000),
    ('gemini-2.5-flash-lite',  'google', 'gemini-2.5-flash-lite',  'Gemini 2.5 Flash-Lite',    65536,  100000,  10000, null, null,   400000),
    -- The local demo upstream (npm run dev): sold at $0.60 in, $2.40 out per 1M tokens.
    ('demo',                   'demo',   'demo',                   'Demo model (local)',        4096,  500000, 250000, null, null,  2000000)
)
insert into public.models (
  id, provider, upstream_model, display_name, max_output_tokens,
  cost_input, cost_cached_input, cost_cache_write, cost_cache_write_1h, cost_output,
  price_input, price_cached_input, price_cache_write, price_cache_write_1h, price_output
)
select
  id, provider, upstream_model, display_name, max_output_tokens,
  input, cached_input, cache_write, cache_write_1h, output,
  ceil(input * 1.2)::bigint, ceil(cached_input * 1.2)::bigint, ceil(cache_write * 1.2)::bigint,
  ceil(cache_write_1h * 1.2)::bigint, ceil(output * 1.2)::bigint
from sheet;

-- Gemini 2.5 Pro above 200k prompt tokens: input and cached input ×2, output ×1.5,
-- for the whole request.
update public.models
   set long_context_threshold = 200000,
       long_context_cost = '{"input": 2500000, "cached_input": 250000, "output": 15000000}',
       long_context_price = '{"input": 3000000, "cached_input": 300000, "output": 18000000}'
 where id = 'gemini-2.5-pro';

-- A model that is listed but has no price yet: requests for it are refused.
insert into public.models (id, provider, upstream_model, display_name, max_output_tokens)
values ('unpriced-preview', 'openai', 'unpriced-preview', 'Listed without a price', 4096);

-- New local accounts start with $5 of credit.
update public.billing_settings set signup_credits = 5000000, updated_at = now();

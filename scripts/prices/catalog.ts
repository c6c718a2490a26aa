// The models the seed prices from the dataset: current OpenAI, Anthropic and
// Google models, the default models of Claude Code, Codex CLI and Gemini CLI
// among them. `dataset` is the dataset's model id when it differs; the output
// cap is ours (the dataset has context windows, not output limits).

export interface CatalogEntry {
  id: string;
  provider: 'openai' | 'anthropic' | 'google';
  displayName: string;
  maxOutputTokens: number;
  dataset?: string;
  /** An embedding model: no output to price. */
  outputless?: boolean;
}

export const catalog: CatalogEntry[] = [
  // OpenAI. gpt-6-sol stands in for Codex CLI's default, gpt-6.2-sol (see aliases).
  { id: 'gpt-6-sol', provider: 'openai', displayName: 'GPT-6 Sol', maxOutputTokens: 128_000 },
  { id: 'gpt-6-luna', provider: 'openai', displayName: 'GPT-6 Luna', maxOutputTokens: 128_000 },
  { id: 'gpt-5.5', provider: 'openai', displayName: 'GPT-5.5', maxOutputTokens: 128_000 },
  { id: 'gpt-5', provider: 'openai', displayName: 'GPT-5', maxOutputTokens: 128_000 },
  { id: 'gpt-5-mini', provider: 'openai', displayName: 'GPT-5 mini', maxOutputTokens: 128_000 },
  { id: 'gpt-5-nano', provider: 'openai', displayName: 'GPT-5 nano', maxOutputTokens: 128_000 },
  { id: 'gpt-4.1', provider: 'openai', displayName: 'GPT-4.1', maxOutputTokens: 32_768 },
  { id: 'gpt-4.1-mini', provider: 'openai', displayName: 'GPT-4.1 mini', maxOutputTokens: 32_768 },
  { id: 'gpt-4o', provider: 'openai', displayName: 'GPT-4o', maxOutputTokens: 16_384 },
  { id: 'gpt-4o-mini', provider: 'openai', displayName: 'GPT-4o mini', maxOutputTokens: 16_384 },
  { id: 'o4-mini', provider: 'openai', displayName: 'o4-mini', maxOutputTokens: 100_000 },
  { id: 'text-embedding-3-small', provider: 'openai', displayName: 'text-embedding-3-small', maxOutputTokens: 1, outputless: true },
  { id: 'text-embedding-3-large', provider: 'openai', displayName: 'text-embedding-3-large', maxOutputTokens: 1, outputless: true },
  // Anthropic: Claude Code's default is claude-opus-5-5 (before 2.1.332 or so, claude-opus-4-8).
  { id: 'claude-opus-5-5', provider: 'anthropic', displayName: 'Claude Opus 5.5', maxOutputTokens: 128_000 },
  { id: 'claude-opus-4-8', provider: 'anthropic', displayName: 'Claude Opus 4.8', maxOutputTokens: 64_000 },
  { id: 'claude-sonnet-4-6', provider: 'anthropic', displayName: 'Claude Sonnet 4.6', maxOutputTokens: 64_000 },
  { id: 'claude-haiku-4-5', provider: 'anthropic', displayName: 'Claude Haiku 4.5', maxOutputTokens: 64_000 },
  { id: 'claude-opus-4-5', provider: 'anthropic', displayName: 'Claude Opus 4.5', maxOutputTokens: 64_000 },
  { id: 'claude-sonnet-4-5', provider: 'anthropic', displayName: 'Claude Sonnet 4.5', maxOutputTokens: 64_000 },
  // Google: Gemini CLI routes with gemini-3.5-flash-lite, then answers with gemini-3.8-flash or gemini-3.1-pro-preview.
  { id: 'gemini-3.8-flash', provider: 'google', displayName: 'Gemini 3.8 Flash', maxOutputTokens: 65_536 },
  { id: 'gemini-3.5-flash-lite', provider: 'google', displayName: 'Gemini 3.5 Flash-Lite', maxOutputTokens: 65_536 },
  { id: 'gemini-3.5-flash', provider: 'google', displayName: 'Gemini 3.5 Flash', maxOutputTokens: 65_536 },
  { id: 'gemini-3.1-pro-preview', provider: 'google', displayName: 'Gemini 3.1 Pro (preview)', maxOutputTokens: 65_536 },
  { id: 'gemini-2.5-pro', provider: 'google', displayName: 'Gemini 2.5 Pro', maxOutputTokens: 65_536 },
  { id: 'gemini-2.5-flash', provider: 'google', displayName: 'Gemini 2.5 Flash', maxOutputTokens: 65_536 },
  { id: 'gemini-2.5-flash-lite', provider: 'google', displayName: 'Gemini 2.5 Flash-Lite', maxOutputTokens: 65_536 },
];

/**
 * Models newer than the dataset, priced as another until it has them. Check
 * the provider's price before selling them: an alias bills the model it names.
 */
export const provisionalAliases: Array<{ alias: string; model: string }> = [
  { alias: 'gpt-6.2-sol', model: 'gpt-6-sol' },
];

import type { ChannelConfig, Config } from '../env.ts';

export type WireFormat = 'openai' | 'anthropic' | 'google';

/** The wire format each provider speaks; anything configured by base URL speaks OpenAI's. */
const providerFormats: Record<string, WireFormat> = {
  anthropic: 'anthropic',
  google: 'google',
};

export function providerFormat(provider: string): WireFormat {
  return providerFormats[provider] ?? 'openai';
}

/** The provider's channels when it speaks `format`, highest priority first; undefined otherwise. */
export function channelsFor(config: Config, provider: string, format: WireFormat): ChannelConfig[] | undefined {
  if (providerFormat(provider) !== format) return undefined;
  return config.channels.get(provider) ?? [];
}

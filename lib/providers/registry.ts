import type { Authorized } from '../billing/ledger.ts';
import type { ChannelConfig, Config } from '../env.ts';
import type { ProxyPlan } from '../gateway/proxy.ts';
import { anthropicChatPlan } from './anthropic/anthropic-chat-plan.ts';
import { geminiChatPlan } from './google/gemini-chat-plan.ts';
import { openAIChatPlan } from './openai/openai-chat-plan.ts';
import type { ChatCompletionRequest } from './openai/openai-wire.ts';

export type WireFormat = 'openai' | 'anthropic' | 'google';

const formatOfKind: Record<ChannelConfig['kind'], WireFormat> = {
  openai: 'openai',
  'openai-compatible': 'openai',
  anthropic: 'anthropic',
  google: 'google',
};

/** The provider's channels, highest priority first. */
export function channelsOf(config: Config, provider: string): ChannelConfig[] {
  return config.channels.get(provider) ?? [];
}

/** The wire format a provider speaks: its channels' kind; OpenAI's when it has none. */
export function providerFormat(config: Config, provider: string): WireFormat {
  const kind = channelsOf(config, provider)[0]?.kind;
  return kind ? formatOfKind[kind] : 'openai';
}

/** The provider's channels when it speaks `format`; undefined when it does not. */
export function channelsFor(config: Config, provider: string, format: WireFormat): ChannelConfig[] | undefined {
  return providerFormat(config, provider) === format ? channelsOf(config, provider) : undefined;
}

/** An OpenAI-format chat request, sent in whatever format the model's provider speaks. */
export function chatPlanFor(config: Config, request: ChatCompletionRequest, authorization: Authorized): ProxyPlan {
  const provider = authorization.model.provider;
  const channels = channelsOf(config, provider);
  switch (providerFormat(config, provider)) {
    case 'anthropic':
      return anthropicChatPlan(request, authorization, channels);
    case 'google':
      return geminiChatPlan(request, authorization, channels);
    default:
      return openAIChatPlan(request, authorization, channels);
  }
}

import type { Authorized } from '../billing/ledger.ts';
import type { ChannelConfig, Config } from '../env.ts';
import { GatewayError } from '../errors.ts';
import type { ProxyPlan } from '../gateway/proxy.ts';
import { anthropicChatPlan } from './anthropic/anthropic-chat-plan.ts';
import { openAIToAnthropic } from './anthropic/openai-to-anthropic.ts';
import { geminiChatPlan } from './google/gemini-chat-plan.ts';
import { openAIToGemini } from './google/openai-to-gemini.ts';
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

/**
 * An OpenAI-format chat request in each other format, done before authorize: a
 * request a format cannot carry is refused for that format's models without a
 * hold. The model and the output bound are filled in once authorized.
 */
export interface ChatTranslations {
  bodies: Map<WireFormat, Record<string, unknown>>;
  refusals: Map<WireFormat, GatewayError>;
}

export function translateChat(request: ChatCompletionRequest): ChatTranslations {
  const translations: ChatTranslations = { bodies: new Map(), refusals: new Map() };
  const translators: Array<[WireFormat, () => Record<string, unknown>]> = [
    ['anthropic', () => openAIToAnthropic(request, '', 1)],
    ['google', () => openAIToGemini(request, 1)],
  ];
  for (const [format, translate] of translators) {
    try {
      translations.bodies.set(format, translate());
    } catch (error) {
      translations.refusals.set(
        format,
        error instanceof GatewayError ? error : new GatewayError(400, 'invalid_request', (error as Error).message, { param: 'messages' }),
      );
    }
  }
  return translations;
}

/** The providers whose format can carry the request; undefined when every one can. */
export function providersForChat(config: Config, translations: ChatTranslations): string[] | undefined {
  if (translations.refusals.size === 0) return undefined;
  return [...config.channels.keys()].filter((provider) => !translations.refusals.has(providerFormat(config, provider)));
}

/** An OpenAI-format chat request, sent in whatever format the model's provider speaks. */
export function chatPlanFor(config: Config, request: ChatCompletionRequest, authorization: Authorized, translations: ChatTranslations): ProxyPlan {
  const provider = authorization.model.provider;
  const channels = channelsOf(config, provider);
  const format = providerFormat(config, provider);
  const body = translations.bodies.get(format);
  switch (format) {
    case 'anthropic':
      return anthropicChatPlan(request, authorization, channels, body!);
    case 'google':
      return geminiChatPlan(request, authorization, channels, body!);
    default:
      return openAIChatPlan(request, authorization, channels);
  }
}

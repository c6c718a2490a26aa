import { z } from 'zod';

// Minimal wire schemas for Anthropic's Messages API: only the fields read here.

// Only what billing needs is checked: the model, the output cap, that there are
// messages. Roles, content and block types are the upstream's to judge (Claude
// Code sends `system` messages inside `messages` under a beta); whatever they
// hold still counts, byte for byte, in the hold's bound.
export const messagesRequestSchema = z.looseObject({
  model: z.string().min(1).max(128),
  max_tokens: z.number().int().min(1).max(10_000_000),
  messages: z.array(z.looseObject({ role: z.unknown().optional(), content: z.unknown().optional() })).min(1),
  system: z.unknown().optional(),
  stream: z.boolean().nullish(),
  tools: z.array(z.unknown()).nullish(),
});

export type MessagesRequest = z.infer<typeof messagesRequestSchema>;

const anthropicCountsSchema = {
  input_tokens: z.number().int().nullish(),
  output_tokens: z.number().int().nullish(),
  cache_creation_input_tokens: z.number().int().nullish(),
  cache_read_input_tokens: z.number().int().nullish(),
  cache_creation: z
    .looseObject({
      ephemeral_5m_input_tokens: z.number().int().nullish(),
      ephemeral_1h_input_tokens: z.number().int().nullish(),
    })
    .nullish(),
  output_tokens_details: z.looseObject({ thinking_tokens: z.number().int().nullish() }).nullish(),
};

/** One sampling pass of a request with server-side compaction (`usage.iterations`, type "compaction" or "message"). */
export const anthropicIterationUsageSchema = z.looseObject({ type: z.string().nullish(), ...anthropicCountsSchema });

export type AnthropicIterationUsage = z.infer<typeof anthropicIterationUsageSchema>;

export const anthropicUsageSchema = z.looseObject({
  ...anthropicCountsSchema,
  server_tool_use: z.looseObject({ web_search_requests: z.number().int().nullish() }).nullish(),
  iterations: z.array(anthropicIterationUsageSchema).nullish(),
});

export type AnthropicUsage = z.infer<typeof anthropicUsageSchema>;

const contentBlockSchema = z.looseObject({
  type: z.string(),
  text: z.string().nullish(),
  thinking: z.string().nullish(),
  signature: z.string().nullish(),
  data: z.string().nullish(),
  id: z.string().nullish(),
  name: z.string().nullish(),
  input: z.unknown().optional(),
});

export const anthropicMessageSchema = z.looseObject({
  id: z.string().nullish(),
  model: z.string().nullish(),
  content: z.array(contentBlockSchema).nullish(),
  stop_reason: z.string().nullish(),
  usage: anthropicUsageSchema.nullish(),
});

export type AnthropicMessage = z.infer<typeof anthropicMessageSchema>;

export const anthropicStreamEventSchema = z.looseObject({
  type: z.string(),
  message: anthropicMessageSchema.nullish(),
  index: z.number().int().nullish(),
  content_block: contentBlockSchema.nullish(),
  delta: z
    .looseObject({
      type: z.string().nullish(),
      text: z.string().nullish(),
      partial_json: z.string().nullish(),
      thinking: z.string().nullish(),
      signature: z.string().nullish(),
      stop_reason: z.string().nullish(),
    })
    .nullish(),
  usage: anthropicUsageSchema.nullish(),
  error: z.looseObject({ type: z.string().nullish(), message: z.string().nullish() }).nullish(),
});

export type AnthropicStreamEvent = z.infer<typeof anthropicStreamEventSchema>;

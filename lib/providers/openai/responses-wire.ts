import { z } from 'zod';

// The Responses API, minimally: what billing reads. Input items, tools and every
// other field pass through untouched (Codex sends additional_tools items,
// namespace and custom tools, reasoning.context, client_metadata, …).

export const responsesRequestSchema = z.looseObject({
  model: z.string().min(1).max(128),
  input: z.unknown().optional(),
  instructions: z.unknown().optional(),
  max_output_tokens: z.number().int().min(1).max(10_000_000).nullish(),
  stream: z.boolean().nullish(),
  tools: z.array(z.unknown()).nullish(),
  previous_response_id: z.string().nullish(),
});

export type ResponsesRequest = z.infer<typeof responsesRequestSchema>;

export const responsesUsageSchema = z.looseObject({
  input_tokens: z.number().int().nullish(),
  input_tokens_details: z.looseObject({ cached_tokens: z.number().int().nullish(), cache_write_tokens: z.number().int().nullish() }).nullish(),
  output_tokens: z.number().int().nullish(),
  output_tokens_details: z.looseObject({ reasoning_tokens: z.number().int().nullish() }).nullish(),
});

export type ResponsesUsage = z.infer<typeof responsesUsageSchema>;

const outputItemSchema = z.looseObject({
  type: z.string(),
  content: z.array(z.looseObject({ type: z.string(), text: z.string().nullish(), refusal: z.string().nullish() })).nullish(),
  summary: z.array(z.looseObject({ text: z.string().nullish() })).nullish(),
  name: z.string().nullish(),
  arguments: z.string().nullish(),
  input: z.string().nullish(),
});

export const responseObjectSchema = z.looseObject({
  id: z.string().nullish(),
  status: z.string().nullish(),
  output: z.array(outputItemSchema).nullish(),
  usage: responsesUsageSchema.nullish(),
});

export type ResponseObject = z.infer<typeof responseObjectSchema>;

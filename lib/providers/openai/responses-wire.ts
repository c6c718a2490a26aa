import { z } from 'zod';

// The Responses API, minimally: what billing reads. Input items, tools and every
// other field pass through untouched (Codex sends additional_tools items,
// namespace and custom tools, reasoning.context, client_metadata, …).

const isObject = (value: unknown) => typeof value === 'object' && value !== null && !Array.isArray(value);

export const responsesRequestSchema = z.looseObject({
  model: z.string().min(1).max(128),
  // A string, or a list of items (messages and others), each an object: that is what sizes the hold.
  input: z
    .unknown()
    .optional()
    .refine((input) => !Array.isArray(input) || input.every(isObject), 'a list input holds items, each an object (a message such as {"role": "user", "content": "…"}, or another input item), not strings or other values'),
  instructions: z.unknown().optional(),
  max_output_tokens: z.number().int().min(1).max(10_000_000).nullish(),
  stream: z.boolean().nullish(),
  tools: z.array(z.unknown()).nullish(),
  // Content stored upstream that the request adds to the prompt (held as content of unknown size).
  previous_response_id: z.string().nullish(),
  conversation: z.unknown().optional(),
  prompt: z.unknown().optional(),
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
  // Read only as an id to record (a string); anything else is not one, and the answer is billed all the same.
  id: z.unknown().optional(),
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

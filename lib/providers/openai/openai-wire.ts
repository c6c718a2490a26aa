import { z } from 'zod';

// Minimal wire schemas: only the fields the gateway reads. Everything else in a
// request passes through untouched (loose objects).

// Roles and content are the upstream's to judge; they only size the hold here.
const chatMessageSchema = z.looseObject({
  role: z.string().min(1),
  content: z.unknown().optional(),
  name: z.string().nullish(),
});

const outputLimit = z.number().int().min(1).max(10_000_000).nullish();

export const chatCompletionRequestSchema = z.looseObject({
  model: z.string().min(1).max(128),
  messages: z.array(chatMessageSchema).min(1),
  stream: z.boolean().nullish(),
  stream_options: z.looseObject({ include_usage: z.boolean().nullish() }).nullish(),
  max_tokens: outputLimit,
  max_completion_tokens: outputLimit,
  n: z.number().int().min(1).max(128).nullish(),
  tools: z.array(z.unknown()).nullish(),
});

export type ChatCompletionRequest = z.infer<typeof chatCompletionRequestSchema>;

export const embeddingRequestSchema = z.looseObject({
  model: z.string().min(1).max(128),
  input: z.union([
    z.string(),
    z.array(z.string()).min(1),
    z.array(z.number().int()).min(1),
    z.array(z.array(z.number().int()).min(1)).min(1),
  ]),
});

export type EmbeddingRequest = z.infer<typeof embeddingRequestSchema>;

export const openAIUsageSchema = z.looseObject({
  prompt_tokens: z.number().int().nullish(),
  completion_tokens: z.number().int().nullish(),
  total_tokens: z.number().int().nullish(),
  prompt_tokens_details: z
    .looseObject({
      cached_tokens: z.number().int().nullish(),
      audio_tokens: z.number().int().nullish(),
      cache_write_tokens: z.number().int().nullish(),
    })
    .nullish(),
  completion_tokens_details: z
    .looseObject({
      reasoning_tokens: z.number().int().nullish(),
      audio_tokens: z.number().int().nullish(),
    })
    .nullish(),
});

export type OpenAIUsage = z.infer<typeof openAIUsageSchema>;

const toolCallDeltaSchema = z.looseObject({
  function: z.looseObject({ name: z.string().nullish(), arguments: z.string().nullish() }).nullish(),
});

export const chatCompletionSchema = z.looseObject({
  choices: z
    .array(
      z.looseObject({
        message: z
          .looseObject({
            content: z.string().nullish(),
            refusal: z.string().nullish(),
            tool_calls: z.array(toolCallDeltaSchema).nullish(),
          })
          .nullish(),
      }),
    )
    .nullish(),
  usage: openAIUsageSchema.nullish(),
});

export const embeddingResponseSchema = z.looseObject({
  usage: openAIUsageSchema.nullish(),
});

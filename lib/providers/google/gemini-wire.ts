import { z } from 'zod';

// Minimal wire schemas for the Gemini API (generateContent): only the fields read here.

const partSchema = z.looseObject({
  text: z.string().nullish(),
  thought: z.boolean().nullish(),
  thoughtSignature: z.string().nullish(),
  inlineData: z.looseObject({ mimeType: z.string().nullish(), data: z.string().nullish() }).nullish(),
  functionCall: z.looseObject({ name: z.string().nullish(), args: z.unknown().optional() }).nullish(),
  functionResponse: z.looseObject({ name: z.string().nullish(), response: z.unknown().optional() }).nullish(),
});

const contentSchema = z.looseObject({ role: z.string().nullish(), parts: z.array(partSchema) });

export const generateContentRequestSchema = z.looseObject({
  contents: z.array(contentSchema).min(1),
  systemInstruction: z.looseObject({ parts: z.array(partSchema) }).nullish(),
  tools: z.array(z.unknown()).nullish(),
  generationConfig: z
    .looseObject({
      maxOutputTokens: z.number().int().min(1).max(10_000_000).nullish(),
      candidateCount: z.number().int().min(1).max(8).nullish(),
    })
    .nullish(),
});

export type GenerateContentRequest = z.infer<typeof generateContentRequestSchema>;

const modalityCountSchema = z.array(z.looseObject({ modality: z.string().nullish(), tokenCount: z.number().int().nullish() }));

export const usageMetadataSchema = z.looseObject({
  promptTokenCount: z.number().int().nullish(),
  cachedContentTokenCount: z.number().int().nullish(),
  candidatesTokenCount: z.number().int().nullish(),
  thoughtsTokenCount: z.number().int().nullish(),
  toolUsePromptTokenCount: z.number().int().nullish(),
  totalTokenCount: z.number().int().nullish(),
  promptTokensDetails: modalityCountSchema.nullish(),
  cacheTokensDetails: modalityCountSchema.nullish(),
});

export type UsageMetadata = z.infer<typeof usageMetadataSchema>;

export const generateContentResponseSchema = z.looseObject({
  candidates: z
    .array(
      z.looseObject({
        content: z.looseObject({ parts: z.array(partSchema).nullish() }).nullish(),
        finishReason: z.string().nullish(),
        groundingMetadata: z.looseObject({ webSearchQueries: z.array(z.unknown()).nullish() }).nullish(),
      }),
    )
    .nullish(),
  usageMetadata: usageMetadataSchema.nullish(),
  responseId: z.string().nullish(),
});

export type GenerateContentResponse = z.infer<typeof generateContentResponseSchema>;

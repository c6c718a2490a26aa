import { z } from 'zod';
import { camelCaseGeminiFields } from './camel-case-gemini-fields.ts';

// Minimal wire schemas for the Gemini API (generateContent): only the fields read here.

const mediaSchema = {
  inlineData: z.looseObject({ mimeType: z.string().nullish(), data: z.string().nullish() }).nullish(),
  // A Files API or YouTube URI: Google fetches it, so only its presence matters here.
  fileData: z.looseObject({}).nullish(),
};

const partSchema = z.looseObject({
  text: z.string().nullish(),
  thought: z.boolean().nullish(),
  thoughtSignature: z.string().nullish(),
  ...mediaSchema,
  functionCall: z.looseObject({ name: z.string().nullish(), args: z.unknown().optional() }).nullish(),
  functionResponse: z
    .looseObject({
      name: z.string().nullish(),
      response: z.unknown().optional(),
      // Media returned by a function (images, documents), read like a part's.
      parts: z.array(z.looseObject(mediaSchema)).nullish(),
    })
    .nullish(),
});

const contentSchema = z.looseObject({ role: z.string().nullish(), parts: z.array(partSchema) });

const camelCaseRequestSchema = z.looseObject({
  contents: z.array(contentSchema).min(1),
  systemInstruction: z.looseObject({ parts: z.array(partSchema) }).nullish(),
  tools: z.array(z.unknown()).nullish(),
  generationConfig: z
    .looseObject({
      maxOutputTokens: z.number().int().min(1).max(10_000_000).nullish(),
      candidateCount: z.number().int().min(1).max(8).nullish(),
    })
    .nullish(),
  // The name of content cached at Google (cachedContents/…), whose tokens count as the prompt's.
  cachedContent: z.string().nullish(),
});

/** A generateContent request, its field names in either spelling, read (and sent on) in camelCase. */
export const generateContentRequestSchema = z
  .looseObject({})
  .transform((body, context) => {
    const read = camelCaseGeminiFields(body);
    if ('body' in read) return read.body;
    const [first, second] = read.givenTwice.names;
    context.addIssue({ code: 'custom', path: read.givenTwice.path, input: body, message: `${first} and ${second} are one field spelled two ways; send it once.` });
    return z.NEVER;
  })
  .pipe(camelCaseRequestSchema);

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

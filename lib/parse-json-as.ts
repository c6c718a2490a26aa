import type { z } from 'zod';

/** A body parsed and checked against a schema; undefined when it is not JSON or not of that shape. Never throws. */
export function parseJsonAs<Schema extends z.ZodType>(schema: Schema, text: string): z.infer<Schema> | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return undefined;
  }
  const parsed = schema.safeParse(json);
  return parsed.success ? parsed.data : undefined;
}

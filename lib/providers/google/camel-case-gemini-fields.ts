/**
 * The objects of a generateContent request whose own field names billing reads,
 * and, under each, the fields that lead to more of them. A field not named here
 * is kept as sent, whatever lies inside it.
 */
interface Shape {
  readonly [field: string]: Shape;
}

const media: Shape = { inlineData: {}, fileData: {} };
const part: Shape = { ...media, functionResponse: { parts: media } };
const content: Shape = { parts: part };
const request: Shape = { contents: content, systemInstruction: content, generationConfig: {}, tools: {} };

const snakeCase = /^[a-z][a-z0-9]*(?:_[a-z0-9]+)+$/;

const camelCase = (name: string) => name.replace(/_([a-z0-9])/g, (_underscore, letter: string) => letter.toUpperCase());

const isRecord = (value: unknown): value is Record<string, unknown> => typeof value === 'object' && value !== null && !Array.isArray(value);

/** One field given in both spellings: where (in camelCase) and the two names it was given as. */
export class FieldGivenTwice {
  constructor(
    readonly path: (string | number)[],
    readonly names: [string, string],
  ) {}
}

function rewrite(object: Record<string, unknown>, shape: Shape, path: (string | number)[]): Record<string, unknown> {
  const fields: [string, unknown][] = [];
  const spelled = new Map<string, string>();
  for (const [name, value] of Object.entries(object)) {
    const camel = snakeCase.test(name) ? camelCase(name) : name;
    const earlier = spelled.get(camel);
    if (earlier !== undefined) throw new FieldGivenTwice([...path, camel], [earlier, name]);
    spelled.set(camel, name);
    const inner = Object.hasOwn(shape, camel) ? shape[camel] : undefined;
    fields.push([camel, inner ? descend(value, inner, [...path, camel]) : value]);
  }
  // fromEntries defines own properties: a field named "__proto__" stays a field.
  return Object.fromEntries(fields);
}

function descend(value: unknown, shape: Shape, path: (string | number)[]): unknown {
  if (isRecord(value)) return rewrite(value, shape, path);
  if (Array.isArray(value)) return value.map((item, index) => (isRecord(item) ? rewrite(item, shape, [...path, index]) : item));
  return value;
}

/**
 * Google's REST API takes each field name in either spelling, as proto JSON
 * does: lowerCamelCase or the proto's snake_case
 * (https://protobuf.dev/programming-guides/json/), and Google's own REST
 * examples write `system_instruction`, `generation_config`, `google_search`.
 * The request is read and sent on in camelCase, so billing sees every field
 * and a field the gateway adds (`generationConfig.maxOutputTokens`) is never
 * sent in both spellings. Only the field names of the objects billing reads are
 * renamed (the request, its contents and their parts, inline and file data,
 * function responses, `generationConfig`, each tool): what lies inside other
 * fields is user data (function arguments and responses, schemas) or goes to
 * Google as written, which reads either spelling there. A field given in both
 * spellings is returned as such, to be refused rather than guessed at.
 */
export function camelCaseGeminiFields(body: Record<string, unknown>): { body: Record<string, unknown> } | { givenTwice: FieldGivenTwice } {
  try {
    return { body: rewrite(body, request, []) };
  } catch (error) {
    if (error instanceof FieldGivenTwice) return { givenTwice: error };
    throw error;
  }
}

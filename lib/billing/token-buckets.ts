/**
 * The token buckets a request is billed by. They are disjoint: `input` excludes
 * cached input and cache writes, `output` excludes reasoning. Each provider's
 * usage converter maps its own counts onto these.
 */
export const tokenBuckets = [
  'input',
  'cached_input',
  'cache_write',
  'cache_write_1h',
  'output',
  'reasoning',
  'image',
  'audio',
  // Not tokens: hosted web searches, priced per search.
  'web_search',
] as const;

export type TokenBucket = (typeof tokenBuckets)[number];

export type TokenUsage = Partial<Record<TokenBucket, number>>;

/** Hex SHA-256 of an API key, as stored in api_keys.key_hash. Web Crypto only, so it runs on the edge. */
export async function hashApiKey(key: string): Promise<string> {
  const digest = await crypto.subtle.digest('SHA-256', new TextEncoder().encode(key));
  return Array.from(new Uint8Array(digest), (byte) => byte.toString(16).padStart(2, '0')).join('');
}

import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../lib/env.ts';

const base = { SUPABASE_URL: 'http://127.0.0.1:54321', SUPABASE_SERVICE_ROLE_KEY: 'key' };

describe('loadConfig', () => {
  it('names every missing or malformed variable', () => {
    expect(() => loadConfig({})).toThrow(ConfigError);
    expect(() => loadConfig({})).toThrow(/SUPABASE_URL.*SUPABASE_SERVICE_ROLE_KEY/);
    expect(() => loadConfig({ ...base, OPENAI_BASE_URL: 'not a url' })).toThrow(/OPENAI_BASE_URL/);
    expect(() => loadConfig({ ...base, UPSTREAM_CHANNELS: '{oops' })).toThrow(/UPSTREAM_CHANNELS: must be a JSON array/);
    expect(() => loadConfig({ ...base, UPSTREAM_CHANNELS: '[{"provider":"Bad Name","baseUrl":"http://x"}]' })).toThrow(/UPSTREAM_CHANNELS\.0\.provider/);
    expect(() => loadConfig({ ...base, MAX_BODY_BYTES: '-1' })).toThrow(/MAX_BODY_BYTES/);
  });

  it('orders each provider\'s channels by priority', () => {
    const config = loadConfig({
      ...base,
      OPENAI_API_KEY: 'sk-main',
      UPSTREAM_CHANNELS: JSON.stringify([
        { provider: 'openai', kind: 'openai', baseUrl: 'http://backup/v1', priority: -1 },
        { provider: 'openai', kind: 'openai', baseUrl: 'http://first/v1', priority: 5 },
        { provider: 'groq', baseUrl: 'http://groq/openai/v1', apiKey: 'gsk' },
      ]),
    });
    expect(config.channels.get('openai')?.map((channel) => channel.baseUrl)).toEqual(['http://first/v1', 'https://api.openai.com/v1', 'http://backup/v1']);
    expect(config.channels.get('groq')).toEqual([{ provider: 'groq', kind: 'openai-compatible', baseUrl: 'http://groq/openai/v1', apiKey: 'gsk', priority: 0 }]);
  });
});

import { afterAll, beforeAll } from 'vitest';
import { startLocalUpstash, type LocalUpstash } from '../../scripts/local-upstash.ts';
import { startFakeUpstream, type FakeUpstream } from './fake-upstream.ts';
import { startGateway, type Gateway } from './gateway.ts';

/**
 * For a test file of gateways with rate limits: a local Upstash endpoint (a
 * real redis-server) and a fake upstream, started before the file's tests and
 * stopped after them, with every gateway `gatewayWith` started. `defaults` is
 * the environment of each gateway beyond the upstream and Upstash; a test's
 * own environment goes over both. A gateway started otherwise is closed with
 * them once given to `closeAfter`.
 */
export function upstashGateways(defaults: () => Record<string, string> = () => ({})) {
  let upstash: LocalUpstash | undefined;
  let fake: FakeUpstream | undefined;
  const gateways: Gateway[] = [];
  beforeAll(async () => {
    upstash = await startLocalUpstash();
    fake = await startFakeUpstream();
  });
  afterAll(async () => {
    await Promise.all(gateways.map((gateway) => gateway.close()));
    await fake?.close();
    await upstash?.stop();
  });
  const setup = {
    get upstash(): LocalUpstash {
      if (!upstash) throw new Error('the local Upstash endpoint starts before the first test');
      return upstash;
    },
    get fake(): FakeUpstream {
      if (!fake) throw new Error('the fake upstream starts before the first test');
      return fake;
    },
    gatewayWith: async (environment: Record<string, string> = {}): Promise<Gateway> => {
      const gateway = await startGateway({
        OPENAI_BASE_URL: `${setup.fake.url}/v1`,
        UPSTASH_REDIS_REST_URL: setup.upstash.url,
        UPSTASH_REDIS_REST_TOKEN: setup.upstash.token,
        ...defaults(),
        ...environment,
      });
      gateways.push(gateway);
      return gateway;
    },
    closeAfter: (...started: Gateway[]): void => {
      gateways.push(...started);
    },
  };
  return setup;
}

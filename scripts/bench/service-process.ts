// The stand-ins for services that run on machines of their own in production,
// each in a process of its own for the load benchmarks, so that they do not
// share an event loop with the load generator, the fake upstream or each
// other: BENCH_SERVICE=router (Supabase's API gateway in front of PostgREST:
// BENCH_POSTGREST_URL, BENCH_ROUTER_KEYS as JSON) or upstash (the local
// Upstash endpoint and its redis-server; BENCH_UPSTASH_TOKEN). Prints its port.
import { startSupabaseRouter, type RouterKeys } from '../local-supabase/router.ts';
import { startLocalUpstash } from '../local-upstash.ts';

const service = process.env.BENCH_SERVICE;
let stop: () => Promise<void>;
let url: string;
if (service === 'router') {
  const router = await startSupabaseRouter({ port: 0, postgrestUrl: process.env.BENCH_POSTGREST_URL!, keys: JSON.parse(process.env.BENCH_ROUTER_KEYS!) as RouterKeys });
  ({ url } = router);
  stop = router.close;
} else if (service === 'upstash') {
  const upstash = await startLocalUpstash({ token: process.env.BENCH_UPSTASH_TOKEN! });
  ({ url } = upstash);
  stop = upstash.stop;
} else {
  throw new Error(`BENCH_SERVICE must be router or upstash, not ${service}`);
}
console.log(JSON.stringify({ port: Number(new URL(url).port) }));
process.on('SIGTERM', () => void stop().then(() => process.exit(0)));

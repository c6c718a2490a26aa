import pg from 'pg';
import { stack } from './supabase.ts';

/** Runs work in a transaction that is always rolled back, so nothing it does leaks to other tests. */
export async function inRolledBackTransaction<T>(work: (client: pg.Client) => Promise<T>): Promise<T> {
  const client = new pg.Client({ connectionString: stack.adminDatabaseUrl });
  await client.connect();
  try {
    await client.query('begin');
    return await work(client);
  } finally {
    await client.query('rollback');
    await client.end();
  }
}

/**
 * pg_net's objects, with its exact signatures (the local stack has no pg_net):
 * http_post queues a request and returns its id; responses appear in
 * net._http_response. Created inside a rolled-back transaction only, since
 * test files run at once against one database.
 */
export const pgNetStandIn = `
    create schema net;
    create table net.http_request_queue (id bigserial primary key, method text not null, url text not null, headers jsonb not null,
      body bytea, timeout_milliseconds integer not null);
    create unlogged table net._http_response (id bigint, status_code integer, content_type text, headers jsonb, content text,
      timed_out boolean, error_msg text, created timestamptz not null default now());
    create function net.http_post(url text, body jsonb default '{}'::jsonb, params jsonb default '{}'::jsonb,
      headers jsonb default '{"Content-Type": "application/json"}'::jsonb, timeout_milliseconds integer default 5000)
    returns bigint language sql security definer as $$
      insert into net.http_request_queue (method, url, headers, body, timeout_milliseconds)
      values ('POST', url, headers, convert_to(body::text, 'UTF8'), timeout_milliseconds) returning id
    $$;
    -- As Supabase grants them.
    grant usage on schema net to postgres, anon, authenticated, service_role;
    grant execute on function net.http_post(text, jsonb, jsonb, jsonb, integer) to postgres, anon, authenticated, service_role;
    grant select on net._http_response to postgres;`;

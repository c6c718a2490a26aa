-- A key revoked anywhere in the database tells Redis, through pg_net.
--
-- A request that adopts a hold taken ahead is not authorized again in the
-- database: what refuses it at once is a revocation mark in Redis, which its
-- rate-limit script call reads (lib/gateway/rate-limits.ts). The gateway's
-- revocation route writes that mark, but a key can be revoked without it:
-- revoke_api_key called from another client, a member removed from an
-- organisation (remove_member revokes their keys), plain SQL. Those reached a
-- hold already taken only when its window ended.
--
-- Now every revocation (revoked_at going from null to a time) queues the same
-- mark for Upstash's REST API with pg_net's net.http_post, where pg_net is
-- installed and private.redis_relay holds Upstash's URL and token. pg_net sends
-- it after the transaction commits, from its own worker, so nothing waits for
-- it and a rolled-back revocation sends nothing. Without pg_net or without the
-- row nothing is queued, and revocations work as before.
--
-- The mark's name must be the gateway's: `tollgate:rl:{<account id>}:revoked:<key id>`
-- (the account as the hash tag), kept 5 minutes (300,000 ms), as the route
-- writes it (tests/supabase/revocation-relay.test.ts compares the two).

create table private.redis_relay (
  id boolean primary key default true check (id),
  url text not null check (url ~ '^https?://'),
  token text not null check (token <> ''),
  updated_at timestamptz not null default now()
);
comment on table private.redis_relay is
  'Upstash REST URL and token the database sends revocation marks to (one row; private: never exposed through PostgREST).';
revoke all on private.redis_relay from public, anon, authenticated;

create function private.relay_revocation()
returns trigger
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_relay private.redis_relay;
begin
  if to_regprocedure('net.http_post(text, jsonb, jsonb, jsonb, integer)') is null then
    return null;
  end if;
  select * into v_relay from private.redis_relay;
  if not found then
    return null;
  end if;
  perform net.http_post(
    url := v_relay.url,
    body := jsonb_build_array('set', 'tollgate:rl:{' || new.account_id || '}:revoked:' || new.id, '1', 'px', '300000'),
    headers := jsonb_build_object('Authorization', 'Bearer ' || v_relay.token, 'Content-Type', 'application/json'),
    timeout_milliseconds := 5000
  );
  return null;
end;
$$;
revoke all on function private.relay_revocation() from public;

create trigger api_keys_revocation_relayed
  after update of revoked_at on public.api_keys
  for each row
  when (old.revoked_at is null and new.revoked_at is not null)
  execute function private.relay_revocation();

-- A revocation never depends on its relay to Redis.
--
-- private.relay_revocation (20261129000400) runs inside the transaction that
-- revokes the key. An error from net.http_post (some pg_net versions raise
-- when their worker is down) would have rolled the revocation itself back:
-- revoke_api_key or remove_member failing because Redis could not be told.
-- Now such an error becomes a warning and the revocation stands; a mark that
-- is not sent leaves the key to the database's own check, which a hold taken
-- ahead before the revocation meets at the end of its window at the latest.
--
-- Redefined whole; what changed: the call to net.http_post is in a block that
-- turns any error into a warning. Everything else is as in 20261129000400.

create or replace function private.relay_revocation()
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
  begin
    perform net.http_post(
      url := v_relay.url,
      body := jsonb_build_array('set', 'tollgate:rl:{' || new.account_id || '}:revoked:' || new.id, '1', 'px', '300000'),
      headers := jsonb_build_object('Authorization', 'Bearer ' || v_relay.token, 'Content-Type', 'application/json'),
      timeout_milliseconds := 5000
    );
  exception when others then
    raise warning 'revocation of key % not relayed to Redis: %', new.id, sqlerrm;
  end;
  return null;
end;
$$;

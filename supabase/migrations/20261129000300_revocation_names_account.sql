-- revoke_api_key also answers the key's account.
--
-- The gateway's revocation route (POST /console/keys/{id}/revoke) calls this
-- function with the user's own session, then marks the key revoked in Redis,
-- under the account's hash tag (every rate-limit key of an account lives on
-- one slot, and the script that reads the mark reads them together), so it
-- needs the key's account without another round trip. Instances check that
-- mark when a request adopts a hold taken ahead: such a request is not
-- authorized again in the database, so it would not see the revocation there.
--
-- Redefined whole; what changed: `account_id` in the answer. Who may revoke
-- (the owner of the key's account) and what it does are as in 20261123000200.

create or replace function public.revoke_api_key(p_key_id uuid)
returns jsonb
language plpgsql
security definer
set search_path = ''
as $$
declare
  v_row public.api_keys;
begin
  update public.api_keys k
     set revoked_at = coalesce(k.revoked_at, now())
    from public.accounts a
   where k.id = p_key_id and a.id = k.account_id and a.user_id = (select auth.uid())
  returning k.* into v_row;
  if not found then
    raise exception 'no such key' using errcode = 'PT404';
  end if;
  return jsonb_build_object('id', v_row.id, 'account_id', v_row.account_id, 'revoked_at', v_row.revoked_at);
end;
$$;

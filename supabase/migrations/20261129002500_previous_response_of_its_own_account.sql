-- A request continues only its own account's stored responses.
--
-- One operator key stores every customer's responses at OpenAI. GET
-- /v1/responses/{id} was limited to the account that created the response
-- (authorize_stored_response), but POST /v1/responses with a
-- previous_response_id was sent upstream as it came: a customer who had
-- another's response id continued that conversation, with its content. The
-- gateway now asks first whether the id is recorded as another account's, and
-- refuses it as OpenAI refuses an unknown one.
--
-- An id recorded for no account is let through: a response is recorded after
-- it is answered (off the request's path), so the next turn of a fast client
-- may come before its record does.

create function public.stored_response_elsewhere(p_key_hash text, p_response_id text)
returns boolean
language sql stable
security definer
set search_path = ''
as $$
  select exists (
    select 1 from public.stored_responses r
     where r.response_id = p_response_id
       and r.account_id is distinct from (select k.account_id from public.api_keys k where k.key_hash = p_key_hash))
$$;
revoke all on function public.stored_response_elsewhere(text, text) from public, anon, authenticated;
grant execute on function public.stored_response_elsewhere(text, text) to service_role;

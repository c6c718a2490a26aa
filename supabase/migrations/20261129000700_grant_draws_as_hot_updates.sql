-- A draw from a credit grant as a HOT update.
--
-- Every charge draws from the account's grants (private.draw_from_grants, from
-- the ledger's trigger): an update of credit_grants.remaining. The index the
-- draw reads its grants from, credit_grants_draw_idx, was partial on
-- `remaining > 0`, and PostgreSQL never makes an update of a column that an
-- index's predicate names a heap-only (HOT) one: every draw wrote a new entry in
-- each of the table's indexes, and with one account charged hundreds of times a
-- second its grant's index entries piled up until the next vacuum, each draw
-- stepping over them. The room 20261127001300 made on credit_grants' pages for
-- HOT updates went unused: none of 3,879 draws in a pgbench run was HOT.
--
-- Now the predicate names `used_up`, a stored column generated from
-- `remaining <= 0`, which changes once in a grant's life, when its last credit
-- is drawn; the draws before that one are HOT updates. The index holds the same
-- grants as before (remaining is never below 0: credit_grants_amounts).
--
-- Redefined whole; what changed: private.draw_from_grants reads `not g.used_up`
-- where it read `g.remaining > 0`, so that it still matches the index.
-- Everything else is as in 20261127000900.

alter table public.credit_grants add column used_up boolean generated always as (remaining <= 0) stored;
comment on column public.credit_grants.used_up is 'Nothing is left of this grant (remaining is 0).';

drop index public.credit_grants_draw_idx;
create index credit_grants_draw_idx on public.credit_grants (account_id, category desc, priority desc, expires_at nulls last, id)
  where not used_up and expired_at is null;

create or replace function private.draw_from_grants(p_account_id uuid, p_amount bigint, p_first text default null)
returns bigint
language plpgsql
set search_path = ''
as $$
declare
  v_drawn bigint;
begin
  -- One statement (plan cached by PL/pgSQL): each grant, in order, gives what the
  -- grants before it did not cover, up to what it has left. The account's lock
  -- (held by every caller) serializes the draws of one account.
  with ordered as (
    select g.id, g.remaining,
           sum(g.remaining) over (
             order by coalesce(p_first is not null and g.reference = p_first, false) desc,
                      g.category = 'promotional' desc, g.priority desc, g.expires_at nulls last, g.id
           ) - g.remaining as before
      from public.credit_grants g
     where g.account_id = p_account_id and not g.used_up and g.expired_at is null
  ), drawn as (
    update public.credit_grants g
       set remaining = g.remaining - least(o.remaining, p_amount - o.before)
      from ordered o
     where g.id = o.id and o.before < p_amount
    returning least(o.remaining, p_amount - o.before) as taken
  )
  select coalesce(sum(taken), 0)::bigint into v_drawn from drawn;
  return v_drawn;
end;
$$;
revoke all on function private.draw_from_grants(uuid, bigint, text) from public;

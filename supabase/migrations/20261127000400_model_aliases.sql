-- Model aliases: other ids for a priced model (dated snapshots such as
-- claude-sonnet-4-5-20250929, `-latest` names), kept by the operator. A request
-- for an alias is billed at its model's price; the upstream gets the id the
-- client sent, unless the alias names another (upstream_model).

create table public.model_aliases (
  alias text primary key,
  model_id text not null references public.models (id) on delete cascade,
  upstream_model text,
  created_at timestamptz not null default now(),
  constraint model_aliases_alias_format check (alias ~ '^[A-Za-z0-9][A-Za-z0-9._:/@-]{0,127}$')
);
comment on column public.model_aliases.upstream_model is 'What the upstream is sent; null: the alias itself, as the client sent it.';
create index model_aliases_model_id_idx on public.model_aliases (model_id);
alter table public.model_aliases enable row level security;

create policy "Anyone can read the aliases of enabled models."
  on public.model_aliases for select to anon, authenticated
  using (exists (select 1 from public.models m where m.id = model_id and m.enabled));

-- Which id the upstream is sent is the operator's routing: not for the API roles.
grant select (alias, model_id, created_at) on public.model_aliases to anon, authenticated;
grant select, insert, update, delete on public.model_aliases to service_role;

-- A model id and an alias are one namespace.
create function private.refuse_alias_shadowing_model()
returns trigger
language plpgsql
set search_path = ''
as $$
begin
  if exists (select 1 from public.models where id = new.alias) then
    raise exception 'alias % is already a model id', new.alias using errcode = '23505';
  end if;
  return new;
end;
$$;
revoke all on function private.refuse_alias_shadowing_model() from public;
create trigger model_aliases_not_a_model
  before insert or update of alias on public.model_aliases
  for each row execute function private.refuse_alias_shadowing_model();

-- Redefined: a model id first, else an alias of an enabled model, sent upstream
-- as the client named it unless the alias says otherwise.
create or replace function private.priced_model(p_model text)
returns public.models
language plpgsql stable
set search_path = ''
as $$
declare
  v_model public.models;
  v_model_id text;
  v_upstream text;
begin
  select * into v_model from public.models where id = p_model and enabled;
  if found then
    return v_model;
  end if;
  select a.model_id, coalesce(a.upstream_model, a.alias) into v_model_id, v_upstream
    from public.model_aliases a where a.alias = p_model;
  if found then
    select * into v_model from public.models where id = v_model_id and enabled;
    if found then
      v_model.upstream_model := v_upstream;
    end if;
  end if;
  return v_model;
end;
$$;

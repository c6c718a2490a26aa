-- The Supabase platform objects a hosted project has before its first migration:
-- roles, the `auth` schema with its helpers, the `extensions` schema and the
-- migration history schema. Run once, as the cluster's superuser (supabase_admin),
-- on a fresh cluster. Mirrors supabase/postgres init scripts and supabase/auth
-- migrations, limited to what this project's migrations and tests rely on.

-- Roles ---------------------------------------------------------------------
create role anon nologin noinherit;
create role authenticated nologin noinherit;
create role service_role nologin noinherit bypassrls;
alter role anon inherit;
alter role authenticated inherit;
alter role service_role inherit;

create role authenticator login noinherit password '{{authenticator_password}}';
grant anon, authenticated, service_role to authenticator;

-- `postgres` is the role migrations run as on Supabase: not a superuser.
create role postgres login createdb createrole replication bypassrls password '{{postgres_password}}';
grant anon, authenticated, service_role to postgres;

create role supabase_auth_admin login noinherit createrole password '{{auth_admin_password}}';

alter role anon set statement_timeout = '3s';
alter role authenticated set statement_timeout = '8s';
alter role authenticator set statement_timeout = '8s';
alter role authenticator set lock_timeout = '8s';

grant all on database postgres to postgres;
alter schema public owner to postgres;
grant usage on schema public to anon, authenticated, service_role;
alter role postgres set search_path to "$user", public, extensions;

-- New Supabase projects no longer grant new `public` objects to the API roles
-- automatically, so neither do we: every migration grants what it means to.
alter default privileges for role postgres in schema public
  revoke all on tables from anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  revoke all on sequences from anon, authenticated, service_role;
alter default privileges for role postgres in schema public
  revoke execute on functions from anon, authenticated, service_role;

-- Extensions ----------------------------------------------------------------
create schema extensions;
grant usage on schema extensions to postgres, anon, authenticated, service_role;
create extension if not exists pgcrypto with schema extensions;
create extension if not exists "uuid-ossp" with schema extensions;

-- auth ----------------------------------------------------------------------
create schema auth authorization supabase_admin;
grant usage on schema auth to postgres, anon, authenticated, service_role, supabase_auth_admin;
grant create on schema auth to supabase_auth_admin;

create table auth.users (
  instance_id uuid,
  id uuid primary key,
  aud varchar(255),
  role varchar(255),
  email varchar(255),
  encrypted_password varchar(255),
  email_confirmed_at timestamptz,
  phone text unique default null,
  phone_confirmed_at timestamptz,
  confirmed_at timestamptz generated always as (least(email_confirmed_at, phone_confirmed_at)) stored,
  raw_app_meta_data jsonb,
  raw_user_meta_data jsonb,
  is_super_admin boolean,
  created_at timestamptz default now(),
  updated_at timestamptz default now(),
  last_sign_in_at timestamptz,
  banned_until timestamptz,
  deleted_at timestamptz,
  is_sso_user boolean not null default false,
  is_anonymous boolean not null default false
);
alter table auth.users owner to supabase_auth_admin;
alter table auth.users enable row level security;
grant select, references, trigger on auth.users to postgres with grant option;
grant all on auth.users to service_role;

create function auth.uid() returns uuid
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.sub', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub')
  )::uuid
$$;

create function auth.role() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.role', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'role')
  )::text
$$;

create function auth.email() returns text
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim.email', true), ''),
    (nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'email')
  )::text
$$;

create function auth.jwt() returns jsonb
language sql stable
as $$
  select coalesce(
    nullif(current_setting('request.jwt.claim', true), ''),
    nullif(current_setting('request.jwt.claims', true), '')
  )::jsonb
$$;

grant execute on function auth.uid(), auth.role(), auth.email(), auth.jwt()
  to postgres, anon, authenticated, service_role;

-- Migration history, as the Supabase CLI records it --------------------------
create schema supabase_migrations authorization postgres;
create table supabase_migrations.schema_migrations (
  version text primary key,
  statements text[],
  name text
);
create table supabase_migrations.seed_files (
  path text primary key,
  hash text not null
);
alter table supabase_migrations.schema_migrations owner to postgres;
alter table supabase_migrations.seed_files owner to postgres;

-- pg_cron, where the server has it loaded (Debian's postgresql-15-cron in the CI
-- stage; on Supabase it is enabled from the dashboard). Migrations only schedule.
do $$
begin
  if exists (select 1 from pg_available_extensions where name = 'pg_cron')
     and current_setting('shared_preload_libraries', true) like '%pg_cron%' then
    create extension if not exists pg_cron;
    grant usage on schema cron to postgres;
    grant all privileges on all tables in schema cron to postgres;
    grant all privileges on all sequences in schema cron to postgres;
  end if;
end;
$$;

-- The role a Postgres source reads the platform database as when its spec names no `url_env`:
-- it logs in (the embedded server trusts its socket; a cluster gives it a password and sets
-- MLCYCLE_SOURCE_DATABASE_URL), reads the tables of this database's `public` schema (those made
-- later by the migrating user too) and writes nothing: every transaction of it is READ ONLY, it is
-- no superuser and holds no role that reads or runs server files (COPY ... TO PROGRAM, pg_read_file).
-- A platform user that may not create roles skips the role (a NOTICE); the source then needs
-- MLCYCLE_SOURCE_DATABASE_URL or `url_env`, and never falls back to the platform's own user.
DO $$
BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlcycle_source') THEN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = current_user AND (rolsuper OR rolcreaterole)) THEN
      RAISE NOTICE 'mlcycle_source not created: % may not create roles', current_user;
      RETURN;
    END IF;
    CREATE ROLE mlcycle_source LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS NOINHERIT;
    ALTER ROLE mlcycle_source SET default_transaction_read_only = on;
  END IF;
  EXECUTE format('GRANT CONNECT ON DATABASE %I TO mlcycle_source', current_database());
  GRANT USAGE ON SCHEMA public TO mlcycle_source;
  GRANT SELECT ON ALL TABLES IN SCHEMA public TO mlcycle_source;
  ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO mlcycle_source;
END
$$;

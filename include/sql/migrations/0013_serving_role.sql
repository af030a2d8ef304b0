-- MLflow's basic-auth app keeps its users in a schema of their own (pipelines/io/mlflow_auth.py).
CREATE SCHEMA IF NOT EXISTS mlflow_auth;

-- The serving path's database role (the ingress replicas: predict, /similar, the request log).
-- It reads the registry (MLflow's tables: the `champion` alias, model versions), the online
-- store and the vector spaces; it writes the request log and the embeddings it serves; it cannot
-- write MLflow's tables (an alias moved by a serving replica is refused), nor read the MLflow
-- users (schema mlflow_auth), nor create anything. NOLOGIN here: the platform gives it a password
-- and LOGIN at its start (`mlcycle db serving-role`), where that password is known.
-- A platform user that may not create roles (a managed database): an operator creates
-- `mlcycle_serving` (NOLOGIN) before the platform's first start, and the grants below apply.
DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlcycle_serving') THEN
        IF (SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user) THEN
            CREATE ROLE mlcycle_serving NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT;
        ELSE
            RAISE WARNING 'role mlcycle_serving is missing and % may not create it', current_user;
            RETURN;
        END IF;
    END IF;
    GRANT USAGE ON SCHEMA public, mlflow, vectors TO mlcycle_serving;
    GRANT SELECT ON ALL TABLES IN SCHEMA public, mlflow, vectors TO mlcycle_serving;
    GRANT INSERT ON inference_requests, request_log_dead_letters TO mlcycle_serving;
    GRANT USAGE ON SEQUENCE request_log_dead_letters_id_seq TO mlcycle_serving;
    GRANT INSERT, UPDATE ON ALL TABLES IN SCHEMA vectors TO mlcycle_serving;
    -- what the platform's role creates later: MLflow's tables (at its first use), Feast's online
    -- tables, one vector table per model version (the embed step)
    ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO mlcycle_serving;
    ALTER DEFAULT PRIVILEGES IN SCHEMA mlflow GRANT SELECT ON TABLES TO mlcycle_serving;
    ALTER DEFAULT PRIVILEGES IN SCHEMA vectors GRANT SELECT, INSERT, UPDATE ON TABLES TO mlcycle_serving;
END
$$;

-- MLflow (tracking + registry) and Optuna (studies) live in the platform database, each in a
-- schema of its own: both manage their tables with Alembic and would share `alembic_version`.
CREATE SCHEMA IF NOT EXISTS mlflow;
CREATE SCHEMA IF NOT EXISTS optuna;

-- Every change of a registered-model alias: who (which run and step), from which version to
-- which, when and why. Rows are only ever inserted.
CREATE TABLE IF NOT EXISTS alias_audit (
    id            bigserial   PRIMARY KEY,
    pipeline      text        NOT NULL,
    model_name    text        NOT NULL,
    alias         text        NOT NULL,
    from_version  integer,
    to_version    integer,
    actor         text        NOT NULL,
    run_id        text,
    reason        text        NOT NULL,
    changed_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS alias_audit_by_model ON alias_audit (model_name, changed_at DESC);

-- A step can end as skipped (a failed promotion gate).
ALTER TABLE step_runs DROP CONSTRAINT IF EXISTS step_runs_status_check;
ALTER TABLE step_runs ADD CONSTRAINT step_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'reused', 'skipped'));

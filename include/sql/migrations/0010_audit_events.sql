-- Who did what: one row per action on a pipeline, by a person (an Airflow user), a serving key, the
-- lifecycle itself, or a change made outside mlcycle (an alias moved in the MLflow UI). Rows are
-- only ever inserted. `alias_audit` keeps the alias trail of the registry; every row there has its
-- `alias` row here too.
CREATE TABLE IF NOT EXISTS audit_events (
    id          bigserial   PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    actor       text        NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
    actor_kind  text        NOT NULL CHECK (actor_kind IN ('user', 'key', 'lifecycle', 'external')),
    action      text        NOT NULL CHECK (action ~ '^[a-z][a-z_]{1,40}$'),
    pipeline    text        NOT NULL,
    version     integer,
    run_id      text,
    reason      text        NOT NULL DEFAULT '',
    detail      jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS audit_events_by_pipeline ON audit_events (pipeline, at DESC);

-- The platform's own tables. Versioned, applied once each, in order, under an advisory lock.
CREATE EXTENSION IF NOT EXISTS vector;

-- One row per step execution attempt of a lifecycle run: what it read and what it wrote.
CREATE TABLE IF NOT EXISTS step_runs (
    pipeline      text        NOT NULL,
    run_id        text        NOT NULL,
    step          text        NOT NULL,
    status        text        NOT NULL CHECK (status IN ('running', 'succeeded', 'failed', 'reused')),
    started_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    outputs       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    error         text,
    attempt       integer     NOT NULL DEFAULT 1,
    PRIMARY KEY (pipeline, run_id, step, attempt)
);
CREATE INDEX IF NOT EXISTS step_runs_by_pipeline ON step_runs (pipeline, started_at DESC);

-- Snapshots by content hash: the lineage from a run to the exact data it trained on.
CREATE TABLE IF NOT EXISTS dataset_snapshots (
    pipeline            text        NOT NULL,
    run_id              text        NOT NULL,
    content_hash        text        NOT NULL,
    rows                bigint      NOT NULL,
    schema_fingerprint  text        NOT NULL,
    uri                 text        NOT NULL,
    source              jsonb       NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, run_id)
);
CREATE INDEX IF NOT EXISTS dataset_snapshots_by_hash ON dataset_snapshots (content_hash);

-- Monitoring: figures of the serving champion per drift check (one row per metric, and per
-- feature for per-feature metrics), and each check's verdict.
CREATE TABLE IF NOT EXISTS model_performance_metrics (
    id             bigserial   PRIMARY KEY,
    pipeline       text        NOT NULL,
    model_version  integer     NOT NULL,
    run_id         text        NOT NULL,
    metric         text        NOT NULL,
    feature        text,
    value          double precision,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    rows           integer     NOT NULL,
    computed_at    timestamptz NOT NULL DEFAULT now(),
    UNIQUE NULLS NOT DISTINCT (pipeline, run_id, metric, feature)
);
CREATE INDEX IF NOT EXISTS model_performance_metrics_by_time
    ON model_performance_metrics (pipeline, model_version, metric, computed_at);

CREATE TABLE IF NOT EXISTS drift_checks (
    pipeline       text        NOT NULL,
    run_id         text        NOT NULL,
    model_version  integer,
    window_start   timestamptz NOT NULL,
    window_end     timestamptz NOT NULL,
    requests       integer     NOT NULL,
    status         text        NOT NULL
                   CHECK (status IN ('ok', 'drift', 'performance', 'insufficient_data')),
    retrain        boolean     NOT NULL,
    reasons        jsonb       NOT NULL DEFAULT '[]'::jsonb,
    report_uri     text,
    checked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, run_id)
);
CREATE INDEX IF NOT EXISTS drift_checks_retrain ON drift_checks (pipeline, checked_at) WHERE retrain;

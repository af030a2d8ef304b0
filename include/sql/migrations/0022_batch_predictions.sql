-- Batch predictions (`<pipeline>_batch`): one row per entity scored in a batch run, in the
-- endpoint's answer shape (score; a multiclass model's class and probabilities). A partition
-- replaces its own rows in one transaction (DELETE of (pipeline, run_id, partition), then COPY),
-- so a retried partition never doubles an entity; the key holds each entity once per run.
CREATE TABLE IF NOT EXISTS batch_predictions (
    pipeline      text             NOT NULL,
    run_id        text             NOT NULL,
    partition     integer          NOT NULL CHECK (partition >= 0),
    entity_id     text             NOT NULL,
    as_of         timestamptz      NOT NULL,
    version       integer          NOT NULL,
    score         double precision NOT NULL,
    class         text,
    probabilities jsonb,
    scored_at     timestamptz      NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, run_id, entity_id)
);
CREATE INDEX IF NOT EXISTS batch_predictions_partition ON batch_predictions (pipeline, run_id, partition);

-- One row per published batch run: its pinned version, as_of and summary. The newest
-- `published_at` of a pipeline is what `<pipeline>_predictions_latest` shows: publishing is one
-- UPDATE, so readers see the previous run or the new one, never half of one.
CREATE TABLE IF NOT EXISTS batch_runs (
    pipeline         text             NOT NULL,
    run_id           text             NOT NULL,
    version          integer          NOT NULL,
    as_of            timestamptz      NOT NULL,
    partitions       integer          NOT NULL,
    rows_scored      bigint           NOT NULL,
    rows_quarantined bigint           NOT NULL,
    seconds          double precision NOT NULL,
    outputs          jsonb            NOT NULL,
    published_at     timestamptz,
    PRIMARY KEY (pipeline, run_id)
);

-- The request log keeps every answer and never stops on a bad row.
-- * `position`: the instance's place in its request, so a request that names one entity twice
--   keeps both answers (the key was request, version, entity).
-- * `off_contract`: why a scored instance is outside the data contract (an unknown category under
--   `serving.unknown_categories: score`); NULL within it. Feedback never trains on such a row.
-- * `request_log_dead_letters`: rows the database refused when they were written, each alone, with
--   the reason; the rest of their batch is written. `row_json` is the row as JSON text (ASCII, with
--   any non-finite number or control character escaped), to inspect or replay by hand.
ALTER TABLE inference_requests ADD COLUMN IF NOT EXISTS position integer NOT NULL DEFAULT 0;
ALTER TABLE inference_requests ADD COLUMN IF NOT EXISTS off_contract text;
ALTER TABLE inference_requests DROP CONSTRAINT IF EXISTS inference_requests_pkey;
ALTER TABLE inference_requests ADD PRIMARY KEY (request_id, model_version, entity_id, position);

CREATE TABLE IF NOT EXISTS request_log_dead_letters (
    id          bigserial   PRIMARY KEY,
    pipeline    text        NOT NULL,
    request_id  text,
    entity_id   text,
    reason      text        NOT NULL,
    row_json    text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS request_log_dead_letters_by_time ON request_log_dead_letters (pipeline, failed_at);

-- Served predictions, written by the Ray Serve ingress off the hot path, in batches.
CREATE TABLE IF NOT EXISTS inference_requests (
    request_id     uuid        NOT NULL,
    pipeline       text        NOT NULL,
    model_version  integer     NOT NULL,
    entity_id      text        NOT NULL,
    features       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    score          double precision,
    latency_ms     double precision NOT NULL,
    status         text        NOT NULL CHECK (status IN ('ok', 'error')),
    error          text,
    shadow         boolean     NOT NULL DEFAULT false,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (request_id, model_version, entity_id)
);
CREATE INDEX IF NOT EXISTS inference_requests_by_time ON inference_requests (pipeline, created_at);
CREATE INDEX IF NOT EXISTS inference_requests_by_version ON inference_requests (pipeline, model_version, created_at);

-- Ground truth that arrives later, keyed by the request (or by entity and time).
CREATE TABLE IF NOT EXISTS labels (
    pipeline     text        NOT NULL,
    request_id   uuid,
    entity_id    text        NOT NULL,
    label        double precision NOT NULL,
    observed_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (pipeline, entity_id, observed_at)
);
CREATE INDEX IF NOT EXISTS labels_by_request ON labels (request_id);

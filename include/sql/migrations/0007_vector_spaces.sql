-- One pgvector space per model version (the `embed` step fills it, the serving ingress adds the
-- entities it scores): a table `vectors.<pipeline>_v<version>` of (entity_id, embedding) with its
-- own dimension and index, and one row here per space: its state, size, index and recall.
-- A space is `filling` (backfill and served writes), `indexing`, `ready` (similarity reads it when
-- its version is the champion), `retired` (its version was replaced; kept `embeddings.retain_hours`)
-- or `dropped` (its table is gone: a rolled-back challenger's, or a retired one past its time).
CREATE SCHEMA IF NOT EXISTS vectors;

CREATE TABLE IF NOT EXISTS vector_spaces (
    pipeline        text        NOT NULL,
    model_version   integer     NOT NULL,
    model_sha256    text        NOT NULL,   -- the version's ONNX model: a space is never reused for another
    table_name      text        NOT NULL,
    dimension       integer     NOT NULL CHECK (dimension > 0),
    distance        text        NOT NULL CHECK (distance IN ('cosine', 'l2', 'inner_product')),
    index_kind      text        NOT NULL CHECK (index_kind IN ('hnsw', 'ivfflat')),
    state           text        NOT NULL CHECK (state IN ('filling', 'indexing', 'ready', 'retired', 'dropped')),
    rows            bigint      NOT NULL DEFAULT 0,
    recall_at_10    double precision,
    run_id          text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    built_at        timestamptz,
    build_seconds   double precision,
    ready_at        timestamptz,
    retired_at      timestamptz,
    dropped_at      timestamptz,
    reason          text,
    PRIMARY KEY (pipeline, model_version)
);

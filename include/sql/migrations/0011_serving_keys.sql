-- Serving keys per pipeline (`mlcycle keys create|list|revoke`). A key is a 256-bit random secret
-- shown once; the table keeps its SHA-256 only (`hash`), never the key. A key opens the endpoints
-- of its `pipelines`; a revoked one (`revoked_at` set) is refused by every replica within its
-- reload interval. Rows are never deleted: the request log's `key_id` keeps naming them.
CREATE TABLE IF NOT EXISTS serving_keys (
    id          text        PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{12}$'),
    name        text        NOT NULL DEFAULT '',
    pipelines   text[]      NOT NULL CHECK (cardinality(pipelines) > 0),
    hash        text        NOT NULL UNIQUE CHECK (hash ~ '^[0-9a-f]{64}$'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    created_by  text        NOT NULL,
    revoked_at  timestamptz,
    revoked_by  text
);

-- Which key asked: a `serving_keys.id`, or `bootstrap` for a key of MLCYCLE_SERVING_API_KEYS.
ALTER TABLE inference_requests ADD COLUMN IF NOT EXISTS key_id text;

-- The sha256 of every model artifact a step writes (checkpoints, trial models, the exported model),
-- keyed by its storage key and checked before the artifact is read: a file swapped in the bucket is
-- refused. The digest lives in the platform database, which a bucket writer cannot change.
CREATE TABLE IF NOT EXISTS artifact_digests (
    key         text        PRIMARY KEY,
    sha256      text        NOT NULL,
    bytes       bigint      NOT NULL,
    written_at  timestamptz NOT NULL DEFAULT now()
);

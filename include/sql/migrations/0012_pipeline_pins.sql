-- A pin freezes a pipeline's champion: lifecycle runs still train and evaluate, and never move it.
-- One row per pinned pipeline (unpin deletes it); who pinned, when and why. The history of pins
-- and unpins is in `audit_events` (actions `pin`, `unpin`), written in the same transaction.
CREATE TABLE IF NOT EXISTS pipeline_pins (
    pipeline   text        PRIMARY KEY,
    pinned_by  text        NOT NULL CHECK (length(pinned_by) BETWEEN 1 AND 200),
    pinned_at  timestamptz NOT NULL DEFAULT now(),
    reason     text        NOT NULL CHECK (length(reason) BETWEEN 1 AND 2000),
    version    integer
);

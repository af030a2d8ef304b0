-- The request log partitioned by day (UTC) on `created_at`, so retention drops whole days
-- (`DROP TABLE` of a partition: no vacuum, no bloat) instead of deleting rows.
-- * The primary key gains `created_at` (a partitioned table's keys include the partition column).
--   A retried flush is still written once: the writer (serving/telemetry.py) skips a row whose
--   (request, version, entity, position) is already in the log.
-- * Day partitions `inference_requests_pYYYYMMDD` are made here for every day the log holds and 7
--   days ahead; the retention step (pipelines/steps/retention.py) keeps making them ahead and drops
--   them behind. `inference_requests_default` takes a row no day partition covers, so a write never
--   fails for lack of a partition; the retention step moves such rows into their day's partition.
-- * The rows are copied into the new table in this transaction (a long migration for a big log:
--   run it in a maintenance window).
LOCK TABLE inference_requests IN ACCESS EXCLUSIVE MODE;
ALTER TABLE inference_requests RENAME TO inference_requests_unpartitioned;
ALTER INDEX inference_requests_pkey RENAME TO inference_requests_unpartitioned_pkey;
ALTER INDEX inference_requests_by_time RENAME TO inference_requests_unpartitioned_by_time;
ALTER INDEX inference_requests_by_version RENAME TO inference_requests_unpartitioned_by_version;

CREATE TABLE inference_requests (
    LIKE inference_requests_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING STORAGE
) PARTITION BY RANGE (created_at);
ALTER TABLE inference_requests ADD PRIMARY KEY (request_id, model_version, entity_id, position, created_at);
CREATE INDEX inference_requests_by_time ON inference_requests (pipeline, created_at);
CREATE INDEX inference_requests_by_version ON inference_requests (pipeline, model_version, created_at);
CREATE TABLE inference_requests_default PARTITION OF inference_requests DEFAULT;

DO $$
DECLARE
    first_day date;
    day date;
BEGIN
    SELECT COALESCE(min((created_at AT TIME ZONE 'UTC')::date), (now() AT TIME ZONE 'UTC')::date)
        INTO first_day FROM inference_requests_unpartitioned;
    day := first_day;
    WHILE day <= (now() AT TIME ZONE 'UTC')::date + 7 LOOP
        EXECUTE format(
            'CREATE TABLE %I PARTITION OF inference_requests FOR VALUES FROM (%L) TO (%L)',
            'inference_requests_p' || to_char(day, 'YYYYMMDD'),
            day::timestamp AT TIME ZONE 'UTC',
            (day + 1)::timestamp AT TIME ZONE 'UTC'
        );
        day := day + 1;
    END LOOP;
END
$$;

INSERT INTO inference_requests SELECT * FROM inference_requests_unpartitioned;
DROP TABLE inference_requests_unpartitioned;

-- The grants of the table it replaces (0013, 0014); a partition is reached through its parent only.
DO $$
BEGIN
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlcycle_serving') THEN
        GRANT SELECT, INSERT ON inference_requests TO mlcycle_serving;
    END IF;
    IF EXISTS (SELECT FROM pg_roles WHERE rolname = 'mlcycle_source') THEN
        GRANT SELECT ON inference_requests TO mlcycle_source;
    END IF;
END
$$;

-- A run is started by hand once: its `trigger` event is written by whichever sees it first (the
-- platform API or `mlcycle run`, with how it came; or the scheduler's listener, for runs started
-- from Airflow's own UI or REST API), and the others' inserts do nothing.
CREATE UNIQUE INDEX IF NOT EXISTS audit_events_one_trigger_per_run
    ON audit_events (pipeline, run_id) WHERE action = 'trigger';

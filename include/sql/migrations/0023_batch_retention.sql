-- Retention of batch predictions (the `retention` step, MLCYCLE_RETENTION_BATCH_PREDICTIONS_DAYS):
-- a run's rows of `batch_predictions` go, its summary in `batch_runs` stays, marked with when.
ALTER TABLE batch_runs ADD COLUMN IF NOT EXISTS rows_removed_at timestamptz;

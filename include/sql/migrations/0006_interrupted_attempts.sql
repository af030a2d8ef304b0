-- An attempt whose process ended without recording its outcome (SIGKILL, out of memory, a lost
-- node) is marked `interrupted` by whoever sees it next: the operator that watched the process, or
-- the step's next attempt. A trial worker's attempts are its own (`worker`), so one worker's retry
-- never marks another's live attempt.
ALTER TABLE step_runs ADD COLUMN IF NOT EXISTS worker integer;
ALTER TABLE step_runs DROP CONSTRAINT IF EXISTS step_runs_status_check;
ALTER TABLE step_runs ADD CONSTRAINT step_runs_status_check
    CHECK (status IN ('running', 'succeeded', 'failed', 'reused', 'skipped', 'interrupted'));

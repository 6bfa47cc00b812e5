-- Retention (issue 18): finished tasks may be purged, the ledger never is; its rows keep the task id,
-- which therefore no longer references a task row.
ALTER TABLE ledger DROP CONSTRAINT ledger_task_id_fkey;
-- Retention finds old finished tasks by completion time.
CREATE INDEX tasks_completed ON tasks (completed_at) WHERE completed_at IS NOT NULL;

-- Keys made once per database and shared by every replica: `file_links` signs result file links.
CREATE TABLE signing_keys (
    name        TEXT PRIMARY KEY,
    secret      BYTEA NOT NULL,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Background jobs that one replica at a time runs (the retention purge): who holds it, until when.
CREATE TABLE job_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);

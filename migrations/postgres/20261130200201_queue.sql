-- The admission queue (issue 20): `queued` tasks wait (credits held) for room under their key's or
-- account's max_in_flight or their provider's submit window, and are dispatched from here.
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled', 'queued'));
CREATE INDEX tasks_queued ON tasks (account_id, id) WHERE status = 'queued';
-- Round robin across accounts: the account whose last dispatch is oldest goes first.
ALTER TABLE accounts ADD COLUMN last_dispatched_at TIMESTAMPTZ;
-- Recent submits per provider (`providers.<id>.max_submits`): a slot is reserved at admission
-- (`used` false) and used by the submit, whose time it then records. Rows older than the window go.
CREATE TABLE provider_submits (
    provider     TEXT NOT NULL,
    task_id      TEXT NOT NULL,
    used         BOOLEAN NOT NULL DEFAULT FALSE,
    submitted_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX provider_submits_window ON provider_submits (provider, submitted_at);
CREATE INDEX provider_submits_task ON provider_submits (task_id);

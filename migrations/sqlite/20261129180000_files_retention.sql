-- Retention (issue 18): finished tasks may be purged, the ledger never is; its rows keep the task id,
-- which therefore no longer references a task row. SQLite drops a foreign key by rebuilding the table.
CREATE TABLE ledger_new (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts (id),
    kind           TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'adjust')),
    amount         INTEGER NOT NULL CHECK (typeof(amount) = 'integer'),
    task_id        TEXT,
    balance_after  INTEGER NOT NULL CHECK (typeof(balance_after) = 'integer'),
    reason         TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CHECK ((kind IN ('hold', 'capture', 'release')) = (task_id IS NOT NULL))
);
INSERT INTO ledger_new (id, account_id, kind, amount, task_id, balance_after, reason, created_at)
    SELECT id, account_id, kind, amount, task_id, balance_after, reason, created_at FROM ledger;
DROP TABLE ledger;
ALTER TABLE ledger_new RENAME TO ledger;
CREATE UNIQUE INDEX ledger_task_kind ON ledger (task_id, kind) WHERE task_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_task_settled ON ledger (task_id) WHERE kind IN ('capture', 'release');
CREATE INDEX ledger_account ON ledger (account_id, id DESC);
CREATE INDEX tasks_completed ON tasks (completed_at) WHERE completed_at IS NOT NULL;

CREATE TABLE signing_keys (
    name        TEXT PRIMARY KEY,
    secret      BLOB NOT NULL,
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE job_leases (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);

-- The SQLite schema: the same tables, columns and rules as migrations/postgres (see the comments there),
-- in SQLite's types. Timestamps are RFC 3339 text in UTC (`2026-11-26T11:47:15.140+00:00`), the form
-- sqlx writes `DateTime<Utc>` in, so comparing them as text compares them in time. Amounts are
-- INTEGER and must stay integers: SQLite would turn an overflowing sum into an inexact REAL.

CREATE TABLE accounts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT NOT NULL,
    balance     INTEGER NOT NULL DEFAULT 0 CHECK (typeof(balance) = 'integer' AND balance >= 0),
    held        INTEGER NOT NULL DEFAULT 0 CHECK (typeof(held) = 'integer' AND held >= 0),
    created_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE api_keys (
    id                     TEXT PRIMARY KEY,
    account_id             INTEGER NOT NULL REFERENCES accounts (id),
    name                   TEXT,
    prefix                 TEXT NOT NULL,
    hash                   BLOB NOT NULL UNIQUE,
    created_at             TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    last_used_at           TEXT,
    expires_at             TEXT,
    revoked_at             TEXT,
    rate_limit_per_minute  INTEGER CHECK (rate_limit_per_minute > 0)
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE tasks (
    id                   TEXT PRIMARY KEY,
    account_id           INTEGER NOT NULL REFERENCES accounts (id),
    model                TEXT NOT NULL,
    sub_model            TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    input                TEXT NOT NULL,
    output               TEXT,
    error                TEXT,
    price                INTEGER NOT NULL CHECK (price >= 0),
    callback_url         TEXT,
    provider             TEXT NOT NULL,
    upstream_model       TEXT NOT NULL,
    upstream_id          TEXT,
    callback_token_hash  BLOB UNIQUE,
    attempts             INTEGER NOT NULL DEFAULT 0,
    next_poll_at         TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    deadline_at          TEXT NOT NULL,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    completed_at         TEXT,
    callback_at          TEXT
);
CREATE INDEX tasks_account_id ON tasks (account_id, id DESC);
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE status IN ('pending', 'running');

CREATE TABLE ledger (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    account_id     INTEGER NOT NULL REFERENCES accounts (id),
    kind           TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'adjust')),
    amount         INTEGER NOT NULL CHECK (typeof(amount) = 'integer'),
    task_id        TEXT REFERENCES tasks (id),
    balance_after  INTEGER NOT NULL CHECK (typeof(balance_after) = 'integer'),
    reason         TEXT,
    created_at     TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    CHECK ((kind IN ('hold', 'capture', 'release')) = (task_id IS NOT NULL))
);
CREATE UNIQUE INDEX ledger_task_kind ON ledger (task_id, kind) WHERE task_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_task_settled ON ledger (task_id) WHERE kind IN ('capture', 'release');
CREATE INDEX ledger_account ON ledger (account_id, id DESC);

CREATE TABLE simulated_jobs (
    id            TEXT PRIMARY KEY,
    task_id       TEXT NOT NULL UNIQUE,
    prompt        TEXT NOT NULL,
    aspect_ratio  TEXT NOT NULL,
    fails         BOOLEAN NOT NULL,
    due_at        TEXT NOT NULL,
    file_name     TEXT NOT NULL,
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE webhook_secrets (
    account_id           INTEGER PRIMARY KEY REFERENCES accounts (id),
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  TEXT,
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    rotated_at           TEXT,
    CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL))
);

CREATE TABLE webhook_deliveries (
    id               TEXT PRIMARY KEY,
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    account_id       INTEGER NOT NULL REFERENCES accounts (id),
    url              TEXT NOT NULL,
    webhook_id       TEXT NOT NULL,
    body             BLOB NOT NULL,
    trigger          TEXT NOT NULL CHECK (trigger IN ('settled', 'manual')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    created_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id, id);

CREATE TABLE webhook_attempts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id       TEXT NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at      TEXT NOT NULL,
    status_code       INTEGER,
    latency_ms        INTEGER NOT NULL,
    error             TEXT,
    response_excerpt  TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

CREATE TABLE idempotency_keys (
    account_id    INTEGER NOT NULL REFERENCES accounts (id),
    key           TEXT NOT NULL,
    request_hash  BLOB NOT NULL,
    task_id       TEXT NOT NULL REFERENCES tasks (id),
    created_at    TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    PRIMARY KEY (account_id, key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

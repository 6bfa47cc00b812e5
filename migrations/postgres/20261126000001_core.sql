-- Core schema: accounts, API keys, the credits ledger, tasks, the simulated provider's jobs.

CREATE TABLE accounts (
    id          BIGSERIAL PRIMARY KEY,
    name        TEXT NOT NULL,
    -- What the account can spend now. Always equal to the sum of its ledger amounts.
    balance     BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    -- What unfinished tasks have reserved: holds not yet captured or released.
    held        BIGINT NOT NULL DEFAULT 0 CHECK (held >= 0),
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id            TEXT PRIMARY KEY,
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    name          TEXT,
    -- The first characters of the key, for listings; the key itself is only stored as its SHA-256.
    prefix        TEXT NOT NULL,
    hash          BYTEA NOT NULL UNIQUE,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_used_at  TIMESTAMPTZ,
    expires_at    TIMESTAMPTZ,
    revoked_at    TIMESTAMPTZ
);
CREATE INDEX api_keys_account ON api_keys (account_id);

CREATE TABLE tasks (
    -- "C" collation: ids (task_ + ULID) then sort by creation time whatever the database's locale.
    id                   TEXT COLLATE "C" PRIMARY KEY,
    account_id           BIGINT NOT NULL REFERENCES accounts (id),
    model                TEXT NOT NULL,
    sub_model            TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'running', 'succeeded', 'failed')),
    input                JSONB NOT NULL,
    output               JSONB,
    error                JSONB,
    price                BIGINT NOT NULL CHECK (price >= 0),
    callback_url         TEXT,
    -- The serving route: provider id and the provider's own model name, and the provider's job id.
    provider             TEXT NOT NULL,
    upstream_model       TEXT NOT NULL,
    upstream_id          TEXT,
    -- Inbound provider callbacks carry a per-task token; only its hash is kept.
    callback_token_hash  BYTEA UNIQUE,
    -- Submit attempts while pending, polls while running: drive the backoff.
    attempts             INTEGER NOT NULL DEFAULT 0,
    -- When the engine should look at the task next. A worker that claims a task pushes this forward
    -- by its lease, so a worker that dies simply lets the task become due again.
    next_poll_at         TIMESTAMPTZ NOT NULL DEFAULT now(),
    deadline_at          TIMESTAMPTZ NOT NULL,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    completed_at         TIMESTAMPTZ
);
-- Usage log: an account's tasks, newest first (task ids sort by creation time).
CREATE INDEX tasks_account_id ON tasks (account_id, id DESC);
-- The engine's work queue: only unfinished tasks, by due time.
CREATE INDEX tasks_due ON tasks (next_poll_at) WHERE status IN ('pending', 'running');

CREATE TABLE ledger (
    id             BIGSERIAL PRIMARY KEY,
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    kind           TEXT NOT NULL CHECK (kind IN ('grant', 'hold', 'capture', 'release', 'adjust')),
    amount         BIGINT NOT NULL,
    task_id        TEXT REFERENCES tasks (id),
    balance_after  BIGINT NOT NULL,
    reason         TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((kind IN ('hold', 'capture', 'release')) = (task_id IS NOT NULL))
);
-- A task is held once, and captured or released once: the database refuses a second time.
CREATE UNIQUE INDEX ledger_task_kind ON ledger (task_id, kind) WHERE task_id IS NOT NULL;
CREATE UNIQUE INDEX ledger_task_settled ON ledger (task_id) WHERE kind IN ('capture', 'release');
CREATE INDEX ledger_account ON ledger (account_id, id DESC);

-- The simulated provider's own job table: it stands for an upstream service's state, so its jobs
-- outlive a gateway crash like a real provider's would.
CREATE TABLE simulated_jobs (
    id            TEXT PRIMARY KEY,
    -- The submitting task: a resubmit after a crash finds the same job instead of starting another.
    task_id       TEXT NOT NULL UNIQUE,
    prompt        TEXT NOT NULL,
    aspect_ratio  TEXT NOT NULL,
    fails         BOOLEAN NOT NULL,
    due_at        TIMESTAMPTZ NOT NULL,
    file_name     TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now()
);

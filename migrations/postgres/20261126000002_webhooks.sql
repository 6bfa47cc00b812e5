-- Outgoing webhooks (SPEC §4): each account's signing secret, the durable delivery queue, and every
-- attempt made.

-- One signing secret per account, created on first use. A rotation keeps the previous secret, which
-- still signs (next to the new one) until `previous_expires_at`. HMAC needs the secret itself, so it is
-- stored as is: treat this table like the credentials it holds.
CREATE TABLE webhook_secrets (
    account_id           BIGINT PRIMARY KEY REFERENCES accounts (id),
    -- `whsec_` + base64 of 32 random bytes.
    secret               TEXT NOT NULL,
    previous_secret      TEXT,
    previous_expires_at  TIMESTAMPTZ,
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    rotated_at           TIMESTAMPTZ,
    CHECK ((previous_secret IS NULL) = (previous_expires_at IS NULL))
);

-- One row per delivery of a task's terminal state to its callback_url: enqueued in the transaction that
-- settles the task (or by a manual retry), worked off by the delivery loop.
CREATE TABLE webhook_deliveries (
    -- dlv_ + ULID. "C" collation: sorts by creation time.
    id               TEXT COLLATE "C" PRIMARY KEY,
    task_id          TEXT NOT NULL REFERENCES tasks (id),
    account_id       BIGINT NOT NULL REFERENCES accounts (id),
    url              TEXT NOT NULL,
    -- The `webhook-id` header: msg_ + ULID, one per event, the same on every attempt and on manual
    -- retries of the same event, so receivers can use it to deduplicate.
    webhook_id       TEXT NOT NULL,
    -- The exact JSON bytes sent, frozen when the delivery is enqueued: every attempt signs the same body.
    body             BYTEA NOT NULL,
    -- `settled`: the task reached a terminal state; `manual`: POST …/deliveries/retry.
    trigger          TEXT NOT NULL CHECK (trigger IN ('settled', 'manual')),
    status           TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'dead')),
    attempts         INTEGER NOT NULL DEFAULT 0,
    -- When the next attempt is due. A worker that claims the delivery pushes this forward by its lease,
    -- so a worker that dies simply lets it become due again.
    next_attempt_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
-- The delivery loop's work queue: only pending deliveries, by due time.
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_task ON webhook_deliveries (task_id, id);

CREATE TABLE webhook_attempts (
    id                BIGSERIAL PRIMARY KEY,
    delivery_id       TEXT COLLATE "C" NOT NULL REFERENCES webhook_deliveries (id),
    attempted_at      TIMESTAMPTZ NOT NULL,
    -- NULL when no HTTP answer came (refused by the guard, connection error, timeout).
    status_code       INTEGER,
    latency_ms        INTEGER NOT NULL,
    error             TEXT,
    -- The first 2 KiB of the answer's body.
    response_excerpt  TEXT
);
CREATE INDEX webhook_attempts_delivery ON webhook_attempts (delivery_id, id);

-- Idempotency keys (SPEC §2.1): the first task created with a key, per account, for 24 hours.
-- Inserted in the same transaction as the task and its hold, so two racing requests with one key
-- produce one task and one hold.
CREATE TABLE idempotency_keys (
    account_id    BIGINT NOT NULL REFERENCES accounts (id),
    key           TEXT NOT NULL,
    -- SHA-256 of the validated request (model, input with defaults, callback URL), not of raw bytes.
    request_hash  BYTEA NOT NULL,
    task_id       TEXT COLLATE "C" NOT NULL REFERENCES tasks (id),
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (account_id, key)
);
-- Purging keys older than 24 hours.
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);

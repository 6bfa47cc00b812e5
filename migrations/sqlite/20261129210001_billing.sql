-- Top-up (issue 21): the same change as migrations/postgres/20261129210001_billing.sql.

ALTER TABLE accounts ADD COLUMN credits_owed INTEGER NOT NULL DEFAULT 0
    CHECK (typeof(credits_owed) = 'integer' AND credits_owed >= 0);
ALTER TABLE accounts ADD COLUMN billing_flagged_at TEXT;

CREATE TABLE orders (
    id                   TEXT PRIMARY KEY,
    account_id           INTEGER NOT NULL REFERENCES accounts (id),
    package_id           TEXT NOT NULL,
    credits              INTEGER NOT NULL CHECK (typeof(credits) = 'integer' AND credits > 0),
    amount               INTEGER NOT NULL CHECK (typeof(amount) = 'integer' AND amount > 0),
    currency             TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'expired', 'refunded')),
    checkout_session_id  TEXT UNIQUE,
    checkout_url         TEXT,
    payment_intent       TEXT,
    reversed_credits     INTEGER NOT NULL DEFAULT 0 CHECK (typeof(reversed_credits) = 'integer' AND reversed_credits >= 0),
    owed_credits         INTEGER NOT NULL DEFAULT 0 CHECK (typeof(owed_credits) = 'integer' AND owed_credits >= 0),
    created_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    updated_at           TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    paid_at              TEXT
);
CREATE INDEX orders_account ON orders (account_id, id DESC);
CREATE INDEX orders_payment_intent ON orders (payment_intent) WHERE payment_intent IS NOT NULL;

CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    order_id     TEXT REFERENCES orders (id),
    received_at  TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
);

CREATE TABLE redemption_codes (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id     TEXT NOT NULL,
    hash         BLOB NOT NULL UNIQUE,
    credits      INTEGER NOT NULL CHECK (typeof(credits) = 'integer' AND credits > 0),
    expires_at   TEXT,
    created_by   INTEGER NOT NULL REFERENCES accounts (id),
    created_at   TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now')),
    redeemed_by  INTEGER REFERENCES accounts (id),
    redeemed_at  TEXT,
    CHECK ((redeemed_by IS NULL) = (redeemed_at IS NULL))
);
CREATE INDEX redemption_codes_batch ON redemption_codes (batch_id);

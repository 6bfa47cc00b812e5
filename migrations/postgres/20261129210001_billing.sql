-- Top-up (issue 21): orders paid through Stripe Checkout, the Stripe events already applied, and
-- redemption codes. Credits still move only through the ledger ('grant' and 'adjust' rows whose
-- reason names the order or code).

-- What a refund or dispute could not take back (it was already spent), and when that first happened.
ALTER TABLE accounts ADD COLUMN credits_owed BIGINT NOT NULL DEFAULT 0 CHECK (credits_owed >= 0);
ALTER TABLE accounts ADD COLUMN billing_flagged_at TIMESTAMPTZ;

CREATE TABLE orders (
    id                   TEXT COLLATE "C" PRIMARY KEY,
    account_id           BIGINT NOT NULL REFERENCES accounts (id),
    package_id           TEXT NOT NULL,
    credits              BIGINT NOT NULL CHECK (credits > 0),
    -- In the currency's smallest unit (cents), as Stripe counts it.
    amount               BIGINT NOT NULL CHECK (amount > 0),
    currency             TEXT NOT NULL,
    status               TEXT NOT NULL CHECK (status IN ('pending', 'paid', 'expired', 'refunded')),
    checkout_session_id  TEXT UNIQUE,
    checkout_url         TEXT,
    payment_intent       TEXT,
    -- Credits taken back by refunds and disputes so far, and what could not be taken (owed).
    reversed_credits     BIGINT NOT NULL DEFAULT 0 CHECK (reversed_credits >= 0),
    owed_credits         BIGINT NOT NULL DEFAULT 0 CHECK (owed_credits >= 0),
    created_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    paid_at              TIMESTAMPTZ
);
CREATE INDEX orders_account ON orders (account_id, id DESC);
CREATE INDEX orders_payment_intent ON orders (payment_intent) WHERE payment_intent IS NOT NULL;

-- Every Stripe event applied, by its id: a replay or duplicate delivery finds its id here and
-- changes nothing (inserted in the transaction of the change it made).
CREATE TABLE stripe_events (
    id           TEXT PRIMARY KEY,
    type         TEXT NOT NULL,
    order_id     TEXT REFERENCES orders (id),
    received_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE redemption_codes (
    id           BIGSERIAL PRIMARY KEY,
    batch_id     TEXT NOT NULL,
    -- The code is shown once when the batch is made; only its SHA-256 is kept.
    hash         BYTEA NOT NULL UNIQUE,
    credits      BIGINT NOT NULL CHECK (credits > 0),
    expires_at   TIMESTAMPTZ,
    created_by   BIGINT NOT NULL REFERENCES accounts (id),
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    redeemed_by  BIGINT REFERENCES accounts (id),
    redeemed_at  TIMESTAMPTZ,
    CHECK ((redeemed_by IS NULL) = (redeemed_at IS NULL))
);
CREATE INDEX redemption_codes_batch ON redemption_codes (batch_id);

-- Limits per key and per account (issue 20); NULL is no limit. `allowed_models`: a JSON array of
-- model or sub-model ids.
ALTER TABLE api_keys ADD COLUMN allowed_models JSONB;
ALTER TABLE api_keys ADD COLUMN max_in_flight BIGINT CHECK (max_in_flight >= 0);
ALTER TABLE api_keys ADD COLUMN daily_credit_cap BIGINT CHECK (daily_credit_cap >= 0);
ALTER TABLE api_keys ADD COLUMN monthly_credit_cap BIGINT CHECK (monthly_credit_cap >= 0);
ALTER TABLE accounts ADD COLUMN allowed_models JSONB;
ALTER TABLE accounts ADD COLUMN max_in_flight BIGINT CHECK (max_in_flight >= 0);
ALTER TABLE accounts ADD COLUMN daily_credit_cap BIGINT CHECK (daily_credit_cap >= 0);
ALTER TABLE accounts ADD COLUMN monthly_credit_cap BIGINT CHECK (monthly_credit_cap >= 0);

-- The key that created the task (NULL: created before limits; it counts in no usage).
ALTER TABLE tasks ADD COLUMN key_id TEXT;

-- What the limits count, per key and per account (key_id ''), updated in the transactions of the hold
-- and the settlement: credits committed by tasks created on `day` / in `month` (UTC; held, less what
-- settlements released), and unfinished tasks. A row's day or month older than now counts as 0.
CREATE TABLE limit_usage (
    account_id     BIGINT NOT NULL REFERENCES accounts (id),
    key_id         TEXT NOT NULL,
    day            TEXT NOT NULL,
    day_credits    BIGINT NOT NULL DEFAULT 0 CHECK (day_credits >= 0),
    month          TEXT NOT NULL,
    month_credits  BIGINT NOT NULL DEFAULT 0 CHECK (month_credits >= 0),
    in_flight      BIGINT NOT NULL DEFAULT 0 CHECK (in_flight >= 0),
    PRIMARY KEY (account_id, key_id)
);

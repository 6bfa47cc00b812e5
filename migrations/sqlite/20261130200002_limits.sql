-- Limits per key and per account (issue 20): the same change as migrations/postgres/20261130200002_limits.sql.
ALTER TABLE api_keys ADD COLUMN allowed_models TEXT;
ALTER TABLE api_keys ADD COLUMN max_in_flight INTEGER CHECK (max_in_flight IS NULL OR (typeof(max_in_flight) = 'integer' AND max_in_flight >= 0));
ALTER TABLE api_keys ADD COLUMN daily_credit_cap INTEGER CHECK (daily_credit_cap IS NULL OR (typeof(daily_credit_cap) = 'integer' AND daily_credit_cap >= 0));
ALTER TABLE api_keys ADD COLUMN monthly_credit_cap INTEGER CHECK (monthly_credit_cap IS NULL OR (typeof(monthly_credit_cap) = 'integer' AND monthly_credit_cap >= 0));
ALTER TABLE accounts ADD COLUMN allowed_models TEXT;
ALTER TABLE accounts ADD COLUMN max_in_flight INTEGER CHECK (max_in_flight IS NULL OR (typeof(max_in_flight) = 'integer' AND max_in_flight >= 0));
ALTER TABLE accounts ADD COLUMN daily_credit_cap INTEGER CHECK (daily_credit_cap IS NULL OR (typeof(daily_credit_cap) = 'integer' AND daily_credit_cap >= 0));
ALTER TABLE accounts ADD COLUMN monthly_credit_cap INTEGER CHECK (monthly_credit_cap IS NULL OR (typeof(monthly_credit_cap) = 'integer' AND monthly_credit_cap >= 0));

ALTER TABLE tasks ADD COLUMN key_id TEXT;

CREATE TABLE limit_usage (
    account_id     INTEGER NOT NULL REFERENCES accounts (id),
    key_id         TEXT NOT NULL,
    day            TEXT NOT NULL,
    day_credits    INTEGER NOT NULL DEFAULT 0 CHECK (typeof(day_credits) = 'integer' AND day_credits >= 0),
    month          TEXT NOT NULL,
    month_credits  INTEGER NOT NULL DEFAULT 0 CHECK (typeof(month_credits) = 'integer' AND month_credits >= 0),
    in_flight      INTEGER NOT NULL DEFAULT 0 CHECK (typeof(in_flight) = 'integer' AND in_flight >= 0),
    PRIMARY KEY (account_id, key_id)
);

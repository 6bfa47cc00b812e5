-- Prices that follow the request (issue 20): the same change as migrations/postgres/20261130200001_prices.sql.
ALTER TABLE tasks ADD COLUMN price_breakdown TEXT;
ALTER TABLE tasks ADD COLUMN charged INTEGER CHECK (charged IS NULL OR (typeof(charged) = 'integer' AND charged >= 0));

ALTER TABLE simulated_jobs ADD COLUMN images INTEGER NOT NULL DEFAULT 1;

DROP INDEX ledger_task_settled;
CREATE UNIQUE INDEX ledger_task_settled ON ledger (task_id) WHERE kind IN ('capture', 'release') AND reason IS NULL;

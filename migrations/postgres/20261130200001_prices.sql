-- Prices that follow the request (issue 20): the quote frozen at create (`credits.breakdown`), and
-- what the settlement charged (per image delivered). NULL `charged` on tasks settled before this
-- migration means "the price if succeeded, else 0" (no backfill of a large table).
ALTER TABLE tasks ADD COLUMN price_breakdown JSONB;
ALTER TABLE tasks ADD COLUMN charged BIGINT CHECK (charged >= 0);

-- The simulated provider delivers this many images (fewer than asked with `[simulate:images=K]`).
ALTER TABLE simulated_jobs ADD COLUMN images BIGINT NOT NULL DEFAULT 1;

-- A partial settlement is a capture of the delivered images plus a release of the rest (the release
-- carries the reason "k of n images delivered"). The database still refuses a second settlement: at
-- most one capture and one release per task (ledger_task_kind), and a full settlement (no reason)
-- excludes any other settlement row.
DROP INDEX ledger_task_settled;
CREATE UNIQUE INDEX ledger_task_settled ON ledger (task_id) WHERE kind IN ('capture', 'release') AND reason IS NULL;

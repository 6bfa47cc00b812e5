-- PostgreSQL drops the foreign keys to accounts of tasks, ledger and idempotency_keys here (they lock
-- the hot account row once per inserted row). SQLite's checks take no row locks: nothing to do.
SELECT 1;

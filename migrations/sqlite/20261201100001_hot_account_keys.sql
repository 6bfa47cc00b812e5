-- PostgreSQL drops the foreign keys to accounts of tasks, ledger, idempotency_keys and
-- webhook_deliveries here (they lock the busy account row once per inserted row). SQLite's checks
-- take no row locks: nothing to do.
SELECT 1;

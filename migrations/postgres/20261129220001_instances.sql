-- Gateway instances and the leases they hold (issue 22). Every process that runs the engine registers
-- here and heartbeats; each leased row of a work queue names its instance. An instance whose heartbeat
-- is stale (it died) loses its leases at once to any live process, instead of after the lease time.
CREATE TABLE instances (
    id            TEXT PRIMARY KEY,
    host          TEXT NOT NULL,
    pid           BIGINT NOT NULL,
    started_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    heartbeat_at  TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The instance working on the row now (NULL: nobody; the row is only scheduled).
ALTER TABLE tasks ADD COLUMN leased_by TEXT;
ALTER TABLE webhook_deliveries ADD COLUMN leased_by TEXT;
-- The takeover looks up leased rows only: these indexes stay as small as the work in flight.
CREATE INDEX tasks_leased_by ON tasks (leased_by) WHERE leased_by IS NOT NULL;
CREATE INDEX webhook_deliveries_leased_by ON webhook_deliveries (leased_by) WHERE leased_by IS NOT NULL;

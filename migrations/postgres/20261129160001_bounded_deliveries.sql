-- Bounded webhook deliveries (issue 16): at most one manual re-send of a task pending at a time.
-- Re-sends queued before this limit existed, beyond the newest per task, are given up.
UPDATE webhook_deliveries SET status = 'dead', updated_at = now()
WHERE trigger = 'manual' AND status = 'pending'
  AND id NOT IN (SELECT max(id) FROM webhook_deliveries WHERE trigger = 'manual' AND status = 'pending' GROUP BY task_id);
CREATE UNIQUE INDEX webhook_deliveries_one_manual_pending ON webhook_deliveries (task_id)
    WHERE trigger = 'manual' AND status = 'pending';

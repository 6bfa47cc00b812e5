-- `callback_events`: the events of a task its webhook receives (NULL: ["completed"]); a `started`
-- event's delivery is triggered by the task's start. The CHECK is widened in place, as in
-- 20261129190001_task_cancelled.sql.
ALTER TABLE tasks ADD COLUMN callback_events TEXT;
PRAGMA writable_schema = ON;
UPDATE sqlite_schema SET sql = replace(sql, '(''settled'', ''manual'')', '(''settled'', ''manual'', ''started'')')
WHERE type = 'table' AND name = 'webhook_deliveries';
PRAGMA writable_schema = RESET;
CREATE TABLE schema_bump (x INTEGER);
DROP TABLE schema_bump;

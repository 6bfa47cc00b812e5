-- `callback_events`: the events of a task its webhook receives (NULL: ["completed"]); a `started`
-- event's delivery is triggered by the task's start.
ALTER TABLE tasks ADD COLUMN callback_events JSONB;
ALTER TABLE webhook_deliveries DROP CONSTRAINT webhook_deliveries_trigger_check;
ALTER TABLE webhook_deliveries ADD CONSTRAINT webhook_deliveries_trigger_check
    CHECK (trigger IN ('settled', 'manual', 'started'));

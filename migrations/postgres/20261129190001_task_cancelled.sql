-- `cancelled`: a terminal status (POST /api/v1/tasks/{id}/cancel); its hold is released.
ALTER TABLE tasks DROP CONSTRAINT tasks_status_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_status_check
    CHECK (status IN ('pending', 'running', 'succeeded', 'failed', 'cancelled'));

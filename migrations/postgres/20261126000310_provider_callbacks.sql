-- Inbound provider callbacks: when one arrived for a task that was still being submitted, the first
-- poll after the submit happens at once instead of after the (slower) callback poll interval.
ALTER TABLE tasks ADD COLUMN callback_at TIMESTAMPTZ;

-- Which route served each task, as clients see it (issue 14): the route's label, and whether it is the
-- simulated provider (placeholder images). The provider id and upstream model are already stored.
ALTER TABLE tasks ADD COLUMN provider_label TEXT;
ALTER TABLE tasks ADD COLUMN simulated BOOLEAN NOT NULL DEFAULT FALSE;

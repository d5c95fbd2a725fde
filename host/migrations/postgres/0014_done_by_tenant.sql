-- A tenant's done events, newest first: `events list` (and the admin API's
-- listing) reads its newest events from here, from the dead ones
-- (inbox_dead) and from the unfinished ones, instead of reading and sorting
-- the tenant's whole history (1.3 s for 1,000,000 events on SQLite). Kept by
-- the worker as it finishes an event, not on the webhook's path.
CREATE INDEX inbox_done ON inbox (tenant_id, seq) WHERE status = 'done';

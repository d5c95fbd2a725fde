-- Which tenant of its slug an event was verified for: that tenant's
-- `created_at`. A tenant deleted and created again under the same slug is
-- another tenant, and an event accepted for the first one (in flight while it
-- was deleted, or spilled) must never be applied to the second: the worker
-- deletes such events instead. NULL: stored before this column existed, by the
-- tenant that has the slug now.
ALTER TABLE inbox ADD COLUMN tenant_created_at BIGINT;

-- The limits a handler version sets for itself (deploy --memory-limit-mib and
-- the deadlines), JSON; '{}': its tenant's limits apply.
ALTER TABLE modules ADD COLUMN limits TEXT NOT NULL DEFAULT '{}';

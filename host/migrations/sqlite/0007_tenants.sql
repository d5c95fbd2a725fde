-- Tenants besides `default` (which the host's own settings configure). Every
-- other table already keys its rows by tenant_id. Secrets are kept as given:
-- the host needs them to verify and sign, so they cannot be hashed; the API
-- never returns them.
CREATE TABLE tenants (
    slug           TEXT    PRIMARY KEY,
    webhook_secret TEXT,
    action_secret  TEXT,
    client_id      TEXT,
    options        TEXT    NOT NULL, -- JSON: limits and verdicts that differ from the host's defaults
    created_at     INTEGER NOT NULL,
    updated_at     INTEGER NOT NULL
);

-- Admin tokens scoped to one tenant: only a SHA-256 of each is kept.
CREATE TABLE tenant_tokens (
    id         TEXT    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    hash       TEXT    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tenant_tokens_by_tenant ON tenant_tokens (tenant_id);

-- The worker claims one tenant's events at a time (round-robin across tenants),
-- so the claim's index leads with the tenant. It replaces the global one: still
-- one index entry per new webhook.
DROP INDEX inbox_unfinished;
CREATE INDEX inbox_unfinished ON inbox (tenant_id, occurred_at, event_id) WHERE status IN ('pending', 'failed');

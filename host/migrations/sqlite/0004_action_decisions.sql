-- Every Actions decision the host sent WorkOS: what was asked, what was
-- answered, who decided (handler, fallback, no_handler), how long it took.
CREATE TABLE action_decisions (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  TEXT    NOT NULL,
    action_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    verdict    TEXT    NOT NULL,
    message    TEXT,
    source     TEXT    NOT NULL,
    latency_us INTEGER NOT NULL,
    error      TEXT,
    logs       TEXT,
    decided_at INTEGER NOT NULL
);
CREATE INDEX action_decisions_recent ON action_decisions (tenant_id, seq);

-- The inbox's CHECK on `status` was `status IN ('pending', 'failed', 'done',
-- 'dead')`. SQLite evaluates an IN list of more than two constants by building a
-- temporary B-tree of them, and a CHECK runs on every insert and every status
-- update: a temporary database opened and filled for each webhook stored and each
-- event finished (seen in profiles of the ingest path). Two lists of two are
-- compared directly, so the rule stays the same at no cost.
--
-- SQLite cannot change a CHECK in place, so the table is rebuilt as its manual
-- describes (https://www.sqlite.org/lang_altertable.html#otheralter). This copies
-- every row once, on the first start of this version. The AUTOINCREMENT counter
-- is carried over, so no `seq` is ever handed out twice.
CREATE TABLE inbox_new (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    occurred_at     INTEGER NOT NULL,
    received_at     INTEGER NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'failed') OR status IN ('done', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at INTEGER NOT NULL,
    last_error      TEXT,
    outcome         TEXT,
    processed_at    INTEGER,
    logs            TEXT,
    UNIQUE (tenant_id, event_id)
);
INSERT INTO inbox_new (seq, tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, status,
                       attempts, next_attempt_at, last_error, outcome, processed_at, logs)
    SELECT seq, tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, status,
           attempts, next_attempt_at, last_error, outcome, processed_at, logs
    FROM inbox ORDER BY seq;
DELETE FROM sqlite_sequence WHERE name = 'inbox_new';
INSERT INTO sqlite_sequence (name, seq) SELECT 'inbox_new', seq FROM sqlite_sequence WHERE name = 'inbox';
DROP TABLE inbox;
ALTER TABLE inbox_new RENAME TO inbox;

-- The indexes as 0001 and 0007 left them.
CREATE INDEX inbox_unfinished ON inbox (tenant_id, occurred_at, event_id) WHERE status IN ('pending', 'failed');
CREATE INDEX inbox_retrying_subject ON inbox (tenant_id, subject, occurred_at) WHERE status = 'failed';
CREATE INDEX inbox_dead ON inbox (tenant_id, seq) WHERE status = 'dead';

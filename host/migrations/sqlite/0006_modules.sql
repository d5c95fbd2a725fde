-- Handler versions (see deploy). A version's number is never reused: a deleted
-- version keeps its row, without its bytes, so the history stays readable.
CREATE TABLE modules (
    tenant_id   TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    hash        TEXT    NOT NULL, -- SHA-256 of the component's bytes, hex
    size        INTEGER NOT NULL,
    exports     TEXT    NOT NULL, -- the handler interfaces it exports, comma-separated
    wit_version TEXT    NOT NULL,
    indexes     TEXT    NOT NULL, -- the indexes it declares, JSON [[table, field], ...]
    bytes       BLOB,             -- NULL once deleted
    created_at  INTEGER NOT NULL,
    deleted_at  INTEGER,
    PRIMARY KEY (tenant_id, version)
);
CREATE INDEX modules_by_hash ON modules (tenant_id, hash);

-- Activations as a stack: activating pushes, rolling back marks the top entry
-- rolled back. The active version is the newest entry not rolled back.
CREATE TABLE module_activations (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id      TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    activated_at   INTEGER NOT NULL,
    rolled_back_at INTEGER
);
CREATE INDEX module_activations_by_tenant ON module_activations (tenant_id, seq);

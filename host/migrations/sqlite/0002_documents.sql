-- Handlers' document tables (the WIT `db` interface). One table holds every
-- tenant's documents; `tbl` is the handler's table name. Times are unix ms.
CREATE TABLE documents (
    tenant_id  TEXT    NOT NULL,
    tbl        TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, tbl, id)
) WITHOUT ROWID; -- one B-tree: a lookup by id is one descent, not an index then the table

-- The equality indexes each handler declares (its `schema` export).
CREATE TABLE document_indexes (
    tenant_id  TEXT    NOT NULL,
    tbl        TEXT    NOT NULL,
    field      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, tbl, field)
) WITHOUT ROWID;

-- One row per (declared index, document that has a scalar in that field).
-- `value_key` is the value's canonical form (see store::documents).
CREATE TABLE document_index_entries (
    tenant_id TEXT NOT NULL,
    tbl       TEXT NOT NULL,
    field     TEXT NOT NULL,
    value_key TEXT NOT NULL,
    doc_id    TEXT NOT NULL,
    PRIMARY KEY (tenant_id, tbl, field, value_key, doc_id)
) WITHOUT ROWID;

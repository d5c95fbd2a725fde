-- `documents` was a WITHOUT ROWID table keyed by (tenant_id, tbl, id). Such a
-- table is one B-tree whose interior cells carry whole rows, bodies included, so
-- its fan-out follows document size: four levels at a million small documents,
-- and an indexed `find` paid two deep descents (the entry, then the document),
-- most of them cache misses in a large table.
--
-- Now each document has an integer `seq` (its rowid), and each index entry
-- records the `seq` of its document. `find` goes from the entry straight to the
-- row by rowid, in a B-tree whose interior cells are a few bytes each (three
-- levels at a million documents, the upper two small enough to stay in cache).
-- Lookups by id go through the UNIQUE index, which is what the old table's key
-- was. New documents append to the table's last page instead of landing among
-- their tenant's rows.
--
-- SQLite cannot add a primary key in place, so both tables are rebuilt
-- (https://www.sqlite.org/lang_altertable.html#otheralter), copying every row
-- once on the first start of this version. An entry whose document is missing
-- (there should be none) is dropped: it pointed at nothing.
CREATE TABLE documents_new (
    seq        INTEGER PRIMARY KEY,
    tenant_id  TEXT    NOT NULL,
    tbl        TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    body       TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL,
    UNIQUE (tenant_id, tbl, id)
);
INSERT INTO documents_new (tenant_id, tbl, id, body, created_at, updated_at)
    SELECT tenant_id, tbl, id, body, created_at, updated_at FROM documents ORDER BY tenant_id, tbl, id;
DROP TABLE documents;
ALTER TABLE documents_new RENAME TO documents;

CREATE TABLE document_index_entries_new (
    tenant_id TEXT    NOT NULL,
    tbl       TEXT    NOT NULL,
    field     TEXT    NOT NULL,
    value_key TEXT    NOT NULL,
    doc_id    TEXT    NOT NULL,
    doc_seq   INTEGER NOT NULL, -- documents.seq of doc_id
    PRIMARY KEY (tenant_id, tbl, field, value_key, doc_id)
) WITHOUT ROWID;
INSERT INTO document_index_entries_new (tenant_id, tbl, field, value_key, doc_id, doc_seq)
    SELECT i.tenant_id, i.tbl, i.field, i.value_key, i.doc_id, d.seq
    FROM document_index_entries i
    JOIN documents d ON d.tenant_id = i.tenant_id AND d.tbl = i.tbl AND d.id = i.doc_id;
DROP TABLE document_index_entries;
ALTER TABLE document_index_entries_new RENAME TO document_index_entries;

-- How many documents each tenant has, kept in the same transaction as every
-- insert and delete, so a tenant's document quota is one row's check, not a
-- count over its documents.
CREATE TABLE document_counts (
    tenant_id TEXT   PRIMARY KEY,
    documents BIGINT NOT NULL
);
INSERT INTO document_counts (tenant_id, documents) SELECT tenant_id, COUNT(*) FROM documents GROUP BY tenant_id;

-- The inbox: every verified webhook, stored before it is acknowledged.
-- Times are unix milliseconds. `tenant_id` is 'default' until tenants exist.
CREATE TABLE inbox (
    seq             BIGSERIAL PRIMARY KEY,
    tenant_id       TEXT    NOT NULL,
    event_id        TEXT    NOT NULL,
    event_type      TEXT    NOT NULL,
    subject         TEXT    NOT NULL,
    occurred_at     BIGINT NOT NULL,
    received_at     BIGINT NOT NULL,
    payload         TEXT    NOT NULL,
    status          TEXT    NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'failed', 'done', 'dead')),
    attempts        BIGINT NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    last_error      TEXT,
    outcome         TEXT,
    processed_at    BIGINT,
    UNIQUE (tenant_id, event_id)
);
-- The worker's claim: unfinished events in ordering-key order.
CREATE INDEX inbox_unfinished ON inbox (occurred_at, event_id) WHERE status IN ('pending', 'failed');
-- Events waiting to retry hold back later events of their subject. Only failed rows
-- can be waiting (a pending row is due from the moment it arrives), so only they are
-- indexed: subjects are random keys, and indexing every new row would dirty a page
-- per webhook (measured: twice the commit time with 50k unfinished rows).
CREATE INDEX inbox_retrying_subject ON inbox (tenant_id, subject, occurred_at) WHERE status = 'failed';
-- Dead letters are rare and looked for by operators; pending rows are not indexed here.
CREATE INDEX inbox_dead ON inbox (tenant_id, seq) WHERE status = 'dead';

CREATE TABLE users (
    tenant_id           TEXT    NOT NULL,
    id                  TEXT    NOT NULL,
    email               TEXT,
    email_verified      BOOLEAN,
    first_name          TEXT,
    last_name           TEXT,
    name                TEXT,
    profile_picture_url TEXT,
    last_sign_in_at     BIGINT,
    locale              TEXT,
    external_id         TEXT,
    metadata            TEXT    NOT NULL,
    raw                 TEXT    NOT NULL,
    created_at          BIGINT,
    updated_at          BIGINT NOT NULL,
    last_event_id       TEXT    NOT NULL,
    synced_at           BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX users_email ON users (tenant_id, email);
CREATE INDEX users_external_id ON users (tenant_id, external_id);

CREATE TABLE organizations (
    tenant_id                           TEXT    NOT NULL,
    id                                  TEXT    NOT NULL,
    name                                TEXT,
    allow_profiles_outside_organization BOOLEAN,
    domains                             TEXT    NOT NULL,
    external_id                         TEXT,
    stripe_customer_id                  TEXT,
    metadata                            TEXT    NOT NULL,
    raw                                 TEXT    NOT NULL,
    created_at                          BIGINT,
    updated_at                          BIGINT NOT NULL,
    last_event_id                       TEXT    NOT NULL,
    synced_at                           BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE organization_memberships (
    tenant_id         TEXT    NOT NULL,
    id                TEXT    NOT NULL,
    user_id           TEXT,
    organization_id   TEXT,
    organization_name TEXT,
    status            TEXT,
    role              TEXT,
    roles             TEXT    NOT NULL,
    directory_managed BOOLEAN,
    custom_attributes TEXT    NOT NULL,
    raw               TEXT    NOT NULL,
    created_at        BIGINT,
    updated_at        BIGINT NOT NULL,
    last_event_id     TEXT    NOT NULL,
    synced_at         BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, id)
);
CREATE INDEX memberships_user ON organization_memberships (tenant_id, user_id);
CREATE INDEX memberships_organization ON organization_memberships (tenant_id, organization_id);

-- A deleted record leaves a tombstone so a late create or update cannot bring it back.
CREATE TABLE tombstones (
    tenant_id  TEXT    NOT NULL,
    kind       TEXT    NOT NULL,
    id         TEXT    NOT NULL,
    deleted_at BIGINT NOT NULL,
    event_id   TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, kind, id)
);

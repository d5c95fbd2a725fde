-- The last `created_at` given to a tenant, of any slug, whether it still
-- exists or not. A tenant's `created_at` tells it apart from an earlier tenant
-- of its slug (see 0012), so no two tenants may ever get the same one: a new
-- tenant gets the clock's time, or one past the last given if the clock has
-- not moved past it (two tenants in one millisecond, a clock set back, or
-- processes whose clocks differ). One row; seeded from the tenants that exist.
CREATE TABLE tenant_clock (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    last_created_at BIGINT NOT NULL
);
INSERT INTO tenant_clock (id, last_created_at) SELECT 1, COALESCE(MAX(created_at), 0) FROM tenants;

//! Stored tenants and their scoped admin tokens.
//!
//! Owns: the `tenants` and `tenant_tokens` tables, and deleting everything a
//! tenant has in every table. Must not: validate settings or decide who may
//! do what (see [`crate::tenants`] and [`crate::http::admin`]).

use super::exec::SyncTx;
use super::inbox::DEFAULT_TENANT;
use super::{Result, Store, on_pool};

/// A tenant as stored. `options` is JSON (see `crate::tenants::TenantOptions`).
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub slug: String,
    pub webhook_secret: Option<String>,
    pub action_secret: Option<String>,
    pub client_id: Option<String>,
    pub options: String,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A scoped token as listed (never the token itself).
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct TokenInfo {
    pub id: String,
    pub created_at: i64,
    pub revoked_at: Option<i64>,
}

/// Every table that keys rows by tenant, in the order a deletion empties them.
const TENANT_TABLES: [&str; 13] = [
    "document_counts",
    "document_index_entries",
    "document_indexes",
    "documents",
    "organization_memberships",
    "organizations",
    "users",
    "tombstones",
    "inbox",
    "action_decisions",
    "module_activations",
    "modules",
    "tenant_tokens",
];

const COLUMNS: &str = "slug, webhook_secret, action_secret, client_id, options, created_at, updated_at";

impl Store {
    pub async fn list_tenants(&self) -> Result<Vec<TenantRow>> {
        let sql = format!("SELECT {COLUMNS} FROM tenants ORDER BY slug");
        Ok(on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(pool).await?))
    }

    /// How many tenants are stored (besides `default`, which is not a row).
    pub async fn count_tenants(&self) -> Result<usize> {
        let n: i64 = on_pool!(self, pool => sqlx::query_scalar("SELECT COUNT(*) FROM tenants").fetch_one(pool).await?);
        Ok(usize::try_from(n).unwrap_or(0))
    }

    pub async fn get_tenant(&self, slug: &str) -> Result<Option<TenantRow>> {
        let sql = format!("SELECT {COLUMNS} FROM tenants WHERE slug = $1");
        Ok(
            on_pool!(self, pool => sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(slug.to_string()).fetch_optional(pool).await?),
        )
    }

    /// Stores a new tenant; `false` if the slug is taken. Its `created_at`
    /// (and `updated_at`) become `t.created_at`, or one past the last given to
    /// any tenant if that is not later (`tenant_clock`): no tenant ever gets
    /// the `created_at` of an earlier one, which is what tells a slug deleted
    /// and created again apart from its first tenant. `t` is updated to what
    /// was stored.
    pub async fn insert_tenant(&self, t: &mut TenantRow) -> Result<bool> {
        let _turn = self.write_turn().await;
        let created_at = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let created_at: i64 = sqlx::query_scalar(
                "UPDATE tenant_clock SET last_created_at = CASE WHEN last_created_at < $1 THEN $1 \
                 ELSE last_created_at + 1 END WHERE id = 1 RETURNING last_created_at",
            )
            .bind(t.created_at)
            .fetch_one(&mut *tx)
            .await?;
            let n = sqlx::query(
                "INSERT INTO tenants (slug, webhook_secret, action_secret, client_id, options, created_at, updated_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $6) ON CONFLICT (slug) DO NOTHING",
            )
            .bind(t.slug.clone())
            .bind(t.webhook_secret.clone())
            .bind(t.action_secret.clone())
            .bind(t.client_id.clone())
            .bind(t.options.clone())
            .bind(created_at)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n != 1 {
                return Ok(false);
            }
            tx.commit().await?;
            created_at
        });
        t.created_at = created_at;
        t.updated_at = created_at;
        Ok(true)
    }

    /// Replaces a tenant's settings; `false` if there is no such tenant: none
    /// of that slug created at `t.created_at` (deleted meanwhile, maybe by
    /// another process, and maybe another created under its slug).
    pub async fn update_tenant(&self, t: &TenantRow) -> Result<bool> {
        let _turn = self.write_turn().await;
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE tenants SET webhook_secret = $2, action_secret = $3, client_id = $4, options = $5, updated_at = $6 \
             WHERE slug = $1 AND created_at = $7",
        )
        .bind(t.slug.clone())
        .bind(t.webhook_secret.clone())
        .bind(t.action_secret.clone())
        .bind(t.client_id.clone())
        .bind(t.options.clone())
        .bind(t.updated_at)
        .bind(t.created_at)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    /// Deletes a tenant and every row it has in every table, in one
    /// transaction; `None` if there was no such tenant (nothing changed),
    /// else the content hashes of the handler versions it had (their compiled
    /// code may now be unused).
    pub async fn delete_tenant(&self, slug: &str) -> Result<Option<Vec<String>>> {
        let _turn = self.write_turn().await;
        let hashes = on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            let gone = sqlx::query("DELETE FROM tenants WHERE slug = $1")
                .bind(slug.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected();
            if gone == 0 {
                return Ok(None);
            }
            let hashes: Vec<String> =
                sqlx::query_scalar("SELECT DISTINCT hash FROM modules WHERE tenant_id = $1 AND deleted_at IS NULL")
                    .bind(slug.to_string())
                    .fetch_all(&mut *tx)
                    .await?;
            for table in TENANT_TABLES {
                sqlx::query(sqlx::AssertSqlSafe(format!("DELETE FROM {table} WHERE tenant_id = $1")))
                    .bind(slug.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            hashes
        });
        // Its webhooks acknowledged into the spill file and not yet moved
        // (SQLite). After the commit: a crash in between leaves them to be
        // moved and then deleted by the worker, as the tenant is gone.
        if let Some(db) = self.sqlite_path() {
            let tenant = slug.to_string();
            let forgotten = tokio::task::spawn_blocking(move || super::spill::forget_tenant(&db, &tenant))
                .await
                .expect("deleting spilled events does not panic");
            if let Err(e) = forgotten {
                tracing::warn!(tenant = %slug, error = %e,
                    "the deleted tenant's spilled webhooks stay until moved; the worker deletes them then");
            }
        }
        Ok(Some(hashes))
    }

    /// Rows a tenant has in each table, and in the spill file as `spilled`
    /// (for checking that a deletion left nothing).
    pub async fn count_tenant_rows(&self, slug: &str) -> Result<Vec<(&'static str, i64)>> {
        let mut counts = Vec::with_capacity(TENANT_TABLES.len());
        for table in TENANT_TABLES {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = $1");
            let n: i64 = on_pool!(self, pool => sqlx::query_scalar(sqlx::AssertSqlSafe(sql)).bind(slug.to_string()).fetch_one(pool).await?);
            counts.push((table, n));
        }
        counts.push(("spilled", self.count_spilled(Some(slug)).await?));
        Ok(counts)
    }

    /// Stores a token of `tenant`; `false` (nothing stored) if the tenant no
    /// longer exists: deleted meanwhile, or through another process this one
    /// has not heard from yet. Such a token would otherwise outlive its tenant
    /// and open a new tenant of the same slug. On Postgres the tenant's row is
    /// held until the commit, so a deletion waits for it and removes the token.
    pub async fn insert_token(&self, id: &str, tenant: &str, hash: &str, now: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let lock = if matches!(self, Store::Postgres(_)) { " FOR SHARE" } else { "" };
        let sql = format!(
            "INSERT INTO tenant_tokens (id, tenant_id, hash, created_at) SELECT $1, $2, $3, $4 \
             WHERE $2 = '{DEFAULT_TENANT}' OR EXISTS (SELECT 1 FROM tenants WHERE slug = $2{lock})"
        );
        let inserted = on_pool!(self, pool => sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(id.to_string())
            .bind(tenant.to_string())
            .bind(hash.to_string())
            .bind(now)
            .execute(pool)
            .await?
            .rows_affected());
        Ok(inserted == 1)
    }

    /// Revokes a tenant's token; `false` if it has no such live token.
    pub async fn revoke_token(&self, tenant: &str, id: &str, now: i64) -> Result<bool> {
        let _turn = self.write_turn().await;
        let n = on_pool!(self, pool => sqlx::query(
            "UPDATE tenant_tokens SET revoked_at = $3 WHERE tenant_id = $1 AND id = $2 AND revoked_at IS NULL",
        )
        .bind(tenant.to_string())
        .bind(id.to_string())
        .bind(now)
        .execute(pool)
        .await?
        .rows_affected());
        Ok(n == 1)
    }

    pub async fn list_tokens(&self, tenant: &str) -> Result<Vec<TokenInfo>> {
        Ok(on_pool!(self, pool => sqlx::query_as(
            "SELECT id, created_at, revoked_at FROM tenant_tokens WHERE tenant_id = $1 ORDER BY created_at, id",
        )
        .bind(tenant.to_string())
        .fetch_all(pool)
        .await?))
    }

    /// The tenant a live token (by its SHA-256, hex) belongs to.
    pub async fn token_tenant(&self, hash: &str) -> Result<Option<String>> {
        Ok(on_pool!(self, pool => sqlx::query_scalar(
            "SELECT tenant_id FROM tenant_tokens WHERE hash = $1 AND revoked_at IS NULL",
        )
        .bind(hash.to_string())
        .fetch_optional(pool)
        .await?))
    }
}

/// Inside a writing transaction (the worker's turn, an Actions call's commit):
/// which tenant of `slug` exists, by its `created_at` (0 for `default`, which
/// always exists), or `None` if none does; held so a concurrent deletion waits
/// for this transaction (Postgres; on SQLite the write gate already serializes
/// the two). An event accepted for another tenant of the slug (see
/// [`super::inbox::NewEvent::tenant_created_at`]) is not this one's.
pub fn hold(tx: &mut SyncTx, slug: &str) -> Result<Option<i64>> {
    if slug == DEFAULT_TENANT {
        return Ok(Some(0));
    }
    let sql = if tx.is_postgres() {
        "SELECT created_at FROM tenants WHERE slug = $1 FOR SHARE"
    } else {
        "SELECT created_at FROM tenants WHERE slug = $1"
    };
    match tx.query_one(sql, &[slug.into()])? {
        None => Ok(None),
        Some(row) => row
            .into_iter()
            .next()
            .and_then(|v| v.as_i64())
            .map(Some)
            .ok_or_else(|| super::StoreError::Corrupt("a tenant row has unexpected types".into())),
    }
}

/// Inside the worker's transaction on Postgres: takes one of `slug`'s `cap`
/// turn slots until the commit, if one is free. With several host processes,
/// at most `cap` of them give one tenant a turn at the same time; a process
/// that finds every slot taken leaves that tenant to the processes that hold
/// them. On SQLite one process applies events: always `true`.
pub fn take_turn_slot(tx: &mut SyncTx, slug: &str, cap: usize) -> Result<bool> {
    if !tx.is_postgres() {
        return Ok(true);
    }
    for slot in 0..cap {
        let sql = "SELECT 1 WHERE pg_try_advisory_xact_lock(hashtextextended('authkit-turn:' || $1, 0))";
        if tx.query_one(sql, &[format!("{slug}:{slot}").into()])?.is_some() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Inside the worker's transaction: deletes the events of a tenant that no
/// longer exists (accepted while its deletion was under way, or by a process
/// that had not yet heard of it).
pub fn purge_events(tx: &mut SyncTx, slug: &str) -> Result<u64> {
    tx.execute("DELETE FROM inbox WHERE tenant_id = $1", &[slug.into()])
}

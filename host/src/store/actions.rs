//! The record of Actions decisions.
//!
//! Owns: the `action_decisions` table. Must not: decide anything.

use serde::Serialize;

use super::inbox::DEFAULT_TENANT;
use super::{Result, Store, on_pool};
use crate::clock;

/// One decision, as recorded.
#[derive(Debug, Clone)]
pub struct NewDecision {
    pub tenant_id: String,
    /// The `created_at` of the tenant that decided: a decision is not
    /// recorded for another tenant created since under the same slug.
    pub tenant_created_at: i64,
    pub action_id: String,
    /// `authentication` or `user_registration`.
    pub kind: &'static str,
    /// `Allow` or `Deny`.
    pub verdict: &'static str,
    pub message: Option<String>,
    /// `handler`, `fallback` or `no_handler`.
    pub source: &'static str,
    pub latency_us: i64,
    pub error: Option<String>,
    /// The handler's log lines (JSON array), when it ran.
    pub logs: Option<String>,
    pub decided_at: i64,
}

/// A recorded decision, as `actions list` shows it.
#[derive(Debug, Clone, Serialize, sqlx::FromRow)]
pub struct Decision {
    pub action_id: String,
    pub kind: String,
    pub verdict: String,
    pub message: Option<String>,
    pub source: String,
    pub latency_us: i64,
    pub error: Option<String>,
    pub logs: Option<String>,
    pub decided_at: i64,
}

impl Decision {
    pub fn decided_at_text(&self) -> String {
        clock::format_ms(self.decided_at)
    }
}

impl Store {
    /// Records decisions in one transaction (one commit, one fsync on SQLite).
    /// On SQLite it waits its turn at the write gate, like every other writer in
    /// the process.
    ///
    /// A decision of a tenant that no longer exists (deleted while the call
    /// ran, or through another process this one has not heard from yet) is
    /// not recorded: a deletion leaves nothing of the tenant behind, and a new
    /// tenant of the same slug gets nothing of it. On
    /// Postgres the tenant's row is held until the commit, so a deletion
    /// waits for it (and then removes the decision with the rest).
    pub async fn record_decisions(&self, decisions: &[NewDecision]) -> Result<()> {
        let _turn = self.write_turn().await;
        let lock = if matches!(self, Store::Postgres(_)) { " FOR SHARE" } else { "" };
        let sql = format!(
            "INSERT INTO action_decisions (tenant_id, action_id, kind, verdict, message, source, latency_us, \
             error, logs, decided_at) SELECT $1, $2, $3, $4, $5, $6, $7, $8, $9, $10 \
             WHERE $1 = '{DEFAULT_TENANT}' OR EXISTS (SELECT 1 FROM tenants WHERE slug = $1 AND created_at = $11{lock})"
        );
        on_pool!(self, pool => {
            let mut tx = pool.begin().await?;
            for d in decisions {
                sqlx::query(sqlx::AssertSqlSafe(sql.as_str()))
                .bind(d.tenant_id.clone())
                .bind(d.action_id.clone())
                .bind(d.kind)
                .bind(d.verdict)
                .bind(d.message.clone())
                .bind(d.source)
                .bind(d.latency_us)
                .bind(d.error.clone())
                .bind(d.logs.clone())
                .bind(d.decided_at)
                .bind(d.tenant_created_at)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The latest decisions of a tenant, newest first.
    pub async fn list_decisions(&self, tenant_id: &str, limit: i64) -> Result<Vec<Decision>> {
        let rows = on_pool!(self, pool => sqlx::query_as(
            "SELECT action_id, kind, verdict, message, source, latency_us, error, logs, decided_at \
             FROM action_decisions WHERE tenant_id = $1 ORDER BY seq DESC LIMIT $2",
        )
        .bind(tenant_id.to_string())
        .bind(limit)
        .fetch_all(pool)
        .await?);
        Ok(rows)
    }
}

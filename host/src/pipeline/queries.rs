//! Running a tenant's query for an app: `queries.run` of its live version, in
//! a read-only transaction, under the query deadline.
//!
//! Owns: which version answers (the one live when the request arrived), the
//! per-tenant cap on queries running at once, looking the caller up in the
//! users table (in the query's own transaction, so the guest sees the same
//! snapshot), and what a failure means for the app. Must not: verify tokens
//! (the HTTP layer hands in verified claims), parse HTTP, or commit anything:
//! the transaction is always rolled back.

use std::sync::Arc;
use std::time::Duration;

use tracing::warn;

use crate::runtime::{GuestCaller, HandlerError, Query, stored_guest_user};
use crate::store::directory::{self, UserKey};
use crate::tenants::{Tenant, Tenants};
use crate::workos::jwt::Claims;

/// Why a query has no answer.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The tenant's live version does not export `queries` (or there is none).
    #[error("tenant {0:?} has no handler that answers queries: deploy one that exports `queries`")]
    NoQueries(String),
    /// The tenant already runs its cap of queries.
    #[error(
        "tenant {tenant:?} already has {cap} queries running (its max_concurrent_queries, by default \
         queries.max_concurrent); try again"
    )]
    Busy { tenant: String, cap: usize },
    /// The token is valid but its user is not in the users table yet.
    #[error("user {0:?} is not synced to this host yet: its user.created webhook has not arrived or not been applied")]
    UserNotSynced(String),
    /// The guest returned an error for the app.
    #[error("{0}")]
    Returned(String),
    /// The guest ran past the query deadline.
    #[error("the query did not answer within {} ms", .0.as_millis())]
    Deadline(Duration),
    /// The guest trapped, ran out of memory, or answered something that is not
    /// JSON or is too large. The reason is logged, not shown to the app.
    #[error("the query failed: {0}")]
    Failed(String),
    /// The host could not run it (the database, or loading the version).
    #[error("the query could not be run: {0}")]
    Unavailable(String),
}

/// A query to run, as the HTTP layer hands it in.
pub struct QueryRequest {
    pub name: String,
    /// JSON text (`null` for an empty body).
    pub args_json: String,
    /// The verified token's claims, when the request sent one.
    pub claims: Option<Claims>,
}

/// Runs `request` for `tenant`; returns the guest's answer (JSON text).
pub async fn run(tenants: &Arc<Tenants>, tenant: &Arc<Tenant>, request: QueryRequest) -> Result<String, QueryError> {
    let max_result_bytes = tenants.settings().queries.max_result_bytes;
    let deadline = tenant.limits.query_deadline;
    let deployment = tenants.deployment_within(tenant, deadline).await.map_err(QueryError::Unavailable)?;
    let live = deployment
        .current()
        .filter(|live| live.module.handles_queries())
        .ok_or_else(|| QueryError::NoQueries(tenant.slug.clone()))?;
    let permit = tenants
        .query_permit(tenant)
        .ok_or_else(|| QueryError::Busy { tenant: tenant.slug.clone(), cap: tenant.max_concurrent_queries })?;
    let (db, task_tenant) = (tenants.db().clone(), tenant.clone());
    // The version's own limits (a longer deadline, more memory) over the tenant's.
    let limits = live.limits_over(&tenant.limits);
    let task = tokio::task::spawn_blocking(move || {
        let _running = permit;
        let mut tx = db.begin_read_mostly().map_err(|e| QueryError::Unavailable(e.to_string()))?;
        let caller = match &request.claims {
            None => None,
            Some(claims) => {
                let user = directory::find_user(&mut tx, &task_tenant.slug, UserKey::Id, &claims.sub)
                    .map_err(|e| QueryError::Unavailable(e.to_string()))?
                    .ok_or_else(|| QueryError::UserNotSynced(claims.sub.clone()))?;
                Some(GuestCaller {
                    user: stored_guest_user(user),
                    session_id: claims.sid.clone(),
                    organization_id: claims.org_id.clone(),
                    role: claims.role.clone(),
                    permissions: claims.permissions.clone().unwrap_or_default(),
                })
            }
        };
        let query = Query { name: request.name, args_json: request.args_json, caller };
        let invoked = deployment.runtime().handle_query(&live.module, tx, &task_tenant.slug, &limits, &query);
        // Dropping the transaction rolls it back: a query never commits.
        drop(invoked.tx);
        let answer = invoked.result.map_err(|e| match e {
            HandlerError::Returned(message) => QueryError::Returned(message),
            HandlerError::Deadline(d) => QueryError::Deadline(d),
            HandlerError::Host(e) => QueryError::Unavailable(e.to_string()),
            other => QueryError::Failed(other.to_string()),
        });
        let answer = answer.and_then(|text| {
            if text.len() > max_result_bytes {
                return Err(QueryError::Failed(format!(
                    "its answer is {} bytes, more than queries.max_result_bytes ({max_result_bytes})",
                    text.len()
                )));
            }
            serde_json::from_str::<serde::de::IgnoredAny>(&text)
                .map_err(|e| QueryError::Failed(format!("its answer is not JSON: {e}")))?;
            Ok(text)
        });
        if let Err(e @ (QueryError::Failed(_) | QueryError::Deadline(_))) = &answer {
            warn!(tenant = %task_tenant.slug, query = %query.name, version = live.version, error = %e, logs = ?invoked.logs, "a query failed");
        }
        answer
    });
    task.await.map_err(|e| QueryError::Failed(format!("the query task ended abnormally: {e}")))?
}

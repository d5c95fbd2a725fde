//! What one event does to the directory tables.
//!
//! Owns: mapping an event to upserts and deletes, and choosing the version an
//! upsert is guarded by. Must not: commit, retry or decide ordering (the worker
//! does), or hold SQL (the store does).

use crate::store::StoreError;
use crate::store::directory::{self, Version};
use crate::store::exec::SyncTx;
use crate::workos::event::{Event, EventError, Record, SyncAction};

/// How an event ended, as recorded in the inbox's `outcome` column.
pub mod outcome {
    /// The record was written.
    pub const APPLIED: &str = "applied";
    /// Nothing written: a newer version is stored, or the id is tombstoned.
    pub const SKIPPED: &str = "skipped";
    /// The record was removed (or was already absent) and tombstoned.
    pub const DELETED: &str = "deleted";
    /// Not a directory event, and no handler: kept in the inbox.
    pub const RECORDED: &str = "recorded";
    /// Not a directory event; the handler handled it.
    pub const HANDLED: &str = "handled";
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The stored payload cannot be applied, now or ever.
    #[error("the stored event is invalid: {0}")]
    Invalid(#[from] EventError),
    /// The database failed; a later attempt may succeed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ApplyError {
    pub fn is_permanent(&self) -> bool {
        matches!(self, ApplyError::Invalid(_))
    }
}

/// Applies a parsed event of `tenant`, whose [`Event::sync_action`] is `action`,
/// inside `tx`; returns its outcome.
pub fn apply(
    tx: &mut SyncTx,
    tenant: &str,
    event: &Event,
    action: &SyncAction,
    now: i64,
) -> Result<&'static str, ApplyError> {
    let outcome = match action {
        SyncAction::None => outcome::RECORDED,
        SyncAction::Delete { kind, id } => {
            directory::delete_record(tx, *kind, tenant, id, &event.id, now)?;
            outcome::DELETED
        }
        SyncAction::Upsert(record) => {
            let version = Version {
                tenant_id: tenant,
                // A record without `updated_at` is versioned by its event's time.
                updated_at: record.updated_at_ms().or(event.created_at_ms).unwrap_or(now),
                event_id: &event.id,
                now,
            };
            let written = match record.as_ref() {
                Record::User(user) => directory::upsert_user(tx, user, &event.data, version)?,
                Record::Organization(org) => directory::upsert_organization(tx, org, &event.data, version)?,
                Record::Membership(m) => directory::upsert_membership(tx, m, &event.data, version)?,
            };
            if written { outcome::APPLIED } else { outcome::SKIPPED }
        }
    };
    Ok(outcome)
}

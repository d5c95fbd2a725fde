//! What one event does to the directory tables.
//!
//! Owns: mapping an event to upserts and deletes, and choosing the version an
//! upsert is guarded by. Must not: commit, retry or decide ordering (the worker
//! does), or hold SQL (the store does).

use crate::store::directory::Version;
use crate::store::inbox::ClaimedEvent;
use crate::store::{StoreError, Tx};
use crate::workos::event::{Event, EventError, Record, SyncAction};

/// How an event ended, as recorded in the inbox's `outcome` column.
pub mod outcome {
    /// The record was written.
    pub const APPLIED: &str = "applied";
    /// Nothing written: a newer version is stored, or the id is tombstoned.
    pub const SKIPPED: &str = "skipped";
    /// The record was removed (or was already absent) and tombstoned.
    pub const DELETED: &str = "deleted";
    /// Not a directory event: kept in the inbox for handlers.
    pub const RECORDED: &str = "recorded";
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

/// Applies one claimed event inside `tx`; returns its outcome.
pub async fn apply(tx: &mut Tx, claimed: &ClaimedEvent, now: i64) -> Result<&'static str, ApplyError> {
    let event = Event::parse(claimed.payload.as_bytes())?;
    let outcome = match event.sync_action()? {
        SyncAction::None => outcome::RECORDED,
        SyncAction::Delete { kind, id } => {
            tx.delete_record(kind, &claimed.tenant_id, &id, &claimed.event_id, now).await?;
            outcome::DELETED
        }
        SyncAction::Upsert(record) => {
            let version = Version {
                tenant_id: &claimed.tenant_id,
                // A record without `updated_at` is versioned by its event's time.
                updated_at: record.updated_at_ms().or(event.created_at_ms).unwrap_or(now),
                event_id: &claimed.event_id,
                now,
            };
            let written = match record.as_ref() {
                Record::User(user) => tx.upsert_user(user, &event.data, version).await?,
                Record::Organization(org) => tx.upsert_organization(org, &event.data, version).await?,
                Record::Membership(m) => tx.upsert_membership(m, &event.data, version).await?,
            };
            if written { outcome::APPLIED } else { outcome::SKIPPED }
        }
    };
    Ok(outcome)
}

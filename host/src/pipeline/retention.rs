//! The inbox's history: done events are deleted once they were processed
//! longer ago than `inbox.keep_done_days`, so that the database does not grow
//! with every event for good.
//!
//! Owns: when a pass runs and where it stops. Must not: hold SQL (the store
//! does), or delete any event that is not done: unfinished events are still to
//! be applied, and dead ones wait for an operator.
//!
//! A pass walks the inbox from its oldest row in `seq` order, a step of
//! [`PRUNE_STEP_ROWS`] rows at a time, and stops at the first step that holds
//! an event received at or after the cut-off: an event processed before the
//! cut-off was received before it, and events are numbered about as they are
//! received, so what follows is too new. A pass therefore reads the old events
//! it deletes, the old ones it keeps (dead or unfinished, which are few), and
//! at most one step more, however long the history it keeps.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::clock;
use crate::store::inbox::PRUNE_STEP_ROWS;
use crate::store::{Store, StoreError};

/// How often a running host prunes; it also prunes when it starts.
pub const PRUNE_EVERY: Duration = Duration::from_secs(60 * 60);

/// What one pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Pruned {
    pub deleted: u64,
    /// Rows it looked at, deleted or kept.
    pub rows: u64,
}

/// One pass: deletes the done events processed before `cutoff` (unix ms).
/// Stops early, between steps, once `stop` is cancelled.
pub async fn prune_once(store: &Store, cutoff: i64, stop: &CancellationToken) -> Result<Pruned, StoreError> {
    let mut pruned = Pruned::default();
    let mut after = i64::MIN;
    while !stop.is_cancelled() {
        let step = store.prune_done_step(after, cutoff).await?;
        pruned.deleted += step.deleted;
        pruned.rows += step.rows;
        let whole_step_old = step.newest_received.is_some_and(|at| at < cutoff);
        if step.rows < PRUNE_STEP_ROWS as u64 || !whole_step_old {
            break;
        }
        after = step.last;
    }
    Ok(pruned)
}

/// Prunes at start and then every [`PRUNE_EVERY`], keeping done events for
/// `keep`, until `stop` is cancelled. A failed pass is logged and tried again
/// at the next one; nothing depends on it.
pub async fn prune_periodically(store: Store, keep: Duration, stop: CancellationToken) {
    let keep_ms = i64::try_from(keep.as_millis()).unwrap_or(i64::MAX);
    loop {
        let cutoff = clock::now_ms().saturating_sub(keep_ms);
        match prune_once(&store, cutoff, &stop).await {
            Ok(p) if p.deleted > 0 => info!(
                deleted = p.deleted,
                processed_before = %clock::format_ms(cutoff),
                "deleted done events older than inbox.keep_done_days"
            ),
            Ok(_) => {}
            Err(e) => warn!(error = %e, "could not delete old done events; trying again at the next pass"),
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(PRUNE_EVERY) => {}
        }
    }
}

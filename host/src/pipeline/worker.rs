//! The worker: claims due events from the inbox and applies them, after the
//! webhook has been acknowledged.
//!
//! Owns: batching (one transaction per batch, a savepoint per event), the order
//! within a batch, running the handler inside the event's savepoint, retry with
//! exponential backoff and jitter, and dead-lettering. Must not: hold SQL or
//! interpret events itself (see [`super::sync`] and [`crate::store`]).
//!
//! Per event, the sync of the host's own tables, the handler's writes and the
//! event's completion commit together or not at all: a failed event (a sync
//! error, a handler error, trap, deadline or memory cap) is rolled back to its
//! savepoint and recorded as failed, and the rest of the batch still commits.
//! Once an event fails, later events of the same subject wait for it.
//!
//! It runs on a blocking thread: handlers run synchronously in wasmtime and
//! reach the batch's transaction while they run.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::sync::{self, ApplyError, outcome};
use crate::clock;
use crate::deploy::Deployment;
use crate::runtime::{GuestEvent, HandlerError};
use crate::settings::WorkerSettings;
use crate::store::documents::Indexes;
use crate::store::exec::{SyncDb, SyncTx};
use crate::store::inbox::{self, ClaimedEvent, Status};
use crate::store::{Store, StoreError};
use crate::workos::event::{Event, Record, RecordKind, SyncAction, User};

/// Backoff after the worker itself fails (for example, the database is down).
const LOOP_RETRY_BASE: Duration = Duration::from_millis(100);
const LOOP_RETRY_MAX: Duration = Duration::from_secs(30);

/// Stored error messages are cut to this many characters (an error must not bloat the inbox).
const MAX_ERROR_LEN: usize = 2000;

pub struct Worker {
    db: SyncDb,
    settings: WorkerSettings,
    /// The tenant's handler versions; each event runs on the version live when it starts.
    deployment: Option<Arc<Deployment>>,
    /// Notified by ingest after each commit, so new events are picked up at once.
    wake: Arc<Notify>,
    handle: Handle,
}

/// Why one event did not complete.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error(transparent)]
    Handler(#[from] HandlerError),
}

impl Failure {
    fn is_permanent(&self) -> bool {
        matches!(self, Failure::Apply(e) if e.is_permanent())
    }
}

impl Worker {
    pub fn new(
        store: &Store,
        settings: WorkerSettings,
        deployment: Option<Arc<Deployment>>,
        wake: Arc<Notify>,
        handle: Handle,
    ) -> Result<Worker, StoreError> {
        Ok(Worker { db: store.sync_db(handle.clone())?, settings, deployment, wake, handle })
    }

    /// Runs until `shutdown` is cancelled; a batch in progress is finished first.
    /// Blocking: run it with `spawn_blocking`.
    pub fn run(mut self, shutdown: CancellationToken) {
        let mut loop_failures = 0u32;
        while !shutdown.is_cancelled() {
            let wait = match self.run_batch() {
                Ok(n) if n >= self.settings.batch_size => {
                    loop_failures = 0;
                    continue; // more may be waiting
                }
                Ok(_) => {
                    loop_failures = 0;
                    self.settings.poll_interval
                }
                Err(e) => {
                    loop_failures += 1;
                    let delay = backoff(LOOP_RETRY_BASE, LOOP_RETRY_MAX, loop_failures);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "worker could not process events; will retry");
                    delay
                }
            };
            let wake = self.wake.clone();
            self.handle.block_on(async {
                tokio::select! {
                    () = wake.notified() => {}
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => {}
                }
            });
        }
        info!("worker stopped");
    }

    /// Claims and processes one batch; returns how many events it claimed.
    pub fn run_batch(&mut self) -> Result<usize, StoreError> {
        let now = clock::now_ms();
        // Held until the batch commits: the indexes this batch's writes maintain
        // cannot change under it (see `deploy`). Taken before the write gate.
        let deployment = self.deployment.clone();
        let maintained = deployment.as_ref().map(|d| d.writing());
        let mut tx = self.db.begin()?;
        let events = inbox::claim_due(&mut tx, now, self.settings.batch_size as i64)?;
        if events.is_empty() {
            return Ok(0); // dropping the transaction rolls it back
        }
        let mut blocked: HashSet<&str> = HashSet::new();
        for event in &events {
            if blocked.contains(event.subject.as_str()) {
                continue; // an older event of this subject failed: keep the order
            }
            tx.savepoint("event")?;
            let (back, result) = self.process(tx, event, maintained.as_deref(), now);
            tx = back.ok_or_else(|| StoreError::Corrupt("a handler call lost its transaction".into()))?;
            match result {
                Ok((outcome, logs)) => {
                    tx.release("event")?;
                    inbox::mark_done(&mut tx, event.seq, outcome, logs.as_deref(), now)?;
                }
                Err((failure, logs)) => {
                    tx.rollback_to("event")?;
                    blocked.insert(&event.subject);
                    self.record_failure(&mut tx, event, &failure, logs.as_deref(), now)?;
                }
            }
        }
        tx.commit()?;
        Ok(events.len())
    }

    /// Syncs the host's tables and runs the handler for one event, inside `tx`.
    /// Gives the transaction back with the outcome and the handler's log (JSON).
    #[allow(clippy::type_complexity)]
    fn process(
        &self,
        mut tx: SyncTx,
        claimed: &ClaimedEvent,
        maintained: Option<&Arc<Indexes>>,
        now: i64,
    ) -> (Option<SyncTx>, Result<(&'static str, Option<String>), (Failure, Option<String>)>) {
        let parsed = Event::parse(claimed.payload.as_bytes()).and_then(|event| Ok((event.sync_action()?, event)));
        let (action, event) = match parsed {
            Ok(parsed) => parsed,
            Err(e) => return (Some(tx), Err((ApplyError::from(e).into(), None))),
        };
        let synced = match sync::apply(&mut tx, &claimed.tenant_id, &event, &action, now) {
            Ok(outcome) => outcome,
            Err(e) => return (Some(tx), Err((e.into(), None))),
        };
        let deployment = self.deployment.as_ref().filter(|d| d.tenant() == claimed.tenant_id);
        let live = deployment.and_then(|d| Some((d, d.current()?))).filter(|(_, l)| l.module.handles_events());
        let (Some((deployment, live)), Some(maintained)) = (live, maintained) else {
            return (Some(tx), Ok((synced, None)));
        };
        let guest_event = guest_event(&event, action, claimed);
        let invoked = deployment.runtime().handle_event(&live.module, tx, &claimed.tenant_id, maintained, &guest_event);
        let logs = Some(serde_json::to_string(&invoked.logs).unwrap_or_else(|_| "[]".into()));
        let result = match invoked.result {
            Ok(()) => Ok((if synced == outcome::RECORDED { outcome::HANDLED } else { synced }, logs)),
            Err(e) => Err((e.into(), logs)),
        };
        (invoked.tx, result)
    }

    fn record_failure(
        &self,
        tx: &mut SyncTx,
        event: &ClaimedEvent,
        e: &Failure,
        logs: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        let attempts = u32::try_from(event.attempts).unwrap_or(u32::MAX).saturating_add(1);
        let message = truncate(&e.to_string(), MAX_ERROR_LEN);
        if e.is_permanent() || attempts >= self.settings.max_attempts {
            warn!(event_id = %event.event_id, attempts, error = %message, "event dead-lettered");
            inbox::mark_failed(tx, event.seq, Status::Dead, now, &message, logs)
        } else {
            let delay = backoff(self.settings.retry_base, self.settings.retry_max, attempts);
            let next = now.saturating_add(delay.as_millis() as i64);
            warn!(event_id = %event.event_id, attempts, retry_in_ms = delay.as_millis() as u64, error = %message, "event failed; will retry");
            inbox::mark_failed(tx, event.seq, Status::Failed, next, &message, logs)
        }
    }
}

/// The event as the WIT `events.event` record.
fn guest_event(event: &Event, action: SyncAction, claimed: &ClaimedEvent) -> GuestEvent {
    let user = match action {
        SyncAction::Upsert(record) => match *record {
            Record::User(u) => Some(u),
            _ => None,
        },
        // A trimmed `user.deleted` carries only the id.
        SyncAction::Delete { kind: RecordKind::User, id } => serde_json::from_str::<User>(event.data.get())
            .or_else(|_| serde_json::from_value::<User>(serde_json::json!({ "id": id })))
            .ok(),
        _ => None,
    };
    GuestEvent {
        id: event.id.clone(),
        event_type: event.event.clone(),
        data: event.data.get().to_string(),
        created_at: event.created_at_ms.map(clock::format_ms),
        user: user.map(super::guest_user),
        attempt: u32::try_from(claimed.attempts).unwrap_or(u32::MAX).saturating_add(1),
    }
}

/// `base * 2^(attempt-1)`, capped at `max`, then scaled by a random factor in
/// [0.5, 1] so that many retries do not fire at the same instant.
pub fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    exp.mul_f64(rand::random_range(0.5..=1.0))
}

fn truncate(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_stops_at_the_cap() {
        let base = Duration::from_secs(1);
        let max = Duration::from_secs(60);
        for attempt in 1..=8u32 {
            let full = Duration::from_secs(1 << (attempt - 1)).min(max);
            let d = backoff(base, max, attempt);
            assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} not in [{:?}, {full:?}]", full / 2);
        }
        assert!(backoff(base, max, 1000) <= max);
        let samples: HashSet<Duration> = (0..20).map(|_| backoff(base, max, 5)).collect();
        assert!(samples.len() > 1, "no jitter");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("ok", 5), "ok");
    }
}

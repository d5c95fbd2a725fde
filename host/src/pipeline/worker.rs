//! The worker: claims due events from the inbox and applies them, after the
//! webhook has been acknowledged.
//!
//! Owns: batching (one transaction per batch), per-subject order within a batch,
//! retry with exponential backoff and jitter, and dead-lettering. Must not: hold
//! SQL or interpret events itself (see [`super::sync`]).
//!
//! A batch is first applied optimistically in one transaction. If any event in it
//! fails, the batch is rolled back and redone with a savepoint per event, so the
//! failing event is recorded as failed and the others still commit. Once an event
//! fails, later events of the same subject wait for it (oldest first).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::sync::{self, ApplyError};
use crate::clock;
use crate::settings::WorkerSettings;
use crate::store::inbox::{ClaimedEvent, Status};
use crate::store::{Store, StoreError, Tx};

/// Backoff after the worker itself fails (for example, the database is down).
const LOOP_RETRY_BASE: Duration = Duration::from_millis(100);
const LOOP_RETRY_MAX: Duration = Duration::from_secs(30);

/// Stored error messages are cut to this many characters (an error must not bloat the inbox).
const MAX_ERROR_LEN: usize = 2000;

pub struct Worker {
    store: Store,
    settings: WorkerSettings,
    /// Notified by ingest after each commit, so new events are picked up at once.
    wake: Arc<Notify>,
}

impl Worker {
    pub fn new(store: Store, settings: WorkerSettings, wake: Arc<Notify>) -> Worker {
        Worker { store, settings, wake }
    }

    /// Runs until `shutdown` is cancelled; a batch in progress is finished first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut loop_failures = 0u32;
        while !shutdown.is_cancelled() {
            match self.run_batch().await {
                Ok(n) if n >= self.settings.batch_size => {
                    loop_failures = 0;
                    continue; // more may be waiting
                }
                Ok(_) => loop_failures = 0,
                Err(e) => {
                    loop_failures += 1;
                    let delay = backoff(LOOP_RETRY_BASE, LOOP_RETRY_MAX, loop_failures);
                    warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "worker could not process events; will retry");
                    tokio::select! {
                        () = tokio::time::sleep(delay) => continue,
                        () = shutdown.cancelled() => break,
                    }
                }
            }
            tokio::select! {
                () = self.wake.notified() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                () = shutdown.cancelled() => {}
            }
        }
        info!("worker stopped");
    }

    /// Claims and applies one batch; returns how many events it claimed.
    pub async fn run_batch(&self) -> Result<usize, StoreError> {
        let now = clock::now_ms();
        let limit = self.settings.batch_size as i64;
        let mut tx = self.store.begin().await?;
        let events = tx.claim_due(now, limit).await?;
        if events.is_empty() {
            tx.rollback().await?;
            return Ok(0);
        }
        match apply_all(&mut tx, &events, now).await {
            Ok(done) => {
                tx.mark_done(&done, now).await?;
                tx.commit().await?;
            }
            Err(e) => {
                debug!(error = %e, "batch failed; applying its events one at a time");
                tx.rollback().await?;
                let mut tx = self.store.begin().await?;
                let events = tx.claim_due(now, limit).await?;
                self.apply_isolated(&mut tx, &events, now).await?;
                tx.commit().await?;
            }
        }
        Ok(events.len())
    }

    async fn apply_isolated(&self, tx: &mut Tx, events: &[ClaimedEvent], now: i64) -> Result<(), StoreError> {
        let mut blocked: HashSet<&str> = HashSet::new();
        let mut done = Vec::with_capacity(events.len());
        for event in events {
            if blocked.contains(event.subject.as_str()) {
                continue; // an older event of this subject failed: keep the order
            }
            tx.savepoint().await?;
            match sync::apply(tx, event, now).await {
                Ok(outcome) => {
                    tx.release_savepoint().await?;
                    done.push((event.seq, outcome));
                }
                Err(e) => {
                    tx.rollback_to_savepoint().await?;
                    blocked.insert(&event.subject);
                    self.record_failure(tx, event, &e, now).await?;
                }
            }
        }
        tx.mark_done(&done, now).await
    }

    async fn record_failure(
        &self,
        tx: &mut Tx,
        event: &ClaimedEvent,
        e: &ApplyError,
        now: i64,
    ) -> Result<(), StoreError> {
        let attempts = u32::try_from(event.attempts).unwrap_or(u32::MAX).saturating_add(1);
        let message = truncate(&e.to_string(), MAX_ERROR_LEN);
        if e.is_permanent() || attempts >= self.settings.max_attempts {
            warn!(event_id = %event.event_id, attempts, error = %message, "event dead-lettered");
            tx.mark_failed(event.seq, Status::Dead, now, &message).await
        } else {
            let delay = backoff(self.settings.retry_base, self.settings.retry_max, attempts);
            let next = now.saturating_add(delay.as_millis() as i64);
            warn!(event_id = %event.event_id, attempts, retry_in_ms = delay.as_millis() as u64, error = %message, "event failed; will retry");
            tx.mark_failed(event.seq, Status::Failed, next, &message).await
        }
    }
}

async fn apply_all(tx: &mut Tx, events: &[ClaimedEvent], now: i64) -> Result<Vec<(i64, &'static str)>, ApplyError> {
    let mut done = Vec::with_capacity(events.len());
    for event in events {
        done.push((event.seq, sync::apply(tx, event, now).await?));
    }
    Ok(done)
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

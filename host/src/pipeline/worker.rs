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
//! Fairness across tenants: the worker works in rounds. A round is the list of
//! tenants with due events; each gets one turn (one batch of its own events,
//! under its own limits) before any gets a second, and the next round starts
//! after the tenant that had the last turn. Consecutive turns share one
//! transaction (one commit for many tenants with a few events each; see
//! [`COMMIT_AFTER`] for when it commits sooner, as before a slow tenant's
//! turn), which takes at most `worker.batch_size` events, and no new event
//! once it has run for [`TURN_BUDGET`]: the tenants whose turn has not come go
//! first in the next one. So an event waits at most one turn of every other
//! tenant with due events, and a transaction lasts at most the budget plus one
//! event (at most that tenant's event deadline), however large a tenant's
//! backlog or however slow its handler.
//!
//! With several host processes on Postgres, each has its worker, and a tenant
//! with a cap on worker processes (`max_worker_processes`) has its turn in at
//! most that many of them at once: each turn holds one of the tenant's slots
//! (an advisory lock) until its transaction commits, and a process that finds
//! every slot taken skips the tenant in that round. So one tenant cannot hold
//! every process's worker while others wait.
//!
//! It runs on a blocking thread: handlers run synchronously in wasmtime and
//! reach the batch's transaction while they run.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
use crate::store::{Store, StoreError, tenants as stored_tenants};
use crate::tenants::{Tenant, Tenants};
use crate::workos::event::{Event, Record, RecordKind, SyncAction, User};

/// Backoff after the worker itself fails (for example, the database is down).
const LOOP_RETRY_BASE: Duration = Duration::from_millis(100);
const LOOP_RETRY_MAX: Duration = Duration::from_secs(30);

/// A worker transaction takes no new event after running this long (each
/// tenant's turn still gets its first event).
pub const TURN_BUDGET: Duration = Duration::from_millis(500);
/// A worker transaction commits between turns once it has run this long, and
/// before the turn of a tenant whose last turn ran this long, so that what the
/// turns before did is visible without waiting for a (maybe slow) turn: with a
/// neighbour whose handler runs to its deadline, another tenant's finished
/// events used to become visible only with the commit after the neighbour's
/// next turn (measured on Postgres with 200 ms deadlines: 1.3 s after they were
/// sent, 0.6 s with this; tested on both backends with 2 s deadlines). On
/// SQLite it also commits within a turn, before an event, once it has run this
/// long (the claimed events stay claimable: one process applies events), so
/// webhooks do not wait at the write gate behind a long turn. On Postgres a
/// commit releases the claimed events' row locks, so only between turns.
const COMMIT_AFTER: Duration = Duration::from_millis(20);
/// At most this many tenants' turns share one transaction.
const TENANTS_PER_TRANSACTION: usize = 64;

/// Stored error messages are cut to this many characters (an error must not bloat the inbox).
const MAX_ERROR_LEN: usize = 2000;

pub struct Worker {
    db: SyncDb,
    settings: WorkerSettings,
    /// Every tenant's settings and handler versions; each event runs on its
    /// tenant's version live when it starts.
    tenants: Arc<Tenants>,
    /// Tenants still to have their turn in this round.
    round: VecDeque<String>,
    /// Events claimed so far in this round.
    round_claimed: usize,
    /// The tenant that had the last turn: the next round starts after it.
    last_turn: Option<String>,
    /// Tenants whose last turn ran [`COMMIT_AFTER`] or longer.
    slow_turns: HashSet<String>,
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
        tenants: Arc<Tenants>,
        wake: Arc<Notify>,
        handle: Handle,
    ) -> Result<Worker, StoreError> {
        let db = store.sync_db(handle.clone())?;
        Ok(Worker {
            db,
            settings,
            tenants,
            round: VecDeque::new(),
            round_claimed: 0,
            last_turn: None,
            slow_turns: HashSet::new(),
            wake,
            handle,
        })
    }

    /// Runs until `shutdown` is cancelled; a batch in progress is finished first.
    /// Blocking: run it with `spawn_blocking`.
    pub fn run(mut self, shutdown: CancellationToken) {
        let mut loop_failures = 0u32;
        while !shutdown.is_cancelled() {
            let wait = match self.run_turn() {
                Ok(true) => {
                    loop_failures = 0;
                    continue; // more may be waiting
                }
                Ok(false) => {
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

    /// Gives the next tenants of the round their turns, in one transaction,
    /// starting a new round when the last one is over. Returns whether more
    /// work may be waiting: `false` once a whole round claimed nothing.
    pub fn run_turn(&mut self) -> Result<bool, StoreError> {
        if self.round.is_empty() {
            // Behind the write gate (SQLite), so webhooks whose commit is queued
            // there land first and their tenants join this round.
            let due = {
                let mut tx = self.db.begin()?;
                inbox::due_tenants(&mut tx, clock::now_ms())?
            };
            if due.is_empty() {
                return Ok(false);
            }
            self.round = next_round(due, self.last_turn.as_deref());
            self.round_claimed = 0;
        }
        let take = self.round.len().min(TENANTS_PER_TRANSACTION);
        let chunk: Vec<String> = self.round.drain(..take).collect();
        self.round_claimed += self.run_turns(chunk)?;
        Ok(!self.round.is_empty() || self.round_claimed > 0)
    }

    /// Gives each tenant of `chunk` its turn, one after the other, in one
    /// transaction (one commit for many small turns). Once the transaction has
    /// run for [`TURN_BUDGET`] it takes no new event, and once it has taken
    /// `worker.batch_size` events no new tenant; the tenants that had no turn
    /// go back to the front of the round. Returns how many events it processed.
    fn run_turns(&mut self, chunk: Vec<String>) -> Result<usize, StoreError> {
        let mut turns = Vec::with_capacity(chunk.len());
        let mut unknown = Vec::new();
        for slug in &chunk {
            let Some(tenant) = self.tenants.get(slug) else {
                unknown.push(slug);
                continue;
            };
            match self.tenants.deployment(slug) {
                Ok(deployment) => turns.push((tenant, deployment)),
                // Its events wait: applying them without its handler would skip the handler's effects.
                Err(e) => {
                    warn!(tenant = %slug, error = %e, "the tenant's handler versions could not be opened; its events wait")
                }
            }
        }
        if !unknown.is_empty() {
            self.purge_deleted(&unknown)?;
        }
        if turns.is_empty() {
            return Ok(0);
        }
        let now = clock::now_ms();
        // Held until the commit: the indexes these turns' writes maintain cannot
        // change under them (see `deploy`). Taken before the write gate.
        let maintained: Vec<_> = turns.iter().map(|(_, d)| d.writing()).collect();
        let batch = self.settings.batch_size;
        let mut tx = self.db.begin()?;
        let started = Instant::now();
        // SQLite: one claim for every tenant of the chunk (one process applies
        // events). If that claim was cut by its limit, a tenant it returned nothing for
        // claims on its own when its turn comes.
        let mut claimed_together: Option<(HashMap<String, Vec<ClaimedEvent>>, bool)> = None;
        if !tx.is_postgres() {
            let slugs: Vec<&str> = turns.iter().map(|(t, _)| t.slug.as_str()).collect();
            let events = inbox::claim_due_of_many(&mut tx, &slugs, now, batch as i64)?;
            let cut = events.len() >= batch;
            let mut by_tenant: HashMap<String, Vec<ClaimedEvent>> = HashMap::new();
            for event in events {
                by_tenant.entry(event.tenant_id.clone()).or_default().push(event);
            }
            claimed_together = Some((by_tenant, cut));
        }
        let mut processed = 0;
        let sqlite = claimed_together.is_some();
        let mut since_commit = Instant::now();
        let mut committed = 0;
        // The turn under way: whose, and since when.
        let mut turn: Option<(&str, Instant)> = None;
        for (i, (tenant, deployment)) in turns.iter().enumerate() {
            if i > 0 && (started.elapsed() >= TURN_BUDGET || processed >= batch) {
                // Their turns come first in the next transaction.
                for (t, _) in turns[i..].iter().rev() {
                    self.round.push_front(t.slug.clone());
                }
                break;
            }
            if let Some((slug, began)) = turn.take() {
                self.note_turn(slug, began.elapsed());
            }
            if processed > committed
                && (since_commit.elapsed() >= COMMIT_AFTER || self.slow_turns.contains(&tenant.slug))
            {
                // What the turns before did becomes visible now, not after this
                // (maybe slow) one. On Postgres their claimed events are all
                // finished, or left for a later turn, which the commit unlocks.
                tx.commit()?;
                tx = self.db.begin()?;
                since_commit = Instant::now();
                committed = processed;
            }
            turn = Some((&tenant.slug, Instant::now()));
            self.last_turn = Some(tenant.slug.clone());
            // Deleted since `turns` was read (here, or through another process
            // that this one has not heard from yet): none of its events may be
            // applied. On Postgres this also holds the tenant until the commit.
            let Some(incarnation) = stored_tenants::hold(&mut tx, &tenant.slug)? else {
                stored_tenants::purge_events(&mut tx, &tenant.slug)?;
                continue;
            };
            // The slug names a tenant created since this process opened its
            // handler versions (through another process, not heard of here
            // yet): that handler must not run on the new tenant's events.
            // They wait for the next reload.
            if deployment.tenant_created_at() != incarnation {
                continue;
            }
            // Already having turns in as many other processes as it may: they
            // serve it, this one serves the others.
            if let Some(cap) = tenant.worker_processes
                && !stored_tenants::take_turn_slot(&mut tx, &tenant.slug, cap)?
            {
                continue;
            }
            let together =
                claimed_together.as_mut().and_then(|(by_tenant, cut)| match by_tenant.remove(&tenant.slug) {
                    Some(events) => Some(events),
                    None if *cut => None,
                    None => Some(Vec::new()),
                });
            let events = match together {
                Some(events) => events,
                // Always the same LIMIT: a new value would make SQLite prepare the statement again.
                None => inbox::claim_due(&mut tx, &tenant.slug, now, batch as i64)?,
            };
            let room = batch.saturating_sub(processed).max(1);
            let mut blocked: HashSet<&str> = HashSet::new();
            for (n, event) in events.iter().enumerate() {
                if n > 0 && (n >= room || started.elapsed() >= TURN_BUDGET) {
                    break; // the rest stay due, for this tenant's next turn
                }
                processed += 1;
                if blocked.contains(event.subject.as_str()) {
                    continue; // an older event of this subject failed: keep the order
                }
                if sqlite && since_commit.elapsed() >= COMMIT_AFTER && processed > committed + 1 {
                    // Let the webhooks waiting at the write gate in, and make
                    // what is done visible, before the next (maybe slow) event.
                    tx.commit()?;
                    tx = self.db.begin()?;
                    since_commit = Instant::now();
                    committed = processed - 1;
                    match stored_tenants::hold(&mut tx, &tenant.slug)? {
                        Some(still) if still == incarnation => {}
                        // Deleted and created again meanwhile: as above, the rest wait.
                        Some(_) => break,
                        None => {
                            // Deleted while the write gate was open: the rest go with it.
                            stored_tenants::purge_events(&mut tx, &tenant.slug)?;
                            break;
                        }
                    }
                }
                if event.tenant_created_at.is_some_and(|created| created != incarnation) {
                    // Accepted for a tenant of this slug that was deleted
                    // (while the event was in flight or spilled) before this
                    // one was created: it is not this tenant's to apply.
                    inbox::delete_event(&mut tx, event.seq)?;
                    info!(tenant = %tenant.slug, event_id = %event.event_id,
                        "deleted an event accepted for an earlier tenant of this slug, unapplied");
                    continue;
                }
                tx.savepoint("event")?;
                let (back, result) = self.process(tx, event, tenant, deployment, &maintained[i], now);
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
        }
        tx.commit()?;
        if let Some((slug, began)) = turn {
            self.note_turn(slug, began.elapsed());
        }
        Ok(processed)
    }

    /// Remembers whether `slug`'s turn ran [`COMMIT_AFTER`] or longer.
    fn note_turn(&mut self, slug: &str, took: Duration) {
        if took >= COMMIT_AFTER {
            self.slow_turns.insert(slug.to_string());
        } else if !self.slow_turns.is_empty() {
            self.slow_turns.remove(slug);
        }
    }

    /// Tenants with events that this process does not know: created by
    /// another process (their events wait for the next reload here), or
    /// deleted (their events, accepted while the deletion was under way or by
    /// a process that had not yet heard of it, are deleted too).
    fn purge_deleted(&mut self, slugs: &[&String]) -> Result<(), StoreError> {
        let mut tx = self.db.begin()?;
        for slug in slugs {
            if stored_tenants::hold(&mut tx, slug)?.is_none() {
                let purged = stored_tenants::purge_events(&mut tx, slug)?;
                info!(tenant = %slug, events = purged, "deleted the events of a tenant that no longer exists");
            }
        }
        tx.commit()
    }

    /// Syncs the host's tables and runs the handler for one event, inside `tx`.
    /// Gives the transaction back with the outcome and the handler's log (JSON).
    #[allow(clippy::type_complexity)]
    fn process(
        &self,
        mut tx: SyncTx,
        claimed: &ClaimedEvent,
        tenant: &Tenant,
        deployment: &Deployment,
        maintained: &Arc<Indexes>,
        now: i64,
    ) -> (Option<SyncTx>, Result<(&'static str, Option<String>), (Failure, Option<String>)>) {
        let event = match Event::parse(claimed.payload.as_bytes()) {
            Ok(event) => event,
            Err(e) => return (Some(tx), Err((ApplyError::from(e).into(), None))),
        };
        let synced = match sync::apply(&mut tx, &claimed.tenant_id, &event, event.sync_action(), now) {
            Ok(outcome) => outcome,
            Err(e) => return (Some(tx), Err((e.into(), None))),
        };
        let Some(live) = deployment.current().filter(|l| l.module.handles_events()) else {
            return (Some(tx), Ok((synced, None)));
        };
        let guest_event = guest_event(&event, claimed);
        let invoked = deployment.runtime().handle_event(
            &live.module,
            tx,
            &tenant.slug,
            &live.limits_over(&tenant.limits),
            maintained,
            &guest_event,
        );
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

/// The due tenants (sorted by slug) in the order of their turns: those after
/// `last` first, so a tenant whose events arrived during a round is not passed
/// over again by the tenant that just had its turn.
fn next_round(mut due: Vec<String>, last: Option<&str>) -> VecDeque<String> {
    let split = last.map_or(0, |last| due.partition_point(|slug| slug.as_str() <= last));
    due.rotate_left(split);
    due.into()
}

/// The event as the WIT `events.event` record.
fn guest_event(event: &Event, claimed: &ClaimedEvent) -> GuestEvent {
    let user = match event.sync_action() {
        SyncAction::Upsert(record) => match &**record {
            Record::User(u) => Some(u.clone()),
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
    fn a_round_starts_after_the_tenant_that_had_the_last_turn() {
        let due = || vec!["acme".to_string(), "globex".to_string(), "noisy".to_string(), "quiet".to_string()];
        assert_eq!(next_round(due(), None), ["acme", "globex", "noisy", "quiet"]);
        assert_eq!(next_round(due(), Some("noisy")), ["quiet", "acme", "globex", "noisy"]);
        assert_eq!(next_round(due(), Some("quiet")), ["acme", "globex", "noisy", "quiet"]);
        assert_eq!(next_round(due(), Some("hooli")), ["noisy", "quiet", "acme", "globex"], "a tenant gone since");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("héllo", 2), "hé…");
        assert_eq!(truncate("ok", 5), "ok");
    }
}

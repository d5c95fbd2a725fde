//! Group commit: verified events from many concurrent requests are written to the
//! inbox together, in one statement and one commit (one fsync on SQLite), and each
//! request is answered only after that commit is durable. On SQLite the fsync
//! happens on a thread of its own, after the write gate is released, while the
//! writer goes on with the next batch; one fsync covers every batch committed
//! before it. A batch that would wait long for SQLite's write gate (a handler
//! running in the worker's transaction) goes to the spill file instead and is
//! moved into the inbox at the writer's next turn (see [`crate::store::spill`]).
//!
//! Owns: the submission queue and the single writer task. Must not: acknowledge an
//! event before it is durable, or drop a submission without answering it.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::Arc;

use tokio::sync::{Notify, OwnedMutexGuard, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error, warn};

use crate::store::StoreError;
use crate::store::exec::{LogHealth, Unsynced, Writer};
use crate::store::inbox::{InboxWriter, MAX_INSERT_ROWS, NewEvent};
use crate::store::sqlite_writer::{SqliteInboxWriter, Stored};

/// Submissions waiting for the writer. When full, requests wait their turn
/// (backpressure) instead of piling up memory.
const QUEUE_CAPACITY: usize = 8192;

/// Whether a stored event was new or a redelivery of one already in the inbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    New,
    Duplicate,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum IngestError {
    #[error("the inbox could not store the event")]
    Store(#[source] Arc<StoreError>),
    #[error("the host is shutting down")]
    Closed,
}

type Reply = oneshot::Sender<Result<Accepted, IngestError>>;

struct Submission {
    event: NewEvent,
    reply: Reply,
}

/// The sending side, cheap to clone into every request.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Submission>,
}

impl Ingest {
    /// Starts the writer. It runs until every `Ingest` clone is dropped, then
    /// finishes what is queued and ends. `stored` is notified after each commit.
    ///
    /// On SQLite the writer is a blocking thread that takes batches straight from
    /// the queue, so no async scheduling sits between one commit and the next.
    pub fn start(writer: InboxWriter, stored: Arc<Notify>) -> (Ingest, JoinHandle<()>) {
        let (queue, mut rx) = mpsc::channel::<Submission>(QUEUE_CAPACITY);
        let task = match writer {
            InboxWriter::Sqlite(mut conn) => tokio::task::spawn_blocking(move || {
                let (to_sync, synced) = std::sync::mpsc::sync_channel::<Written>(UNSYNCED_BATCHES);
                let health = conn.health();
                let syncer = std::thread::Builder::new()
                    .name("inbox-sync".into())
                    .spawn(move || sync_and_answer(&synced, &health))
                    .expect("the inbox sync thread starts");
                let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
                let runtime = tokio::runtime::Handle::current();
                // While events are spilled: the writer's place in the gate's
                // queue, kept while it spills more, so that it gets a turn to
                // move them however busy the gate is.
                let mut queued: Option<Turn> = None;
                loop {
                    let received = if conn.holds_spilled() {
                        let place = queued.get_or_insert_with(|| Box::pin(conn.gate().lock_owned()));
                        let next = runtime.block_on(async {
                            tokio::select! {
                                biased;
                                turn = place => Err(turn),
                                received = rx.recv_many(&mut batch, MAX_INSERT_ROWS) => Ok(received),
                            }
                        });
                        match next {
                            Ok(received) => received,
                            Err(turn) => {
                                queued = None;
                                if !unspill(&mut conn, turn, &stored) {
                                    std::thread::sleep(UNSPILL_RETRY);
                                }
                                continue;
                            }
                        }
                    } else {
                        rx.blocking_recv_many(&mut batch, MAX_INSERT_ROWS)
                    };
                    if received == 0 {
                        break;
                    }
                    let (rows, replies) = split(&mut batch);
                    match conn.write(&rows) {
                        Ok((inserted, place)) => {
                            let unsynced = match place {
                                Stored::Committed(unsynced) => Some(unsynced),
                                Stored::Spilled => None,
                            };
                            to_sync.send(Written { unsynced, inserted, replies }).expect("the inbox sync thread runs")
                        }
                        Err(e) => answer(replies, Err(Arc::new(e))),
                    }
                    stored.notify_one();
                }
                // What is spilled goes into the inbox before the writer stops
                // (the worker still runs, so the gate comes free), and the
                // database holds every event for the CLI; what cannot be moved
                // soon (a handler still holds the gate) stays durable in the
                // spill file and is moved at the next start.
                while conn.holds_spilled() {
                    let place = queued.take().unwrap_or_else(|| Box::pin(conn.gate().lock_owned()));
                    let Ok(turn) = runtime.block_on(tokio::time::timeout(LAST_UNSPILL_WAIT, place)) else {
                        warn!("spilled webhooks stay in the spill file until the next start: the write gate is taken");
                        break;
                    };
                    if !unspill(&mut conn, turn, &stored) {
                        break;
                    }
                }
                // Every batch written is answered before the writer counts as stopped.
                drop(to_sync);
                if syncer.join().is_err() {
                    error!("the inbox sync thread panicked");
                }
                debug!("ingest writer stopped: no more submissions");
            }),
            InboxWriter::Pool(store) => tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
                while rx.recv_many(&mut batch, MAX_INSERT_ROWS).await > 0 {
                    let (rows, replies) = split(&mut batch);
                    answer(replies, store.insert_events(&rows).await.map_err(Arc::new));
                    stored.notify_one();
                }
                debug!("ingest writer stopped: no more submissions");
            }),
        };
        (Ingest { queue }, task)
    }

    /// Stores one event durably; returns once it is committed.
    pub async fn submit(&self, event: NewEvent) -> Result<Accepted, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Submission { event, reply }).await.map_err(|_| IngestError::Closed)?;
        answer.await.map_err(|_| IngestError::Closed)?
    }
}

/// A request waiting for its event's batch: which row of the batch holds the
/// event, and whether the request sent that row (a redelivery can arrive
/// twice in one batch; only its first copy is written).
struct Waiting {
    row: usize,
    first: bool,
    reply: Reply,
}

/// Splits a batch into the rows to write and the requests that wait for them.
fn split(batch: &mut Vec<Submission>) -> (Vec<NewEvent>, Vec<Waiting>) {
    let mut placed = Vec::with_capacity(batch.len());
    {
        let mut row_of: HashMap<(&str, &str), usize> = HashMap::with_capacity(batch.len());
        for s in batch.iter() {
            let next = row_of.len();
            match row_of.entry((&s.event.tenant_id, &s.event.event_id)) {
                Entry::Occupied(e) => placed.push((*e.get(), false)),
                Entry::Vacant(e) => {
                    e.insert(next);
                    placed.push((next, true));
                }
            }
        }
    }
    let mut rows = Vec::with_capacity(batch.len());
    let mut waiting = Vec::with_capacity(batch.len());
    for (s, (row, first)) in batch.drain(..).zip(placed) {
        if first {
            rows.push(s.event);
        }
        waiting.push(Waiting { row, first, reply: s.reply });
    }
    (rows, waiting)
}

/// Committed batches waiting for the sync thread to pick them up, at most: one.
/// The writer commits a batch while the previous one syncs, then waits for the
/// sync thread before it commits another; the webhooks that arrive meanwhile
/// go into the next batch. No batch is synced sooner by being committed
/// earlier, and fewer, larger commits cost less CPU (each writes its own copy
/// of the pages every batch touches). Measured with bench-ingest on 2 cores:
/// 64 gave 39-41k webhooks/s at 1.5 ms p50, 1 gave 43-46k at 1.3 ms, and 0
/// (no commit while a sync runs) 40-43k.
const UNSYNCED_BATCHES: usize = 1;

/// How long the writer waits after a failed move of spilled events before it
/// tries again (the events stay durable in the spill file meanwhile).
const UNSPILL_RETRY: std::time::Duration = std::time::Duration::from_millis(200);

/// How long a stopping writer waits for the write gate to move what is spilled.
const LAST_UNSPILL_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// A place in the write gate's queue.
type Turn = std::pin::Pin<Box<dyn std::future::Future<Output = OwnedMutexGuard<Writer>> + Send>>;

/// Moves a batch of spilled events into the inbox in `turn` (see
/// [`SqliteInboxWriter::unspill`]) and tells the worker. Returns whether it
/// went well; a failure is logged, and the events stay durable in the spill
/// file for the next try.
fn unspill(writer: &mut SqliteInboxWriter, turn: OwnedMutexGuard<Writer>, stored: &Notify) -> bool {
    match writer.unspill(turn) {
        Ok(moved) => {
            if moved > 0 {
                debug!(moved, "spilled webhooks moved into the inbox");
                stored.notify_one();
            }
            true
        }
        Err(e) => {
            error!(error = %e, "could not move spilled webhooks into the inbox; trying again");
            false
        }
    }
}

/// A batch stored on SQLite, with the requests waiting for it: committed to
/// the inbox but maybe not yet synced, or spilled (synced already; see
/// [`Stored::Spilled`] for why it is still answered in turn).
struct Written {
    /// The log to sync; `None` for a spilled batch.
    unsynced: Option<Unsynced>,
    /// Per row of the batch: whether it was new (not already in the inbox).
    inserted: Vec<bool>,
    replies: Vec<Waiting>,
}

/// The SQLite writer's second half: syncs the log for every batch committed
/// since the last sync (one sync for all of them: each was committed before it
/// began) and only then answers their requests. Runs until the writer hangs up.
fn sync_and_answer(written: &std::sync::mpsc::Receiver<Written>, health: &LogHealth) {
    while let Ok(first) = written.recv() {
        let mut group = vec![first];
        group.extend(written.try_iter());
        // Once a sync has failed nothing is acknowledged, spilled batches
        // included: a redelivery among them may have been told apart by an
        // inbox commit that never reached the disk.
        let mut result = if health.failed() { Err(Arc::new(StoreError::LogFailed)) } else { Ok(()) };
        // Normally one log; a writer reopened after an error has a new one.
        for (i, w) in group.iter().enumerate() {
            let Some(unsynced) = &w.unsynced else { continue };
            let synced = |earlier: &Written| earlier.unsynced.as_ref().is_some_and(|e| e.same_log(unsynced));
            if result.is_ok() && !group[..i].iter().any(synced) {
                result = unsynced.sync().map_err(Arc::new);
            }
        }
        for w in group {
            answer(w.replies, result.clone().map(|()| w.inserted));
        }
    }
}

/// Answers every request of a batch once its commit is known; `inserted`
/// says, per row, whether the row was new.
fn answer(replies: Vec<Waiting>, result: Result<Vec<bool>, Arc<StoreError>>) {
    match result {
        Ok(inserted) => {
            for w in replies {
                let new = w.first && inserted.get(w.row).copied().unwrap_or(false);
                let answer = if new { Accepted::New } else { Accepted::Duplicate };
                let _ = w.reply.send(Ok(answer)); // the request may have gone; the event is stored regardless
            }
        }
        Err(e) => {
            error!(error = %e, events = replies.len(), "could not store webhooks in the inbox");
            let e = IngestError::Store(e);
            for w in replies {
                let _ = w.reply.send(Err(e.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn submission(tenant: &str, id: &str) -> (Submission, oneshot::Receiver<Result<Accepted, IngestError>>) {
        let (reply, answer) = oneshot::channel();
        let event = NewEvent {
            tenant_id: tenant.into(),
            event_id: id.into(),
            event_type: "user.created".into(),
            subject: format!("event:{id}"),
            occurred_at: 1,
            received_at: 1,
            payload: "{}".into(),
            tenant_created_at: Some(1),
        };
        (Submission { event, reply }, answer)
    }

    #[test]
    fn a_batch_writes_each_event_once_and_answers_every_copy() {
        let (mut batch, mut answers) = (Vec::new(), Vec::new());
        // e1 twice in one batch; the same id for another tenant is another event;
        // e2 is already in the inbox (its row is written but not new).
        for (tenant, id) in [("a", "e1"), ("a", "e2"), ("a", "e1"), ("b", "e1")] {
            let (s, answer) = submission(tenant, id);
            batch.push(s);
            answers.push(answer);
        }
        let (rows, waiting) = split(&mut batch);
        let keys: Vec<_> = rows.iter().map(|r| (r.tenant_id.as_str(), r.event_id.as_str())).collect();
        assert_eq!(keys, [("a", "e1"), ("a", "e2"), ("b", "e1")]);
        answer(waiting, Ok(vec![true, false, true]));
        let got: Vec<_> = answers.iter_mut().map(|a| a.try_recv().unwrap().unwrap()).collect();
        assert_eq!(got, [Accepted::New, Accepted::Duplicate, Accepted::Duplicate, Accepted::New]);
    }

    /// Once a sync of the log has failed, no batch is acknowledged any more,
    /// not even one stored (and synced) in the spill file.
    #[test]
    fn after_a_failed_sync_nothing_is_acknowledged() {
        let health = LogHealth::default();
        let spilled = |id: &str| {
            let (s, answer) = submission("a", id);
            let mut batch = vec![s];
            let (_, replies) = split(&mut batch);
            (Written { unsynced: None, inserted: vec![true], replies }, answer)
        };
        let run = |written: Written| {
            let (to_sync, synced) = std::sync::mpsc::sync_channel(1);
            to_sync.send(written).unwrap();
            drop(to_sync);
            sync_and_answer(&synced, &health);
        };
        let (written, mut answer) = spilled("e1");
        run(written);
        assert_eq!(answer.try_recv().unwrap().unwrap(), Accepted::New);

        health.fail();
        let (written, mut answer) = spilled("e2");
        run(written);
        let refused = answer.try_recv().unwrap();
        assert!(matches!(&refused, Err(IngestError::Store(e)) if matches!(**e, StoreError::LogFailed)), "{refused:?}");
    }
}

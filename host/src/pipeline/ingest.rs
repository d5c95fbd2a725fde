//! Group commit: verified events from many concurrent requests are written to the
//! inbox together, in one statement and one commit (one fsync on SQLite), and each
//! request is answered only after that commit is durable. On SQLite the fsync
//! happens on a thread of its own, after the write gate is released, while the
//! writer goes on with the next batch; one fsync covers every batch committed
//! before it.
//!
//! Owns: the submission queue and the single writer task. Must not: acknowledge an
//! event before it is durable, or drop a submission without answering it.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::store::StoreError;
use crate::store::exec::Unsynced;
use crate::store::inbox::{InboxWriter, MAX_INSERT_ROWS, NewEvent};

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
                let syncer = std::thread::Builder::new()
                    .name("inbox-sync".into())
                    .spawn(move || sync_and_answer(&synced))
                    .expect("the inbox sync thread starts");
                let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
                while rx.blocking_recv_many(&mut batch, MAX_INSERT_ROWS) > 0 {
                    let (rows, replies) = split(&mut batch);
                    match conn.write(&rows) {
                        Ok((inserted, unsynced)) => {
                            to_sync.send(Written { unsynced, inserted, replies }).expect("the inbox sync thread runs")
                        }
                        Err(e) => answer(replies, Err(Arc::new(e))),
                    }
                    stored.notify_one();
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

type Key = (String, String);

/// Splits a batch into the rows to write and the replies to send. A redelivery
/// can arrive twice in one batch: it is written once, and its second copy is
/// answered as a duplicate.
fn split(batch: &mut Vec<Submission>) -> (Vec<NewEvent>, Vec<(Key, Reply)>) {
    let mut seen = HashSet::with_capacity(batch.len());
    let mut rows = Vec::with_capacity(batch.len());
    let mut replies = Vec::with_capacity(batch.len());
    for s in batch.drain(..) {
        let key = (s.event.tenant_id.clone(), s.event.event_id.clone());
        if seen.insert(key.clone()) {
            rows.push(s.event);
        }
        replies.push((key, s.reply));
    }
    (rows, replies)
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

/// A batch committed on SQLite, not yet synced, with the requests waiting for it.
struct Written {
    unsynced: Unsynced,
    inserted: HashSet<Key>,
    replies: Vec<(Key, Reply)>,
}

/// The SQLite writer's second half: syncs the log for every batch committed
/// since the last sync (one sync for all of them: each was committed before it
/// began) and only then answers their requests. Runs until the writer hangs up.
fn sync_and_answer(written: &std::sync::mpsc::Receiver<Written>) {
    while let Ok(first) = written.recv() {
        let mut group = vec![first];
        group.extend(written.try_iter());
        // Normally one log; a writer reopened after an error has a new one.
        let mut result = Ok(());
        for (i, w) in group.iter().enumerate() {
            if result.is_ok() && !group[..i].iter().any(|earlier| earlier.unsynced.same_log(&w.unsynced)) {
                result = w.unsynced.sync().map_err(Arc::new);
            }
        }
        for w in group {
            answer(w.replies, result.clone().map(|()| w.inserted));
        }
    }
}

/// Answers every request of a batch once its commit is known.
fn answer(replies: Vec<(Key, Reply)>, result: Result<HashSet<Key>, Arc<StoreError>>) {
    match result {
        Ok(mut inserted) => {
            for (key, reply) in replies {
                let answer = if inserted.remove(&key) { Accepted::New } else { Accepted::Duplicate };
                let _ = reply.send(Ok(answer)); // the request may have gone; the event is stored regardless
            }
        }
        Err(e) => {
            error!(error = %e, events = replies.len(), "could not store webhooks in the inbox");
            let e = IngestError::Store(e);
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

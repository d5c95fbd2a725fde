//! Group commit: verified events from many concurrent requests are written to the
//! inbox together, in one statement and one commit (one fsync on SQLite), and each
//! request is answered only after that commit.
//!
//! Owns: the submission queue and the single writer task. Must not: acknowledge an
//! event before it is durable, or drop a submission without answering it.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::store::StoreError;
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
                let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
                while rx.blocking_recv_many(&mut batch, MAX_INSERT_ROWS) > 0 {
                    let (rows, replies) = split(&mut batch);
                    answer(replies, conn.write(&rows));
                    stored.notify_one();
                }
                debug!("ingest writer stopped: no more submissions");
            }),
            InboxWriter::Pool(store) => tokio::spawn(async move {
                let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
                while rx.recv_many(&mut batch, MAX_INSERT_ROWS).await > 0 {
                    let (rows, replies) = split(&mut batch);
                    answer(replies, store.insert_events(&rows).await);
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

/// Answers every request of a batch once its commit is known.
fn answer(replies: Vec<(Key, Reply)>, result: Result<HashSet<Key>, StoreError>) {
    match result {
        Ok(mut inserted) => {
            for (key, reply) in replies {
                let answer = if inserted.remove(&key) { Accepted::New } else { Accepted::Duplicate };
                let _ = reply.send(Ok(answer)); // the request may have gone; the event is stored regardless
            }
        }
        Err(e) => {
            error!(error = %e, events = replies.len(), "could not store webhooks in the inbox");
            let e = IngestError::Store(Arc::new(e));
            for (_, reply) in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

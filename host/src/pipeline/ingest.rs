//! Group commit: verified events from many concurrent requests are written to the
//! inbox together, in one statement and one commit (one fsync on SQLite), and each
//! request is answered only after that commit.
//!
//! Owns: the submission queue and the single writer task. Must not: acknowledge an
//! event before it is durable, or drop a submission without answering it.

use std::collections::HashSet;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Notify};
use tokio::task::JoinHandle;
use tracing::{debug, error};

use crate::store::inbox::{NewEvent, MAX_INSERT_ROWS};
use crate::store::{Store, StoreError};

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

struct Submission {
    event: NewEvent,
    reply: oneshot::Sender<Result<Accepted, IngestError>>,
}

/// The sending side, cheap to clone into every request.
#[derive(Clone)]
pub struct Ingest {
    queue: mpsc::Sender<Submission>,
}

impl Ingest {
    /// Starts the writer. It runs until every `Ingest` clone is dropped, then
    /// finishes what is queued and ends. `stored` is notified after each commit.
    pub fn start(store: Store, stored: Arc<Notify>) -> (Ingest, JoinHandle<()>) {
        let (queue, rx) = mpsc::channel(QUEUE_CAPACITY);
        let task = tokio::spawn(write_batches(store, rx, stored));
        (Ingest { queue }, task)
    }

    /// Stores one event durably; returns once it is committed.
    pub async fn submit(&self, event: NewEvent) -> Result<Accepted, IngestError> {
        let (reply, answer) = oneshot::channel();
        self.queue.send(Submission { event, reply }).await.map_err(|_| IngestError::Closed)?;
        answer.await.map_err(|_| IngestError::Closed)?
    }
}

async fn write_batches(store: Store, mut rx: mpsc::Receiver<Submission>, stored: Arc<Notify>) {
    let mut batch = Vec::with_capacity(MAX_INSERT_ROWS);
    while rx.recv_many(&mut batch, MAX_INSERT_ROWS).await > 0 {
        commit_batch(&store, &mut batch).await;
        stored.notify_one();
    }
    debug!("ingest writer stopped: no more submissions");
}

async fn commit_batch(store: &Store, batch: &mut Vec<Submission>) {
    // A redelivery can arrive twice in one batch: store it once, and answer the
    // second copy as a duplicate.
    let mut seen = HashSet::with_capacity(batch.len());
    let rows: Vec<NewEvent> = batch
        .iter()
        .filter(|s| seen.insert((s.event.tenant_id.as_str(), s.event.event_id.as_str())))
        .map(|s| s.event.clone())
        .collect();
    match store.insert_events(&rows).await {
        Ok(mut inserted) => {
            for s in batch.drain(..) {
                let key = (s.event.tenant_id, s.event.event_id);
                let answer = if inserted.remove(&key) { Accepted::New } else { Accepted::Duplicate };
                let _ = s.reply.send(Ok(answer)); // the request may have gone; the event is stored regardless
            }
        }
        Err(e) => {
            error!(error = %e, events = batch.len(), "could not store webhooks in the inbox");
            let e = IngestError::Store(Arc::new(e));
            for s in batch.drain(..) {
                let _ = s.reply.send(Err(e.clone()));
            }
        }
    }
}

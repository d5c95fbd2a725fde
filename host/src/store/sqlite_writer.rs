//! The SQLite inbox hot path: each batch of webhooks inserted in one
//! transaction on the writer connection (see [`super::exec::Writer`]), with the
//! insert prepared once; or, when the write gate stays taken, stored in the
//! spill file (see [`super::spill`]) and moved into the inbox later.
//!
//! Owns: the batch insert, and moving spilled events into the inbox. Must not:
//! be used for anything but inserting into the inbox; every other statement
//! goes through sqlx or `store::exec`.
//!
//! Why not sqlx here: every sqlx SQLite call hops to the driver's thread and its
//! rows come back to an async task, which on a runtime busy with HTTP doubled the
//! commit time (1.9 ms against SQLite's own 0.9 ms for 25 rows, measured here).
//! The commit time bounds ingest throughput, so this path runs on a thread that
//! takes batches straight from the ingest queue, on the same connection as the
//! worker's transactions. The caller syncs each batch's commit after the write
//! gate is released and before it acknowledges any of it (see
//! [`super::exec::Writer`]).

use std::path::Path;

use super::exec::{LogHealth, Unsynced, Writer};
use super::inbox::{MAX_INSERT_ROWS, NewEvent};
use super::spill::{SPILL_AFTER, Spill};
use super::{Result, WriteGate};
use rusqlite::TransactionBehavior;
use tokio::sync::OwnedMutexGuard;

const INSERT_ONE: &str = "INSERT INTO inbox (tenant_id, event_id, event_type, subject, occurred_at, received_at, \
     payload, tenant_created_at, next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?6) \
     ON CONFLICT (tenant_id, event_id) DO NOTHING";

/// Writes batches through the writer connection. Blocking: run it on a thread
/// of its own, inside a Tokio runtime (it waits for the gate with a timeout).
pub struct SqliteInboxWriter {
    gate: WriteGate,
    /// The writer's (see [`LogHealth`]).
    health: LogHealth,
    /// Boxed: two connections, and the writer moves into the ingest task by value.
    spill: Box<Spill>,
}

/// Where a batch went.
pub enum Stored {
    /// Committed to the inbox: sync this before acknowledging any of it.
    Committed(Unsynced),
    /// Committed and synced in the spill file. Its redeliveries were told
    /// apart by reading the inbox as committed: acknowledge it only after
    /// every earlier commit of this writer is synced.
    Spilled,
}

impl SqliteInboxWriter {
    /// A writer for the (already migrated) database file at `path`. It opens
    /// the writer connection now if the gate is free, so that a file that
    /// cannot be opened fails at start-up, and the spill file. Does not block.
    pub fn open(path: &Path, gate: WriteGate, health: LogHealth) -> Result<SqliteInboxWriter> {
        debug_assert!(!path.as_os_str().is_empty(), "an inbox writer needs a database file");
        if let Ok(mut writer) = gate.try_lock() {
            writer.conn()?;
        }
        Ok(SqliteInboxWriter { gate, health, spill: Box::new(Spill::open(path)?) })
    }

    /// Stores `events`: in the inbox, in one transaction, if the write gate is
    /// free within [`SPILL_AFTER`] and nothing is left spilled; else in the
    /// spill file (while events are spilled, later ones are too, so that they
    /// reach the inbox in order: see [`SqliteInboxWriter::unspill`]). Returns, per event,
    /// whether it was new (neither in the inbox nor spilled already), and where
    /// the batch went. The write gate is free again on return, so the next
    /// batch need not wait for the disk. Blocks on the current Tokio runtime's
    /// timer while it waits for the gate.
    pub fn write(&mut self, events: &[NewEvent]) -> Result<(Vec<bool>, Stored)> {
        let turn = match self.gate.clone().try_lock_owned() {
            Ok(turn) if !self.spill.maybe_holds() => Some(turn),
            Ok(_) => None,
            Err(_) if self.spill.maybe_holds() => None,
            Err(_) => {
                let waiting = tokio::time::timeout(SPILL_AFTER, self.gate.clone().lock_owned());
                tokio::runtime::Handle::current().block_on(waiting).ok()
            }
        };
        let Some(mut turn) = turn else {
            return Ok((self.spill.put(events)?, Stored::Spilled));
        };
        let inserted = insert(&mut turn, events)?;
        Ok((inserted, Stored::Committed(turn.unsynced()?)))
    }

    /// Whether syncs of the writer's log still work.
    pub fn health(&self) -> LogHealth {
        self.health.clone()
    }

    /// Whether the spill file may still hold events.
    pub fn holds_spilled(&self) -> bool {
        self.spill.maybe_holds()
    }

    /// The write gate, to queue for a turn in which to move spilled events.
    pub fn gate(&self) -> WriteGate {
        self.gate.clone()
    }

    /// Moves up to a batch of spilled events into the inbox in `turn`: commits
    /// them, leaves the gate, syncs the log, and only then deletes them from
    /// the spill file. Returns how many it moved.
    pub fn unspill(&mut self, mut turn: OwnedMutexGuard<Writer>) -> Result<usize> {
        let events = self.spill.oldest(MAX_INSERT_ROWS)?;
        if events.is_empty() {
            return Ok(0);
        }
        insert(&mut turn, &events)?;
        let unsynced = turn.unsynced()?;
        drop(turn);
        unsynced.sync()?;
        self.spill.forget(&events)?;
        Ok(events.len())
    }
}

/// Inserts `events` in one transaction on the writer connection; returns, per
/// event, whether it was new.
fn insert(turn: &mut OwnedMutexGuard<Writer>, events: &[NewEvent]) -> Result<Vec<bool>> {
    let tx = turn.conn()?.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut inserted = Vec::with_capacity(events.len());
    {
        let mut insert = tx.prepare_cached(INSERT_ONE)?;
        for e in events {
            let changed = insert.execute(columns(e))?;
            inserted.push(changed == 1);
        }
    }
    tx.commit()?;
    Ok(inserted)
}

/// An event's values, in the order of the inbox's and the spill file's
/// inserts: tenant, event id, type, subject, occurred, received, payload,
/// the tenant's `created_at`.
pub(super) fn columns(e: &NewEvent) -> [&dyn rusqlite::ToSql; 8] {
    [
        &e.tenant_id,
        &e.event_id,
        &e.event_type,
        &e.subject,
        &e.occurred_at,
        &e.received_at,
        &e.payload,
        &e.tenant_created_at,
    ]
}

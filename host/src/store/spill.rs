//! The spill file: where the SQLite inbox writer stores webhooks durably while
//! the write gate is held too long, so that acknowledging one tenant's webhook
//! never waits for another tenant's handler.
//!
//! Why: SQLite has one writer. The worker's transaction holds the write gate
//! while a handler runs (a handler's writes, the sync and the event's
//! completion commit together), and so may an Actions handler that wrote; a
//! handler that loops until its deadline (5 s by default) would hold every
//! tenant's webhook acknowledgements that long. A batch that has waited
//! [`SPILL_AFTER`] for the gate goes instead into `<database file>-spill`, a
//! SQLite file of its own (its own lock, synced at each commit), and is
//! acknowledged from there; once the gate is free the writer moves spilled
//! events into the inbox, syncs that commit, and only then deletes them here.
//! A crash between the two leaves them in both places; moving them again
//! inserts nothing (the inbox is unique on tenant and event id).
//!
//! Owns: the spill file's schema and statements. Must not: touch the main
//! database except to read whether an event is already in the inbox, or delete
//! a spilled event before the inbox holds it durably (the caller's job, see
//! [`super::sqlite_writer`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::params;

use super::Result;
use super::inbox::NewEvent;

/// How long a batch of webhooks waits for the write gate before it is stored
/// in the spill file instead. Longer than the worker's transactions normally
/// hold the gate (they commit after 20 ms, before their next event), so only a
/// slow handler, an index build or the like sends webhooks here.
pub const SPILL_AFTER: Duration = Duration::from_millis(100);

/// How long a statement on the spill file waits for another process's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS spilled (
    tenant_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    subject TEXT NOT NULL,
    occurred_at INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    payload TEXT NOT NULL,
    tenant_created_at INTEGER,
    PRIMARY KEY (tenant_id, event_id)
)";

/// The column a spill file written by an earlier version lacks (NULL there:
/// see [`NewEvent::tenant_created_at`]).
const ADD_TENANT_CREATED_AT: &str = "ALTER TABLE spilled ADD COLUMN tenant_created_at INTEGER";

/// The spill file of one database file, and a connection that reads the
/// database's inbox (to tell a redelivery from a new event).
pub struct Spill {
    conn: rusqlite::Connection,
    inbox: rusqlite::Connection,
    /// Whether the file may hold events: set when this process spills and when
    /// the file held some at start; cleared once a move finds none left.
    maybe_holds: bool,
}

/// `<database file>-spill`.
pub fn spill_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push("-spill");
    PathBuf::from(path)
}

/// How many events the spill file beside the database file at `db` holds
/// (of `tenant`, or of all): webhooks acknowledged but not yet in the inbox.
/// 0 if there is no spill file. Blocking: it opens the file.
pub fn count_spilled(db: &Path, tenant: Option<&str>) -> Result<i64> {
    let Some(conn) = open_existing(db)? else { return Ok(0) };
    Ok(match tenant {
        Some(tenant) => conn.query_row("SELECT count(*) FROM spilled WHERE tenant_id = ?1", [tenant], |r| r.get(0))?,
        None => conn.query_row("SELECT count(*) FROM spilled", [], |r| r.get(0))?,
    })
}

/// `tenant`'s spilled events, newest first, for inspection: at most `limit`,
/// of `event_type` if given, or only the one with `event_id` if given.
/// Blocking: it opens the file.
pub fn spilled_of(
    db: &Path,
    tenant: &str,
    event_type: Option<&str>,
    event_id: Option<&str>,
    limit: i64,
) -> Result<Vec<NewEvent>> {
    let Some(conn) = open_existing(db)? else { return Ok(Vec::new()) };
    let mut select = conn.prepare(&format!(
        "SELECT {EVENT_COLUMNS} FROM spilled WHERE tenant_id = ?1 AND (?2 IS NULL OR event_type = ?2) \
         AND (?3 IS NULL OR event_id = ?3) ORDER BY rowid DESC LIMIT ?4"
    ))?;
    let events = select.query_map(params![tenant, event_type, event_id, limit], event_of_row)?;
    Ok(events.collect::<rusqlite::Result<Vec<_>>>()?)
}

const EVENT_COLUMNS: &str =
    "tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, tenant_created_at";

/// A row of [`EVENT_COLUMNS`].
fn event_of_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<NewEvent> {
    Ok(NewEvent {
        tenant_id: r.get(0)?,
        event_id: r.get(1)?,
        event_type: r.get(2)?,
        subject: r.get(3)?,
        occurred_at: r.get(4)?,
        received_at: r.get(5)?,
        payload: r.get(6)?,
        tenant_created_at: r.get(7)?,
    })
}

/// Deletes every spilled event of `tenant`, when the tenant is deleted: they
/// are its data. Returns how many. Blocking: it opens the file. Events of the
/// tenant spilled after this (accepted just before its deletion) are deleted
/// by the worker once moved, like any such event in the inbox.
pub fn forget_tenant(db: &Path, tenant: &str) -> Result<usize> {
    let Some(conn) = open_existing(db)? else { return Ok(0) };
    Ok(conn.execute("DELETE FROM spilled WHERE tenant_id = ?1", [tenant])?)
}

/// The spill file beside `db`, if there is one (one is created only by
/// [`Spill::open`]), brought up to this version's schema.
fn open_existing(db: &Path) -> Result<Option<rusqlite::Connection>> {
    let path = spill_path(db);
    if !path.exists() {
        return Ok(None);
    }
    let conn = rusqlite::Connection::open_with_flags(
        path,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.execute_batch(SCHEMA)?;
    upgrade(&conn)?;
    Ok(Some(conn))
}

/// Adds what a spill file written by an earlier version lacks.
fn upgrade(conn: &rusqlite::Connection) -> Result<()> {
    if conn.prepare("SELECT tenant_created_at FROM spilled LIMIT 0").is_err() {
        conn.execute_batch(ADD_TENANT_CREATED_AT)?;
    }
    Ok(())
}

impl Spill {
    /// Opens (creating it if need be) the spill file beside the database file
    /// at `db`, and a reading connection to `db`.
    pub fn open(db: &Path) -> Result<Spill> {
        let conn = rusqlite::Connection::open(spill_path(db))?;
        conn.busy_timeout(BUSY_TIMEOUT)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        // Each commit is synced before it returns: a spilled webhook is
        // acknowledged right after.
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        upgrade(&conn)?;
        let maybe_holds = conn.query_row("SELECT EXISTS (SELECT 1 FROM spilled)", [], |r| r.get(0))?;
        let inbox = super::exec::open_sqlite(db)?;
        Ok(Spill { conn, inbox, maybe_holds })
    }

    /// Whether the file may hold events not yet moved into the inbox.
    pub fn maybe_holds(&self) -> bool {
        self.maybe_holds
    }

    /// Stores `events` durably, in one commit; returns, per event, whether it
    /// was new: neither in the inbox nor spilled already. The inbox is read as
    /// committed, maybe not yet synced: answer a redelivery only after the
    /// commits before it are synced (the inbox writer's sync thread does).
    pub fn put(&mut self, events: &[NewEvent]) -> Result<Vec<bool>> {
        let mut stored = Vec::with_capacity(events.len());
        {
            let mut known = self
                .inbox
                .prepare_cached("SELECT EXISTS (SELECT 1 FROM inbox WHERE tenant_id = ?1 AND event_id = ?2)")?;
            for e in events {
                stored.push(known.query_row(params![e.tenant_id, e.event_id], |r| r.get::<_, bool>(0))?);
            }
        }
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let mut new = Vec::with_capacity(events.len());
        {
            let mut insert = tx.prepare_cached(
                "INSERT INTO spilled (tenant_id, event_id, event_type, subject, occurred_at, received_at, payload, \
                 tenant_created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) ON CONFLICT (tenant_id, event_id) DO NOTHING",
            )?;
            for (e, in_inbox) in events.iter().zip(stored) {
                if in_inbox {
                    new.push(false);
                    continue;
                }
                let changed = insert.execute(super::sqlite_writer::columns(e))?;
                new.push(changed == 1);
            }
        }
        tx.commit()?;
        self.maybe_holds = true;
        Ok(new)
    }

    /// The `limit` oldest spilled events, oldest first.
    pub fn oldest(&mut self, limit: usize) -> Result<Vec<NewEvent>> {
        let mut select =
            self.conn.prepare_cached(&format!("SELECT {EVENT_COLUMNS} FROM spilled ORDER BY rowid LIMIT ?1"))?;
        let events = select.query_map([limit as i64], event_of_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        if events.is_empty() {
            self.maybe_holds = false;
        }
        Ok(events)
    }

    /// Deletes `events` from the file, by key (another process sharing the
    /// file may have spilled others since they were read). Only for events
    /// the inbox holds durably.
    pub fn forget(&mut self, events: &[NewEvent]) -> Result<()> {
        let tx = self.conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM spilled WHERE tenant_id = ?1 AND event_id = ?2")?;
            for e in events {
                delete.execute(params![e.tenant_id, e.event_id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(tenant: &str, id: &str) -> NewEvent {
        NewEvent {
            tenant_id: tenant.into(),
            event_id: id.into(),
            event_type: "user.created".into(),
            subject: format!("user:{id}"),
            occurred_at: 1,
            received_at: 2,
            payload: format!(r#"{{"id":"{id}"}}"#),
            tenant_created_at: Some(7),
        }
    }

    fn ids(events: &[NewEvent]) -> Vec<(&str, &str)> {
        events.iter().map(|e| (e.tenant_id.as_str(), e.event_id.as_str())).collect()
    }

    /// A spilled event is new unless the inbox or the spill file has it; the
    /// file gives events back oldest first, keeps them across a reopening,
    /// and forgets only those it is told to.
    #[test]
    fn the_spill_file_keeps_events_until_told_and_tells_redeliveries_apart() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("authkit.db");
        let main = rusqlite::Connection::open(&db).unwrap();
        main.execute_batch(
            "PRAGMA journal_mode=WAL; CREATE TABLE inbox (tenant_id TEXT, event_id TEXT); \
             INSERT INTO inbox VALUES ('a', 'in_inbox')",
        )
        .unwrap();

        let mut spill = Spill::open(&db).unwrap();
        assert!(!spill.maybe_holds());
        let first = [event("a", "e1"), event("b", "e1"), event("a", "in_inbox")];
        assert_eq!(spill.put(&first).unwrap(), [true, true, false]);
        assert!(spill.maybe_holds());
        assert_eq!(spill.put(&[event("a", "e2"), event("a", "e1")]).unwrap(), [true, false]);
        let oldest = spill.oldest(10).unwrap();
        assert_eq!(ids(&oldest), [("a", "e1"), ("b", "e1"), ("a", "e2")]);
        assert_eq!(oldest[2].payload, r#"{"id":"e2"}"#);
        assert_eq!((oldest[2].occurred_at, oldest[2].received_at, oldest[2].tenant_created_at), (1, 2, Some(7)));
        assert_eq!(ids(&spill.oldest(2).unwrap()), [("a", "e1"), ("b", "e1")]);

        spill.forget(&oldest[..2]).unwrap();
        drop(spill);
        let mut spill = Spill::open(&db).unwrap();
        assert!(spill.maybe_holds(), "a reopened file still holds what was not forgotten");
        let left = spill.oldest(10).unwrap();
        assert_eq!(ids(&left), [("a", "e2")]);
        spill.forget(&left).unwrap();
        assert!(spill.oldest(10).unwrap().is_empty());
        assert!(!spill.maybe_holds());
    }

    /// A database file in `dir` whose inbox is empty (all the spill file reads of it).
    fn database_with_empty_inbox(dir: &tempfile::TempDir) -> PathBuf {
        let db = dir.path().join("authkit.db");
        let main = rusqlite::Connection::open(&db).unwrap();
        main.execute_batch("CREATE TABLE inbox (tenant_id TEXT, event_id TEXT)").unwrap();
        db
    }

    /// Deleting a tenant deletes its spilled events and no other's.
    #[test]
    fn a_deleted_tenants_spilled_events_go_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let db = database_with_empty_inbox(&dir);
        assert_eq!(forget_tenant(&db, "a").unwrap(), 0, "no spill file yet: nothing to delete");
        let mut spill = Spill::open(&db).unwrap();
        spill.put(&[event("a", "e1"), event("b", "e1"), event("a", "e2")]).unwrap();
        assert_eq!(forget_tenant(&db, "a").unwrap(), 2);
        assert_eq!((count_spilled(&db, Some("a")).unwrap(), count_spilled(&db, None).unwrap()), (0, 1));
        assert_eq!(ids(&spill.oldest(10).unwrap()), [("b", "e1")]);
    }

    /// A spill file written before events carried their tenant's `created_at`
    /// gains the column, and its events read back without one.
    #[test]
    fn a_spill_file_of_an_earlier_version_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let db = database_with_empty_inbox(&dir);
        rusqlite::Connection::open(spill_path(&db))
            .unwrap()
            .execute_batch(
                "CREATE TABLE spilled (tenant_id TEXT NOT NULL, event_id TEXT NOT NULL, event_type TEXT NOT NULL, \
                 subject TEXT NOT NULL, occurred_at INTEGER NOT NULL, received_at INTEGER NOT NULL, \
                 payload TEXT NOT NULL, PRIMARY KEY (tenant_id, event_id)); \
                 INSERT INTO spilled VALUES ('a', 'old', 'user.created', 'user:old', 1, 2, '{}')",
            )
            .unwrap();
        let mut spill = Spill::open(&db).unwrap();
        assert!(spill.maybe_holds());
        spill.put(&[event("a", "new")]).unwrap();
        let events = spill.oldest(10).unwrap();
        assert_eq!(ids(&events), [("a", "old"), ("a", "new")]);
        assert_eq!((events[0].tenant_created_at, events[1].tenant_created_at), (None, Some(7)));
    }
}

//! Synchronous SQL, for code that runs on a blocking thread: handlers run inside
//! wasmtime synchronously, and their `db` calls must reach the transaction of the
//! event they are handling while the guest waits.
//!
//! Owns: [`SyncTx`], one open transaction on either backend, with `execute` and
//! `query` over the same `$N` SQL text as the rest of the store, and savepoints;
//! and on SQLite the process's one writing connection, [`Writer`], which the
//! holder of the write gate uses, and whether syncing its log still works
//! ([`LogHealth`]). On SQLite a transaction runs on a rusqlite
//! connection (~1 µs a statement against ~60 µs through sqlx's worker thread):
//! a write transaction on the writer, a read-mostly one on a connection of its
//! own, kept for reuse, which takes the write gate before it writes. On Postgres
//! it is an sqlx transaction driven with `Handle::block_on`. Must not: be used
//! from an async task (it blocks), or hold anything but plain values in its rows.
//!
//! Why one writing connection: SQLite throws away a connection's whole page
//! cache (and its memory map) at the start of any transaction if another
//! connection has written since its last one. The worker and the ingest writer
//! take turns at the gate many times a second, so with a connection each, every
//! worker transaction began by reading back every page it touched (measured
//! with 1,000 tenants: about a fifth of the worker's time). Sharing one
//! connection, each finds its pages where the other left them.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::types::ValueRef;
use sqlx::postgres::PgRow;
use sqlx::{Column, PgPool, Postgres, Row as _, TypeInfo};
use tokio::runtime::Handle;

use super::{Result, StoreError, WriteGate};
use crate::locks::lock;

/// A value bound to, or read from, a statement. Booleans are integers (0/1), as
/// SQLite keeps them; Postgres booleans are read as such.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// A NULL of text type, or of no type the host knows (every NULL read).
    Null,
    /// A NULL where an integer goes, and [`Value::NullBool`] where a boolean
    /// goes: Postgres fixes a statement's parameter types when it first
    /// prepares it, from the values bound then, and a text NULL in a parameter
    /// that `INSERT ... SELECT` puts into a BIGINT or BOOLEAN column fails
    /// ("column is of type bigint but expression is of type text"), so the
    /// first row to reach a fresh connection with that field empty failed, and
    /// the others did not. SQLite binds all three as NULL.
    NullInt,
    NullBool,
    Int(i64),
    Text(String),
    /// Bound as a boolean on Postgres and as 0/1 on SQLite; read back as `Int`.
    Bool(bool),
    /// A BLOB on SQLite, BYTEA on Postgres.
    Bytes(Vec<u8>),
}

impl Value {
    pub fn as_i64(&self) -> Option<i64> {
        match self {
            Value::Int(i) => Some(*i),
            _ => None,
        }
    }
    pub fn into_string(self) -> Option<String> {
        match self {
            Value::Text(s) => Some(s),
            _ => None,
        }
    }
    pub fn into_bytes(self) -> Option<Vec<u8>> {
        match self {
            Value::Bytes(b) => Some(b),
            _ => None,
        }
    }
}

impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Text(s.to_string())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Text(s)
    }
}
impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
/// The NULL of a type's column.
pub trait Nullable: Into<Value> {
    const NULL: Value;
}
impl Nullable for &str {
    const NULL: Value = Value::Null;
}
impl Nullable for String {
    const NULL: Value = Value::Null;
}
impl Nullable for i64 {
    const NULL: Value = Value::NullInt;
}
impl Nullable for bool {
    const NULL: Value = Value::NullBool;
}
impl<T: Nullable> From<Option<T>> for Value {
    fn from(v: Option<T>) -> Value {
        v.map_or(T::NULL, Into::into)
    }
}

pub type Row = Vec<Value>;

/// Prepared statements kept per connection: more than the host has distinct statements.
const STATEMENT_CACHE: usize = 128;

/// How much of the database file SQLite may map into memory (reads only; WAL
/// mode keeps writes going through the log).
const MMAP_BYTES: i64 = 1 << 30;
/// SQLite's own page cache for this connection, in KiB. Small on purpose:
/// SQLite walks the whole cache when a transaction starts after another
/// connection wrote, and at the end of one in which a B-tree split reordered
/// pages (most, with many tenants); with 64 MiB, a tenth of the worker's time
/// went there. Pages past it come from the memory map or the log.
const CACHE_KIB: i64 = 8 * 1024;

/// How much of a savepoint's journal SQLite keeps in memory before it writes
/// the rest to a temporary file. Each event's savepoint journals the first
/// change to every page it touches, which in a batch of events is usually just
/// over SQLite's default of 64 KiB: a `pwrite` per page to a temporary file
/// (measured: the example handler's drain rate rose by about a fifth with the
/// journal in memory). Bounded, so that a handler rewriting many large
/// documents in one call does not hold them all in memory twice.
const STATEMENT_JOURNAL_MEMORY: std::os::raw::c_int = 4 << 20;

/// Sets SQLite's process-wide options. SQLite accepts them only before the
/// process opens its first SQLite connection, so [`super::Store::connect`]
/// calls this first; if something opened one earlier, the defaults stay (and
/// everything still works, a little slower).
pub(super) fn configure_sqlite() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: SQLITE_CONFIG_STMTJRNL_SPILL takes one int; sqlite3_config
        // refuses (SQLITE_MISUSE) rather than misbehaves once SQLite is running.
        let rc = unsafe {
            rusqlite::ffi::sqlite3_config(rusqlite::ffi::SQLITE_CONFIG_STMTJRNL_SPILL, STATEMENT_JOURNAL_MEMORY)
        };
        if rc != rusqlite::ffi::SQLITE_OK {
            tracing::debug!(rc, "SQLite was already in use; savepoint journals keep its default memory threshold");
        }
    });
}

/// Same as the pools: wait this long for SQLite's write lock.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// The process's one writing SQLite connection, kept inside the write gate:
/// whoever holds the gate may use it, and nobody else. Opened on first use.
///
/// Its commits write the log but do not sync it (`synchronous=NORMAL`): the
/// committer syncs the log after it has left the gate, with [`sync_commit`],
/// before it tells anyone the commit happened. So the next writer's work
/// overlaps the disk's flush instead of queueing behind it (on this machine a
/// sync takes 0.6 ms plus 20 µs a page). A commit becomes visible to other
/// connections before it is durable; what is acknowledged (a webhook, a
/// finished transaction) is durable, as with `synchronous=FULL`.
///
/// Its memory map is kept as large as the file (see `Map`).
#[derive(Debug)]
pub struct Writer {
    path: PathBuf,
    conn: Option<rusqlite::Connection>,
    map: Map,
    /// The log (`<file>-wal`), opened after the first commit on `conn`. While
    /// `conn` is open SQLite does not delete the log (an open connection keeps
    /// it), so this is the file the commits went to; reopened with `conn`.
    log: Option<Arc<Log>>,
    /// Kept when `conn` and `log` are reopened: a failed sync is not undone
    /// by opening the file again.
    health: LogHealth,
}

impl Writer {
    /// The writer of the database file at `path` (an empty path or
    /// `:memory:`: a database with no file, which nothing writes through here).
    pub fn new(path: PathBuf) -> Writer {
        Writer { path, conn: None, log: None, map: Map::default(), health: LogHealth::default() }
    }

    /// Whether syncs of this writer's log still work; shared, so that the
    /// server can watch it without taking the gate.
    pub fn health(&self) -> LogHealth {
        self.health.clone()
    }

    /// The connection, opened if need be, outside any transaction: one that a
    /// failed rollback left inside one is closed (which ends it) and replaced.
    pub fn conn(&mut self) -> Result<&mut rusqlite::Connection> {
        if self.conn.as_ref().is_some_and(|c| !c.is_autocommit() && c.execute_batch("ROLLBACK").is_err()) {
            tracing::error!("the SQLite writer connection was left inside a transaction; reopening it");
            self.conn = None;
            self.log = None;
        }
        let conn = match &mut self.conn {
            Some(conn) => conn,
            slot => {
                let conn = open_sqlite(&self.path)?;
                // Synced by the committer instead (see the type's comment).
                conn.pragma_update(None, "synchronous", "NORMAL")?;
                self.map = Map::default();
                slot.insert(conn)
            }
        };
        self.map.follow_file(conn, &self.path)?;
        Ok(conn)
    }

    /// Call in the turn in which the connection committed: what to sync,
    /// after leaving the gate, to make that commit durable.
    pub fn unsynced(&mut self) -> Result<Unsynced> {
        if let Some(log) = &self.log {
            return Ok(Unsynced(log.clone()));
        }
        let path = log_path(&self.path);
        // Write access: some systems refuse to sync a file opened read-only.
        match std::fs::OpenOptions::new().read(true).write(true).open(&path) {
            Ok(file) => {
                let log = Log { file, path, health: self.health.clone() };
                Ok(Unsynced(self.log.insert(Arc::new(log)).clone()))
            }
            Err(source) => Err(StoreError::Sync { path: path.display().to_string(), source }),
        }
    }
}

/// The writer's memory map of the database file. SQLite maps a file as large
/// as it is when first read, and maps it again only when another connection
/// has written since the connection's last transaction, or when the connection
/// itself checkpoints. The writer is the only connection that writes, and the
/// checkpointer (see `checkpoint`) grows the file, so without this its map
/// stayed the size the file had when it opened, and every page past it was a
/// `pread` into SQLite's small page cache instead of a memory read (measured:
/// two reads a lookup in a table that grew after the start). So at the start
/// of each turn, once the file has grown by a slack past the mapped size, the
/// map is redone, by changing the map's limit back and forth (SQLite maps
/// again whenever the limit changes, and reads the file's size then).
#[derive(Debug, Default)]
struct Map {
    /// The database file, for its size; opened on first use.
    file: Option<std::fs::File>,
    /// The file's size when it was last mapped.
    mapped: u64,
}

impl Map {
    /// Outside any transaction only: SQLite keeps its map while pages of it are
    /// in use. The file's size is only a hint here: if it cannot be read, the
    /// map stays as it is (reads still work, through the page cache).
    fn follow_file(&mut self, conn: &rusqlite::Connection, path: &Path) -> Result<()> {
        let limit = MMAP_BYTES as u64;
        if self.mapped >= limit {
            return Ok(());
        }
        let size = match self.file_size(path) {
            Ok(size) => size,
            Err(e) => {
                tracing::debug!(error = %e, file = %path.display(), "could not read the database file's size");
                return Ok(());
            }
        };
        // Pages past the map are read into the page cache, which is fine for a
        // tail: mapping again costs the page faults of everything mapped before.
        // (SQLite maps a new connection's file at its first read by itself.)
        if size > self.mapped + (self.mapped / 8).max(MAP_SLACK_BYTES) {
            conn.pragma_update(None, "mmap_size", MMAP_BYTES - 1)?;
            conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
            self.mapped = size.min(limit);
        }
        Ok(())
    }

    /// The database file's size, through a handle kept open for it.
    fn file_size(&mut self, path: &Path) -> std::io::Result<u64> {
        let file = match self.file.take() {
            Some(file) => file,
            None => std::fs::File::open(path)?,
        };
        let size = file.metadata()?.len();
        self.file = Some(file);
        Ok(size)
    }
}

/// How far the file may grow past the writer's map before it is mapped again,
/// at least: an eighth of the mapped size, or this.
const MAP_SLACK_BYTES: u64 = 8 << 20;

/// The write-ahead log of the SQLite database file at `db`: `<file>-wal`.
pub(super) fn log_path(db: &Path) -> PathBuf {
    let mut path = db.as_os_str().to_owned();
    path.push("-wal");
    PathBuf::from(path)
}

/// The writer's log file, and its name for errors.
#[derive(Debug)]
struct Log {
    file: std::fs::File,
    path: PathBuf,
    health: LogHealth,
}

/// Whether this process may still make commits on its SQLite writer durable.
///
/// Once a sync of the log fails, every later one is refused without trying,
/// for the rest of the process's life. A failed sync (an I/O error writing
/// the file back) leaves the pages it could not write in memory marked as
/// written, so a later sync can succeed without them on disk; after a power
/// cut SQLite replays the log only up to the first frame that is missing, and
/// everything committed after it would be lost, acknowledged or not. So
/// nothing committed after the failure may be acknowledged: webhooks are
/// answered with an error (WorkOS sends them again), and the server stops
/// (see `server::watch_database`). After a restart SQLite reads the log back
/// and the checkpointer copies it into the database file with fresh writes.
/// This is how Postgres treats a failed fsync too.
#[derive(Debug, Clone, Default)]
pub struct LogHealth(Arc<std::sync::atomic::AtomicBool>);

impl LogHealth {
    /// Whether a sync of the log has failed in this process.
    pub fn failed(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) fn fail(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Commits on the writer that are in the log but maybe not yet on disk.
pub struct Unsynced(Arc<Log>);

impl Unsynced {
    /// Syncs the log: every commit made before this call (by anyone) is then
    /// durable.
    /// Refused once any sync of this writer's log has failed (see [`LogHealth`]).
    pub fn sync(&self) -> Result<()> {
        let log = &self.0;
        let path = || log.path.display().to_string();
        if log.health.failed() {
            return Err(StoreError::LogFailed);
        }
        log.file.sync_data().map_err(|source| {
            log.health.fail();
            tracing::error!(file = %path(), error = %source,
                "syncing the database's log failed: nothing committed from now on is acknowledged; the host stops");
            StoreError::Sync { path: path(), source }
        })
    }

    /// Whether syncing `other` would sync the same file as this.
    pub fn same_log(&self, other: &Unsynced) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// Ends a turn at the write gate in which the writer committed, and makes that
/// commit durable: leaves the gate, then syncs the log. Returns once the
/// commit would survive a power cut.
fn sync_commit(mut turn: tokio::sync::OwnedMutexGuard<Writer>) -> Result<()> {
    let unsynced = turn.unsynced()?;
    drop(turn);
    unsynced.sync()
}

/// SQLite connections for synchronous transactions on the pool's file: the
/// writer in the gate, and connections for read-mostly transactions, kept for
/// reuse. A transaction owns its connection (or the gate with the writer)
/// while it is open (it must be `'static` to live in a wasmtime store) and
/// gives it back after.
pub struct SqliteConns {
    path: PathBuf,
    gate: WriteGate,
    idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
}

impl SqliteConns {
    /// Opens the first connection to the (already migrated) database file.
    pub fn open(path: &Path, gate: WriteGate) -> Result<SqliteConns> {
        let first = open_sqlite(path)?;
        Ok(SqliteConns { path: path.to_path_buf(), gate, idle: Arc::new(Mutex::new(vec![first])) })
    }

    fn take(&self) -> Result<rusqlite::Connection> {
        match lock(&self.idle).pop() {
            Some(conn) => Ok(conn),
            None => open_sqlite(&self.path),
        }
    }
}

pub(super) fn open_sqlite(path: &Path) -> Result<rusqlite::Connection> {
    let conn = rusqlite::Connection::open(path)?;
    conn.busy_timeout(SQLITE_BUSY_TIMEOUT)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "wal_autocheckpoint", super::checkpoint::FALLBACK_AUTOCHECKPOINT_PAGES)?;
    // Every statement the worker and the document store run stays prepared
    // (the default of 16 made them evict each other and be parsed again).
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // Handlers' lookups land anywhere in large tables: read pages through a
    // memory map rather than a syscall each, and keep more of them.
    conn.pragma_update(None, "mmap_size", MMAP_BYTES)?;
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    Ok(conn)
}

/// Where synchronous transactions come from.
pub enum SyncDb {
    Sqlite(SqliteConns),
    Postgres(PgPool, Handle),
}

impl SyncDb {
    /// Begins a write transaction. On SQLite it waits for the write gate, so the
    /// ingest writer and this transaction take turns instead of meeting SQLite's
    /// lock, and runs on the writer connection.
    pub fn begin(&self) -> Result<SyncTx> {
        match self {
            SyncDb::Sqlite(c) => {
                let mut turn = c.gate.clone().blocking_lock_owned();
                turn.conn()?.execute_batch("BEGIN IMMEDIATE")?;
                let inner =
                    Inner::Sqlite { conn: Some(SqliteConn::Writer(turn)), idle: c.idle.clone(), gate: c.gate.clone() };
                Ok(SyncTx { inner, open: true })
            }
            SyncDb::Postgres(..) => self.begin_postgres(),
        }
    }

    /// Begins a transaction that reads without waiting for anyone. On SQLite it
    /// runs on a connection of its own and takes the write gate only at its
    /// first write; if another writer committed since its first read, that
    /// write fails (SQLite cannot move a reader's snapshot forward), so use it
    /// where reads are the rule and a failed write is handled (Actions). On
    /// Postgres it is the same as [`SyncDb::begin`].
    pub fn begin_read_mostly(&self) -> Result<SyncTx> {
        match self {
            SyncDb::Sqlite(c) => {
                let conn = c.take()?;
                conn.execute_batch("BEGIN")?;
                let own = SqliteConn::Own { conn, turn: None };
                Ok(SyncTx {
                    inner: Inner::Sqlite { conn: Some(own), idle: c.idle.clone(), gate: c.gate.clone() },
                    open: true,
                })
            }
            SyncDb::Postgres(..) => self.begin_postgres(),
        }
    }

    fn begin_postgres(&self) -> Result<SyncTx> {
        let SyncDb::Postgres(pool, handle) = self else { unreachable!("called for Postgres only") };
        let tx = handle.block_on(pool.begin())?;
        Ok(SyncTx { inner: Inner::Postgres { tx: Some(tx), handle: handle.clone() }, open: true })
    }
}

/// The connection of an open SQLite transaction.
enum SqliteConn {
    /// A write transaction: the writer, inside the gate this transaction holds.
    Writer(tokio::sync::OwnedMutexGuard<Writer>),
    /// A read-mostly transaction: a connection of its own, and the gate from
    /// its first write on.
    Own { conn: rusqlite::Connection, turn: Option<tokio::sync::OwnedMutexGuard<Writer>> },
}

impl SqliteConn {
    fn conn(&self) -> &rusqlite::Connection {
        match self {
            SqliteConn::Writer(turn) => turn.conn.as_ref().expect("the writer was opened at BEGIN"),
            SqliteConn::Own { conn, .. } => conn,
        }
    }

    /// Ends the transaction with `sql` (COMMIT or ROLLBACK), rolling back if
    /// that fails, and gives the connection back: the writer stays in the gate
    /// (see [`Writer::conn`] for one left inside a transaction), a connection
    /// of its own goes back to `idle` unless it could not be rolled back.
    fn end(self, sql: &str, idle: &Mutex<Vec<rusqlite::Connection>>) -> rusqlite::Result<()> {
        let done = end(self.conn(), sql);
        if done.is_err() && !self.conn().is_autocommit() {
            return done; // a connection of its own is closed here, which ends what it holds
        }
        if let SqliteConn::Own { conn, .. } = self {
            lock(idle).push(conn);
        }
        done
    }
}

/// Ends the transaction on `conn` with `sql` (COMMIT or ROLLBACK), rolling back if that fails.
fn end(conn: &rusqlite::Connection, sql: &str) -> rusqlite::Result<()> {
    let done = conn.execute_batch(sql);
    if done.is_err()
        && !conn.is_autocommit()
        && let Err(e) = conn.execute_batch("ROLLBACK")
    {
        tracing::error!(error = %e, "could not roll back a SQLite transaction");
    }
    done
}

enum Inner {
    Sqlite {
        conn: Option<SqliteConn>,
        /// Where a connection of its own goes back when the transaction ends.
        idle: Arc<Mutex<Vec<rusqlite::Connection>>>,
        gate: WriteGate,
    },
    Postgres {
        tx: Option<sqlx::Transaction<'static, Postgres>>,
        handle: Handle,
    },
}

/// One open transaction. Dropped without [`SyncTx::commit`], it rolls back.
pub struct SyncTx {
    inner: Inner,
    open: bool,
}

impl SyncTx {
    /// Runs a statement; returns the number of rows it changed.
    pub fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        match &mut self.inner {
            Inner::Sqlite { conn, gate, .. } => {
                let conn = conn.as_mut().expect("transaction is open");
                if let SqliteConn::Own { turn: turn @ None, .. } = conn {
                    *turn = Some(gate.clone().blocking_lock_owned());
                }
                let mut stmt = conn.conn().prepare_cached(sql)?;
                bind_sqlite(&mut stmt, params)?;
                Ok(stmt.raw_execute()? as u64)
            }
            Inner::Postgres { tx, handle } => {
                let tx = tx.as_mut().expect("transaction is open");
                let query = bind_pg(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), params);
                Ok(handle.block_on(query.execute(&mut **tx))?.rows_affected())
            }
        }
    }

    /// Runs a query; returns every row, each as its columns in order.
    pub fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        match &mut self.inner {
            Inner::Sqlite { conn, .. } => {
                let conn = conn.as_ref().expect("transaction is open").conn();
                let mut stmt = conn.prepare_cached(sql)?;
                bind_sqlite(&mut stmt, params)?;
                let columns = stmt.column_count();
                let mut rows = stmt.raw_query();
                let mut out = Vec::new();
                while let Some(row) = rows.next()? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(match row.get_ref(i)? {
                            ValueRef::Null => Value::Null,
                            ValueRef::Integer(n) => Value::Int(n),
                            ValueRef::Real(f) => Value::Text(f.to_string()),
                            ValueRef::Text(t) => Value::Text(String::from_utf8_lossy(t).into_owned()),
                            ValueRef::Blob(b) => Value::Bytes(b.to_vec()),
                        });
                    }
                    out.push(values);
                }
                Ok(out)
            }
            Inner::Postgres { tx, handle } => {
                let tx = tx.as_mut().expect("transaction is open");
                let query = bind_pg(sqlx::query(sqlx::AssertSqlSafe(sql.to_owned())), params);
                let rows = handle.block_on(query.fetch_all(&mut **tx))?;
                rows.iter().map(pg_row).collect()
            }
        }
    }

    /// The first row, if any.
    pub fn query_one(&mut self, sql: &str, params: &[Value]) -> Result<Option<Row>> {
        Ok(self.query(sql, params)?.into_iter().next())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self.inner, Inner::Postgres { .. })
    }

    /// Marks a point that [`SyncTx::rollback_to`] can return to.
    pub fn savepoint(&mut self, name: &str) -> Result<()> {
        self.execute(&format!("SAVEPOINT {name}"), &[]).map(drop)
    }

    /// Keeps everything since the savepoint and forgets the savepoint.
    pub fn release(&mut self, name: &str) -> Result<()> {
        self.execute(&format!("RELEASE SAVEPOINT {name}"), &[]).map(drop)
    }

    /// Undoes everything since the savepoint and forgets it.
    pub fn rollback_to(&mut self, name: &str) -> Result<()> {
        self.execute(&format!("ROLLBACK TO SAVEPOINT {name}"), &[])?;
        self.release(name)
    }

    /// Makes every change durable (one fsync on SQLite, after the write gate
    /// is released: see [`Writer`]).
    pub fn commit(mut self) -> Result<()> {
        self.open = false;
        match &mut self.inner {
            Inner::Sqlite { conn, idle, .. } => match conn.take().expect("transaction is open") {
                SqliteConn::Writer(turn) => {
                    end(turn.conn.as_ref().expect("the writer was opened at BEGIN"), "COMMIT")?;
                    sync_commit(turn)
                }
                own => own.end("COMMIT", idle).map_err(Into::into),
            },
            Inner::Postgres { tx, handle } => {
                handle.block_on(tx.take().expect("transaction is open").commit()).map_err(Into::into)
            }
        }
    }
}

impl Drop for SyncTx {
    fn drop(&mut self) {
        if !self.open {
            return;
        }
        match &mut self.inner {
            Inner::Sqlite { conn, idle, .. } => {
                if let Some(c) = conn.take()
                    && let Err(e) = c.end("ROLLBACK", idle)
                {
                    tracing::error!(error = %e, "could not roll back a SQLite transaction");
                }
            }
            // sqlx rolls back a dropped transaction when its connection is next used.
            Inner::Postgres { tx, handle } => {
                if let Some(tx) = tx.take()
                    && let Err(e) = handle.block_on(tx.rollback())
                {
                    tracing::error!(error = %e, "could not roll back a Postgres transaction");
                }
            }
        }
    }
}

/// Binds `$1`, `$2`, … by name: SQLite numbers named parameters in order of first
/// appearance, which need not be the order of their numbers.
fn bind_sqlite(stmt: &mut rusqlite::CachedStatement<'_>, params: &[Value]) -> Result<()> {
    for (i, value) in params.iter().enumerate() {
        let Some(index) = stmt.parameter_index(&format!("${}", i + 1))? else {
            continue; // a parameter the statement does not use
        };
        match value {
            Value::Null | Value::NullInt | Value::NullBool => stmt.raw_bind_parameter(index, rusqlite::types::Null)?,
            Value::Int(n) => stmt.raw_bind_parameter(index, n)?,
            Value::Bool(b) => stmt.raw_bind_parameter(index, i64::from(*b))?,
            Value::Text(s) => stmt.raw_bind_parameter(index, s.as_str())?,
            Value::Bytes(b) => stmt.raw_bind_parameter(index, b.as_slice())?,
        }
    }
    Ok(())
}

fn bind_pg<'q>(
    mut query: sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments>,
    params: &'q [Value],
) -> sqlx::query::Query<'q, Postgres, sqlx::postgres::PgArguments> {
    for value in params {
        query = match value {
            Value::Null => query.bind(None::<String>),
            Value::NullInt => query.bind(None::<i64>),
            Value::NullBool => query.bind(None::<bool>),
            Value::Int(n) => query.bind(*n),
            Value::Bool(b) => query.bind(*b),
            Value::Text(s) => query.bind(s.as_str()),
            Value::Bytes(b) => query.bind(b.as_slice()),
        };
    }
    query
}

fn pg_row(row: &PgRow) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let value = match column.type_info().name() {
            "BOOL" => row.try_get::<Option<bool>, _>(i)?.map_or(Value::Null, |b| Value::Int(b as i64)),
            "INT2" => row.try_get::<Option<i16>, _>(i)?.map_or(Value::Null, |n| Value::Int(n.into())),
            "INT4" => row.try_get::<Option<i32>, _>(i)?.map_or(Value::Null, |n| Value::Int(n.into())),
            "INT8" => row.try_get::<Option<i64>, _>(i)?.map_or(Value::Null, Value::Int),
            "TEXT" | "VARCHAR" | "BPCHAR" | "NAME" => {
                row.try_get::<Option<String>, _>(i)?.map_or(Value::Null, Value::Text)
            }
            "BYTEA" => row.try_get::<Option<Vec<u8>>, _>(i)?.map_or(Value::Null, Value::Bytes),
            other => {
                return Err(StoreError::Database(sqlx::Error::ColumnDecode {
                    index: i.to_string(),
                    source: format!("unsupported column type {other} in a synchronous query").into(),
                }));
            }
        };
        values.push(value);
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A sync that fails (here: of a pipe, which cannot be synced) makes every
    /// later sync of the writer refuse without trying, whatever file it is
    /// for: a file that failed to sync is not sound again by being reopened.
    #[test]
    fn after_one_failed_sync_every_sync_of_the_writer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut writer = Writer::new(path.clone());
        let health = writer.health();
        writer.conn().unwrap().execute_batch("CREATE TABLE t (x); INSERT INTO t VALUES (1);").unwrap();
        let sound = writer.unsynced().unwrap();
        sound.sync().unwrap();
        assert!(!health.failed());

        let (_reader, pipe) = std::io::pipe().unwrap();
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(pipe));
        let failing = Unsynced(Arc::new(Log { file, path: "a pipe".into(), health: writer.health() }));
        assert!(matches!(failing.sync(), Err(StoreError::Sync { .. })), "a pipe cannot be synced");
        assert!(health.failed());
        assert!(
            matches!(sound.sync(), Err(StoreError::LogFailed)),
            "the log that still could be synced is refused too"
        );
        // Reopened (as after an error on the connection): still refused.
        writer.conn = None;
        writer.log = None;
        writer.conn().unwrap().execute_batch("INSERT INTO t VALUES (2);").unwrap();
        assert!(matches!(writer.unsynced().unwrap().sync(), Err(StoreError::LogFailed)));
        // Another process (another writer) starts sound.
        let mut next = Writer::new(path);
        next.conn().unwrap().execute_batch("INSERT INTO t VALUES (3);").unwrap();
        next.unsynced().unwrap().sync().unwrap();
    }

    /// The writer leaves syncing to its committers (`synchronous=NORMAL`),
    /// every other connection syncs at commit (`FULL`), and what a committer
    /// syncs is the log its commit went to, also after a checkpoint emptied it.
    #[test]
    fn the_writer_commits_without_syncing_and_hands_over_its_log() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut writer = Writer::new(path.clone());
        let synchronous =
            |c: &rusqlite::Connection| -> i64 { c.query_row("PRAGMA synchronous", [], |r| r.get(0)).unwrap() };
        assert_eq!(synchronous(writer.conn().unwrap()), 1, "NORMAL on the writer");
        let other = open_sqlite(&path).unwrap();
        assert_eq!(synchronous(&other), 2, "FULL elsewhere");

        let log_path = dir.path().join("db.sqlite-wal");
        let inode = |p: &Path| std::fs::metadata(p).unwrap().ino();
        writer.conn().unwrap().execute_batch("CREATE TABLE t (x BLOB)").unwrap();
        let first = writer.unsynced().unwrap();
        first.sync().unwrap();
        assert_eq!(first.0.file.metadata().unwrap().ino(), inode(&log_path));
        assert!(std::fs::metadata(&log_path).unwrap().len() > 0, "the commit is in the log");

        // A checkpoint that empties the log keeps the file: the same handle still names it.
        let (busy, _, _): (i64, i64, i64) =
            other.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).unwrap();
        assert_eq!(busy, 0);
        assert_eq!(std::fs::metadata(&log_path).unwrap().len(), 0);
        writer.conn().unwrap().execute("INSERT INTO t VALUES (zeroblob(4000))", []).unwrap();
        let second = writer.unsynced().unwrap();
        assert!(second.same_log(&first));
        assert_eq!(second.0.file.metadata().unwrap().ino(), inode(&log_path));
        assert!(std::fs::metadata(&log_path).unwrap().len() > 4000, "the second commit is in the same file");
        second.sync().unwrap();
        let rows: i64 = other.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(rows, 1);
    }

    /// How many bytes of `path` this process has mapped (Linux: /proc/self/maps).
    fn mapped_bytes(path: &Path) -> u64 {
        let path = path.to_str().unwrap();
        std::fs::read_to_string("/proc/self/maps")
            .unwrap()
            .lines()
            .filter(|line| line.ends_with(path))
            .map(|line| {
                let range = line.split(' ').next().unwrap();
                let (start, end) = range.split_once('-').unwrap();
                u64::from_str_radix(end, 16).unwrap() - u64::from_str_radix(start, 16).unwrap()
            })
            .sum()
    }

    /// The file grows through another connection's checkpoints (as the
    /// checkpointer's), which SQLite's own map would not follow on the only
    /// connection that writes: the writer maps it again at the start of a turn.
    #[test]
    fn the_writer_maps_the_file_as_it_grows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db.sqlite");
        let mut writer = Writer::new(path.clone());
        let conn = writer.conn().unwrap();
        conn.execute_batch("CREATE TABLE t (x BLOB); INSERT INTO t VALUES (zeroblob(100))").unwrap();
        let rows = |conn: &rusqlite::Connection| -> i64 {
            conn.query_row("SELECT COUNT(*) FROM t WHERE length(x) > 0", [], |r| r.get(0)).unwrap()
        };
        // As the checkpointer's connection: no memory map of its own.
        let checkpointer = rusqlite::Connection::open(&path).unwrap();
        checkpointer.pragma_update(None, "mmap_size", 0).unwrap();
        let checkpoint = || {
            let (busy, log, copied): (i64, i64, i64) = checkpointer
                .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .unwrap();
            assert_eq!((busy, log), (0, copied), "the whole log copied");
        };
        checkpoint();
        // Read from the file (the log is all copied), in a transaction of the
        // writer's as a handler's lookups are: SQLite maps the file now.
        let conn = writer.conn().unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert_eq!(rows(conn), 1);
        conn.execute_batch("COMMIT").unwrap();
        let small = std::fs::metadata(&path).unwrap().len();
        assert!(mapped_bytes(&path) > 0, "the file is mapped");
        assert!(mapped_bytes(&path) < 1 << 20, "{} bytes mapped of a small file", mapped_bytes(&path));

        // 20 MiB more, in transactions of the writer's as a worker's, each
        // copied into the file by the other connection as the checkpointer does.
        for _ in 0..10 {
            let conn = writer.conn().unwrap();
            conn.execute_batch(
                "BEGIN IMMEDIATE; \
                 INSERT INTO t SELECT zeroblob(4000) FROM (WITH RECURSIVE n(i) AS \
                     (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 500) SELECT i FROM n); \
                 COMMIT",
            )
            .unwrap();
            checkpoint();
        }
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(grown > small + (16 << 20), "{grown} bytes");

        // Read in a transaction of the writer's, as a handler's lookups are.
        let conn = writer.conn().unwrap();
        conn.execute_batch("BEGIN IMMEDIATE").unwrap();
        assert_eq!(rows(conn), 5001);
        conn.execute_batch("COMMIT").unwrap();
        assert!(mapped_bytes(&path) >= grown, "{} bytes mapped of a file of {grown} bytes", mapped_bytes(&path));
    }
}

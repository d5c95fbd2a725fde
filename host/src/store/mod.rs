//! Durable state, on SQLite or Postgres.
//!
//! Owns: pools and connection options, migrations for each backend, and every SQL
//! statement the host runs (inbox in [`inbox`], users/organizations/memberships in
//! [`directory`], handlers' documents in [`documents`]). Must not: know HTTP,
//! signatures or wasm.
//!
//! Both backends run the same SQL text: it uses `$N` placeholders, which SQLite
//! accepts too, and only portable syntax (`ON CONFLICT … DO UPDATE … WHERE`,
//! `RETURNING`). Reads for inspection go through the sqlx pools (the
//! `on_pool!` macro expands one body per backend). Everything the worker
//! writes goes through [`exec::SyncTx`], a synchronous transaction, because
//! handlers run synchronously inside it.

pub mod actions;
pub mod checkpoint;
pub mod directory;
pub mod documents;
pub mod exec;
pub mod inbox;
pub mod modules;
pub mod spill;
pub mod sqlite_writer;
pub mod tenants;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, SqlitePool};

use crate::settings::DatabaseUrl;

/// How long a SQLite statement waits for the write lock before failing.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// SQLite has one writer; a few connections serve readers (CLI, later queries).
const SQLITE_POOL_SIZE: u32 = 4;
const POSTGRES_POOL_SIZE: u32 = 10;
/// How long to wait for a pooled connection before reporting the database unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored data is not as the host wrote it: {0}")]
    Corrupt(String),
    #[error("synchronous transactions need an on-disk SQLite file, not {0}")]
    NoSqliteFile(String),
    #[error("could not make a commit durable: syncing {path} failed: {source}")]
    Sync { path: String, source: std::io::Error },
    #[error(
        "a sync of the database's log failed earlier in this process: nothing more is made durable until it restarts"
    )]
    LogFailed,
    #[error(
        "the database was migrated by a newer authkit-host (schema version {found}; this one knows up to {known}): \
         run that version or a later one; every host process on one database must run the same version"
    )]
    NewerSchema { found: i64, known: i64 },
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool on one of the two backends.
#[derive(Clone, Debug)]
pub enum Store {
    /// The pool, the write gate, and whether the log has failed to sync.
    Sqlite(SqlitePool, WriteGate, exec::LogHealth),
    Postgres(PgPool),
}

/// SQLite has one writer at a time. Writers in this process queue here, in order,
/// before they take SQLite's lock, so none of them ever meets a held lock and
/// falls into SQLite's busy handler, which sleeps in growing steps (up to 100 ms)
/// and would stall webhook acknowledgements behind the worker. The holder may
/// write through the process's one writing connection, kept here (see
/// [`exec::Writer`]); the sqlx pool's writers hold the gate but use their own.
pub type WriteGate = Arc<tokio::sync::Mutex<exec::Writer>>;

/// Runs `$body` with `$pool` bound to the backend's pool; the body is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool, ..) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

pub(crate) use on_pool;

impl Store {
    /// Connects, creating the SQLite file if needed, and applies migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store> {
        let store = match url {
            DatabaseUrl::Sqlite(url) => {
                exec::configure_sqlite();
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before it returns, so an
                    // acknowledged webhook survives a power cut, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true)
                    // The checkpointer copies the log (see `checkpoint`).
                    .pragma("wal_autocheckpoint", checkpoint::FALLBACK_AUTOCHECKPOINT_PAGES.to_string());
                let pool = SqlitePoolOptions::new()
                    .max_connections(SQLITE_POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                let writer = exec::Writer::new(pool.connect_options().get_filename().to_path_buf());
                let health = writer.health();
                Store::Sqlite(pool, Arc::new(tokio::sync::Mutex::new(writer)), health)
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(POSTGRES_POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                Store::Postgres(pool)
            }
        };
        store.check_schema().await?;
        on_pool!(&store, pool => store.migrator().run(pool).await?);
        Ok(store)
    }

    /// On SQLite, this process's turn at the write gate (hold it until the
    /// commit); on Postgres, nothing to wait for.
    pub async fn write_turn(&self) -> Option<tokio::sync::OwnedMutexGuard<exec::Writer>> {
        match self {
            Store::Sqlite(_, gate, _) => Some(gate.clone().lock_owned().await),
            Store::Postgres(_) => None,
        }
    }

    /// The database file, on SQLite with a file.
    fn sqlite_path(&self) -> Option<std::path::PathBuf> {
        match self {
            Store::Sqlite(pool, ..) => sqlite_file(pool),
            Store::Postgres(_) => None,
        }
    }

    /// On SQLite, whether this process's syncs of the log still work (see
    /// [`exec::LogHealth`]); Postgres makes its own commits durable.
    pub fn log_health(&self) -> Option<exec::LogHealth> {
        match self {
            Store::Sqlite(_, _, health) => Some(health.clone()),
            Store::Postgres(_) => None,
        }
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(..) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// A source of synchronous transactions on the same database, for code on a
    /// blocking thread (see [`exec`]). `handle` drives Postgres I/O.
    pub fn sync_db(&self, handle: tokio::runtime::Handle) -> Result<exec::SyncDb> {
        match self {
            Store::Sqlite(pool, gate, _) => {
                let path = sqlite_file(pool).ok_or_else(|| {
                    StoreError::NoSqliteFile(pool.connect_options().get_filename().display().to_string())
                })?;
                Ok(exec::SyncDb::Sqlite(exec::SqliteConns::open(&path, gate.clone())?))
            }
            Store::Postgres(pool) => Ok(exec::SyncDb::Postgres(pool.clone(), handle)),
        }
    }

    /// On SQLite, starts copying the write-ahead log into the database file on
    /// a thread of its own (see [`checkpoint`]); the server runs one while it
    /// serves. Postgres: nothing to do.
    pub fn start_checkpointer(&self) -> Result<Option<checkpoint::Checkpointer>> {
        match self {
            Store::Sqlite(pool, gate, _) => match sqlite_file(pool) {
                Some(path) => checkpoint::Checkpointer::start(&path, gate.clone()).map(Some),
                None => Ok(None),
            },
            Store::Postgres(_) => Ok(None),
        }
    }

    /// Refuses to go on once another host process has migrated the database
    /// past this build's schema: this process's statements were written for
    /// the older one. Servers check it periodically (a migration can happen
    /// while they run); `connect` checks it before migrating.
    pub async fn check_schema(&self) -> Result<()> {
        let known = self.migrator().iter().map(|m| m.version).max().unwrap_or(0);
        match self.schema_version().await? {
            Some(found) if found > known => Err(StoreError::NewerSchema { found, known }),
            _ => Ok(()),
        }
    }

    /// This build's migrations for the backend.
    fn migrator(&self) -> sqlx::migrate::Migrator {
        match self {
            Store::Sqlite(..) => sqlx::migrate!("migrations/sqlite"),
            Store::Postgres(_) => sqlx::migrate!("migrations/postgres"),
        }
    }

    /// The newest migration applied to the database; `None` before the first.
    async fn schema_version(&self) -> Result<Option<i64>> {
        let exists = match self {
            Store::Sqlite(pool, ..) => {
                sqlx::query_scalar::<_, i64>(
                    "SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = '_sqlx_migrations'",
                )
                .fetch_one(pool)
                .await?
                    > 0
            }
            Store::Postgres(pool) => {
                sqlx::query_scalar::<_, bool>("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
                    .fetch_one(pool)
                    .await?
            }
        };
        if !exists {
            return Ok(None);
        }
        const NEWEST: &str = "SELECT MAX(version) FROM _sqlx_migrations";
        Ok(on_pool!(self, pool => sqlx::query_scalar::<_, Option<i64>>(NEWEST).fetch_one(pool).await?))
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

/// The file behind a SQLite pool; `None` for a database with no file (an
/// empty path or `:memory:`), which the host's own connections cannot open.
fn sqlite_file(pool: &SqlitePool) -> Option<std::path::PathBuf> {
    let path = pool.connect_options().get_filename().to_path_buf();
    let no_file = path.as_os_str().is_empty() || path.as_os_str() == ":memory:";
    (!no_file).then_some(path)
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;

    /// The SQLite migrations in order, as (file name, SQL).
    pub(super) fn sqlite_migrations() -> Vec<(String, String)> {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("migrations/sqlite");
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        files
            .into_iter()
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read_to_string(&p).unwrap()))
            .collect()
    }

    const INSERT: &str = "INSERT INTO inbox (tenant_id, event_id, event_type, subject, occurred_at, received_at, \
        payload, next_attempt_at, status, logs) VALUES ('t', ?1, 'user.updated', 'user:u', 1, 1, '{}', 1, ?2, ?3)";

    /// 0010 rebuilds the inbox: every row and column survives, the AUTOINCREMENT
    /// counter carries over (a `seq` freed at the top is not handed out again),
    /// and the status rule still refuses what it refused.
    #[test]
    fn rebuilding_the_inbox_keeps_rows_sequence_and_status_rule() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        let migrations = sqlite_migrations();
        let at = migrations.iter().position(|(name, _)| name.starts_with("0010_")).expect("migration 0010");
        let (earlier, rebuild) = (&migrations[..at], &migrations[at].1);
        for (_, sql) in earlier {
            conn.execute_batch(sql).unwrap();
        }
        for (i, status) in ["pending", "failed", "done", "dead", "done"].iter().enumerate() {
            conn.execute(INSERT, rusqlite::params![format!("e{i}"), status, format!("log {i}")]).unwrap();
        }
        conn.execute("DELETE FROM inbox WHERE seq = 5", []).unwrap();
        let rows = |conn: &rusqlite::Connection| -> Vec<Vec<rusqlite::types::Value>> {
            let mut stmt = conn.prepare("SELECT * FROM inbox ORDER BY seq").unwrap();
            let columns = stmt.column_count();
            stmt.query_map([], |row| (0..columns).map(|i| row.get(i)).collect()).unwrap().map(Result::unwrap).collect()
        };
        let before = rows(&conn);

        conn.execute_batch(rebuild).unwrap();

        assert_eq!(rows(&conn), before);
        conn.execute(INSERT, rusqlite::params!["e9", "pending", None::<String>]).unwrap();
        let seq: i64 = conn.query_row("SELECT seq FROM inbox WHERE event_id = 'e9'", [], |r| r.get(0)).unwrap();
        assert_eq!(seq, 6, "seq 5 was handed out before the rebuild");
        let refused = conn.execute(INSERT, rusqlite::params!["e10", "bogus", None::<String>]);
        assert!(refused.unwrap_err().to_string().contains("CHECK constraint failed"));
        let indexes: Vec<String> = conn
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'inbox' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(indexes, ["inbox_dead", "inbox_retrying_subject", "inbox_unfinished", "sqlite_autoindex_inbox_1"]);
    }
}

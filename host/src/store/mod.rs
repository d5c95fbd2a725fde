//! Durable state, on SQLite or Postgres, through sqlx.
//!
//! Owns: pools and connection options, migrations for each backend, and every SQL
//! statement the host runs (inbox in [`inbox`], users/organizations/memberships in
//! [`directory`]). Must not: know HTTP, signatures or wasm.
//!
//! Both backends run the same SQL text: it uses `$N` placeholders, which SQLite
//! accepts too, and only portable syntax (`ON CONFLICT … DO UPDATE … WHERE`,
//! `RETURNING`). The [`on_pool!`] and [`on_tx!`] macros expand one body per
//! backend, so each query is written once and type-checked for both.

pub mod directory;
pub mod documents;
pub mod exec;
pub mod inbox;
pub mod sqlite_writer;

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::{PgPool, Postgres, Sqlite, SqlitePool, Transaction};

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
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A connection pool on one of the two backends.
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqlitePool, WriteGate),
    Postgres(PgPool),
}

/// SQLite has one writer at a time. Writers in this process queue here, in order,
/// before they take SQLite's lock, so none of them ever meets a held lock and
/// falls into SQLite's busy handler, which sleeps in growing steps (up to 100 ms)
/// and would stall webhook acknowledgements behind the worker.
pub type WriteGate = Arc<tokio::sync::Mutex<()>>;

/// An open transaction on one of the two backends. On SQLite it holds the write
/// gate until it ends (fields drop in order: the transaction, then the gate).
pub enum Tx {
    Sqlite(Transaction<'static, Sqlite>, tokio::sync::OwnedMutexGuard<()>),
    Postgres(Transaction<'static, Postgres>),
}

/// Runs `$body` with `$pool` bound to the backend's pool; the body is compiled once per backend.
macro_rules! on_pool {
    ($store:expr, $pool:ident => $body:expr) => {
        match $store {
            $crate::store::Store::Sqlite($pool, _) => $body,
            $crate::store::Store::Postgres($pool) => $body,
        }
    };
}

/// Runs `$body` with `$conn` bound to the transaction's connection (use `&mut *$conn`).
macro_rules! on_tx {
    ($tx:expr, $conn:ident => $body:expr) => {
        match $tx {
            $crate::store::Tx::Sqlite(tx, _) => {
                let $conn = &mut **tx;
                $body
            }
            $crate::store::Tx::Postgres(tx) => {
                let $conn = &mut **tx;
                $body
            }
        }
    };
}
pub(crate) use {on_pool, on_tx};

impl Store {
    /// Connects, creating the SQLite file if needed, and applies migrations.
    pub async fn connect(url: &DatabaseUrl) -> Result<Store> {
        let store = match url {
            DatabaseUrl::Sqlite(url) => {
                let options = SqliteConnectOptions::from_str(url)?
                    .create_if_missing(true)
                    .journal_mode(SqliteJournalMode::Wal)
                    // FULL: a commit is on disk before it returns, so an
                    // acknowledged webhook survives a power cut, not only a crash.
                    .synchronous(SqliteSynchronous::Full)
                    .busy_timeout(SQLITE_BUSY_TIMEOUT)
                    .foreign_keys(true);
                let pool = SqlitePoolOptions::new()
                    .max_connections(SQLITE_POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("migrations/sqlite").run(&pool).await?;
                Store::Sqlite(pool, WriteGate::default())
            }
            DatabaseUrl::Postgres(url) => {
                let options = PgConnectOptions::from_str(url)?;
                let pool = PgPoolOptions::new()
                    .max_connections(POSTGRES_POOL_SIZE)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_with(options)
                    .await?;
                sqlx::migrate!("migrations/postgres").run(&pool).await?;
                Store::Postgres(pool)
            }
        };
        Ok(store)
    }

    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(..) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// Begins a write transaction. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`), so a read-then-write transaction never fails halfway
    /// because another writer committed in between.
    pub async fn begin(&self) -> Result<Tx> {
        Ok(match self {
            Store::Sqlite(pool, gate) => {
                let turn = gate.clone().lock_owned().await;
                Tx::Sqlite(pool.begin_with("BEGIN IMMEDIATE").await?, turn)
            }
            Store::Postgres(pool) => Tx::Postgres(pool.begin().await?),
        })
    }

    /// A source of synchronous transactions on the same database, for code on a
    /// blocking thread (see [`exec`]). `handle` drives Postgres I/O.
    pub fn sync_db(&self, handle: tokio::runtime::Handle) -> Result<exec::SyncDb> {
        match self {
            Store::Sqlite(pool, gate) => {
                let path = pool.connect_options().get_filename().to_path_buf();
                if path.as_os_str().is_empty() || path.as_os_str() == ":memory:" {
                    return Err(StoreError::NoSqliteFile(path.display().to_string()));
                }
                Ok(exec::SyncDb::Sqlite(exec::SqliteConn::open(&path, gate.clone())?))
            }
            Store::Postgres(pool) => Ok(exec::SyncDb::Postgres(pool.clone(), handle)),
        }
    }

    pub async fn close(&self) {
        on_pool!(self, pool => pool.close().await)
    }
}

impl Tx {
    pub async fn commit(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx, _turn) => tx.commit().await?,
            Tx::Postgres(tx) => tx.commit().await?,
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<()> {
        match self {
            Tx::Sqlite(tx, _turn) => tx.rollback().await?,
            Tx::Postgres(tx) => tx.rollback().await?,
        }
        Ok(())
    }

    pub fn is_postgres(&self) -> bool {
        matches!(self, Tx::Postgres(_))
    }

    /// Marks a point the transaction can return to with [`Tx::rollback_to_savepoint`].
    pub async fn savepoint(&mut self) -> Result<()> {
        on_tx!(self, c => sqlx::query("SAVEPOINT event").execute(&mut *c).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn release_savepoint(&mut self) -> Result<()> {
        on_tx!(self, c => sqlx::query("RELEASE SAVEPOINT event").execute(&mut *c).await.map(|_| ()))?;
        Ok(())
    }

    pub async fn rollback_to_savepoint(&mut self) -> Result<()> {
        on_tx!(self, c => sqlx::query("ROLLBACK TO SAVEPOINT event").execute(&mut *c).await.map(|_| ()))?;
        on_tx!(self, c => sqlx::query("RELEASE SAVEPOINT event").execute(&mut *c).await.map(|_| ()))?;
        Ok(())
    }
}

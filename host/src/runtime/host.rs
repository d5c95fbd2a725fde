//! The host side of the WIT imports (`db`, `users`, `log`) for one invocation.
//!
//! Owns: the call budget, the read-only rule, and the mapping of store results to
//! the WIT's typed errors. A database failure is the host's fault, not the
//! guest's: it becomes a trap carrying [`HostFault`], never a guest-visible error.
//! Must not: build SQL (the store does) or take the tenant from the guest.

use std::sync::{Arc, Mutex};

use super::bindings::authkit::handler::{db, log, types, users};
use super::log::LogBuffer;
use super::{GuestUser, InvocationLimits};
use crate::clock;
use crate::store::StoreError;
use crate::store::directory::{self, StoredUser, UserKey};
use crate::store::documents::{DocError, Document, Documents, Indexes, Limits, Page, check_name};
use crate::store::exec::SyncTx;

/// A store failure inside a host call; the invocation traps with it.
#[derive(Debug)]
pub struct HostFault(Mutex<Option<StoreError>>);

impl HostFault {
    fn trap(e: StoreError) -> wasmtime::Error {
        wasmtime::Error::new(HostFault(Mutex::new(Some(e))))
    }

    /// The store error (once; later calls get a placeholder).
    pub fn take(&self) -> StoreError {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
            .unwrap_or_else(|| StoreError::Corrupt("host fault already reported".into()))
    }
}

impl std::fmt::Display for HostFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &*self.0.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(e) => write!(f, "host fault: {e}"),
            None => write!(f, "host fault"),
        }
    }
}

impl std::error::Error for HostFault {}

/// A write past the tenant's document quota. WIT 0.1.0's `db.error` has no
/// case for it, so it stops the call (its writes roll back; an event is
/// retried, an action gets its fallback) instead of reaching the guest.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the handler wrote past its tenant's document quota of {0} documents")]
pub struct QuotaExceeded(pub u64);

/// The indexes one call sees.
pub struct CallIndexes {
    /// What its module declared: the fields its `find` may use.
    pub findable: Arc<Indexes>,
    /// What the tenant's writes keep up to date: every stored version's
    /// declarations (a superset of `findable`).
    pub maintained: Arc<Indexes>,
}

pub struct HostState {
    /// The transaction lent by the caller; `None` when the call has no database
    /// (`schema.indexes` at load time).
    pub tx: Option<SyncTx>,
    tenant: String,
    indexes: CallIndexes,
    documents: Limits,
    calls: u32,
    max_calls: u32,
    read_only: bool,
    /// Whether a write succeeded in this call.
    wrote: bool,
    log: Arc<Mutex<LogBuffer>>,
}

impl HostState {
    pub fn new(
        tx: Option<SyncTx>,
        tenant: &str,
        indexes: CallIndexes,
        limits: &InvocationLimits,
        read_only: bool,
        log: Arc<Mutex<LogBuffer>>,
    ) -> HostState {
        HostState {
            tx,
            tenant: tenant.to_string(),
            indexes,
            documents: limits.documents,
            calls: 0,
            max_calls: limits.max_calls,
            read_only,
            wrote: false,
            log,
        }
    }

    /// Lends a call made ready without a transaction its transaction, and the
    /// indexes its writes keep up to date.
    pub fn lend(&mut self, tx: SyncTx, maintained: Arc<Indexes>) {
        self.tx = Some(tx);
        self.indexes.maintained = maintained;
    }

    pub fn wrote(&self) -> bool {
        self.wrote
    }

    /// Counts one call; `false` once the budget is spent.
    fn spend(&mut self) -> bool {
        if self.calls >= self.max_calls {
            return false;
        }
        self.calls += 1;
        true
    }

    /// Runs one `db` operation with the budget, read-only rule and error mapping.
    fn db<T>(
        &mut self,
        write: bool,
        op: impl FnOnce(&mut Documents) -> Result<T, DocError>,
    ) -> wasmtime::Result<Result<T, db::Error>> {
        if !self.spend() {
            return Ok(Err(db::Error::TooManyCalls(self.max_calls)));
        }
        if write && self.read_only {
            return Ok(Err(db::Error::ReadOnly));
        }
        let HostState { tx, tenant, indexes, documents, .. } = self;
        let tx = tx.as_mut().ok_or_else(no_database)?;
        let mut docs = Documents { tx, tenant, indexes: &indexes.maintained, limits: *documents };
        match op(&mut docs) {
            Ok(v) => {
                self.wrote |= write;
                Ok(Ok(v))
            }
            Err(DocError::Store(e)) => Err(HostFault::trap(e)),
            Err(DocError::QuotaExceeded(n)) => Err(wasmtime::Error::new(QuotaExceeded(n))),
            Err(e) => Ok(Err(match e {
                DocError::InvalidTableName(m) => db::Error::InvalidTableName(m),
                DocError::InvalidDocument(m) => db::Error::InvalidDocument(m),
                DocError::DocumentTooLarge(n) => db::Error::DocumentTooLarge(n),
                DocError::NotFound => db::Error::NotFound,
                DocError::NotIndexed(f) => db::Error::NotIndexed(f),
                DocError::InvalidValue(m) => db::Error::InvalidValue(m),
                DocError::InvalidCursor => db::Error::InvalidCursor,
                DocError::Store(_) | DocError::QuotaExceeded(_) => unreachable!("handled above"),
            })),
        }
    }

    fn user(&mut self, key: UserKey, value: &str) -> wasmtime::Result<Result<Option<types::User>, users::Error>> {
        if !self.spend() {
            return Ok(Err(users::Error::TooManyCalls(self.max_calls)));
        }
        let tx = self.tx.as_mut().ok_or_else(no_database)?;
        let found = directory::find_user(tx, &self.tenant, key, value).map_err(HostFault::trap)?;
        Ok(Ok(found.map(guest_user)))
    }
}

fn no_database() -> wasmtime::Error {
    wasmtime::format_err!("no database is available in this call")
}

fn document(d: Document) -> db::Document {
    db::Document { id: d.id, created_at: d.created_at, updated_at: d.updated_at, body: d.body }
}

fn page(p: Page) -> db::Page {
    db::Page { documents: p.documents.into_iter().map(document).collect(), next_cursor: p.next_cursor }
}

/// The users table's row as the WIT `user` record (times as RFC 3339).
pub fn guest_user(u: StoredUser) -> GuestUser {
    GuestUser {
        id: u.id,
        email: u.email,
        email_verified: u.email_verified,
        first_name: u.first_name,
        last_name: u.last_name,
        name: u.name,
        profile_picture_url: u.profile_picture_url,
        last_sign_in_at: u.last_sign_in_at.map(clock::format_ms),
        locale: u.locale,
        external_id: u.external_id,
        metadata: u.metadata,
        created_at: u.created_at.map(clock::format_ms),
        updated_at: Some(clock::format_ms(u.updated_at)),
    }
}

impl types::Host for HostState {}

impl db::Host for HostState {
    fn insert(&mut self, table: String, body: String) -> wasmtime::Result<Result<String, db::Error>> {
        self.db(true, |d| d.insert(&table, &body))
    }

    fn get(&mut self, table: String, id: String) -> wasmtime::Result<Result<Option<db::Document>, db::Error>> {
        self.db(false, |d| Ok(d.get(&table, &id)?.map(document)))
    }

    fn patch(
        &mut self,
        table: String,
        id: String,
        fields: String,
    ) -> wasmtime::Result<Result<db::Document, db::Error>> {
        self.db(true, |d| d.patch(&table, &id, &fields).map(document))
    }

    fn replace(
        &mut self,
        table: String,
        id: String,
        body: String,
    ) -> wasmtime::Result<Result<db::Document, db::Error>> {
        self.db(true, |d| d.replace(&table, &id, &body).map(document))
    }

    fn delete(&mut self, table: String, id: String) -> wasmtime::Result<Result<bool, db::Error>> {
        self.db(true, |d| d.delete(&table, &id))
    }

    fn find(
        &mut self,
        table: String,
        field: String,
        value: String,
        limit: u32,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<db::Page, db::Error>> {
        if check_name(&table).is_ok() && !self.indexes.findable.contains(&table, &field) {
            // Maintained for another version, perhaps, but not declared by this one.
            return self.db(false, |_| Err(DocError::NotIndexed(field)));
        }
        self.db(false, |d| d.find(&table, &field, &value, limit, cursor.as_deref()).map(page))
    }

    fn list(
        &mut self,
        table: String,
        limit: u32,
        cursor: Option<String>,
    ) -> wasmtime::Result<Result<db::Page, db::Error>> {
        self.db(false, |d| d.list(&table, limit, cursor.as_deref()).map(page))
    }
}

impl users::Host for HostState {
    fn get(&mut self, id: String) -> wasmtime::Result<Result<Option<types::User>, users::Error>> {
        self.user(UserKey::Id, &id)
    }

    fn get_by_email(&mut self, email: String) -> wasmtime::Result<Result<Option<types::User>, users::Error>> {
        self.user(UserKey::Email, &email)
    }

    fn get_by_external_id(
        &mut self,
        external_id: String,
    ) -> wasmtime::Result<Result<Option<types::User>, users::Error>> {
        self.user(UserKey::ExternalId, &external_id)
    }
}

impl log::Host for HostState {
    fn log(&mut self, level: log::Level, message: String) -> wasmtime::Result<()> {
        let level = match level {
            log::Level::Trace => "trace",
            log::Level::Debug => "debug",
            log::Level::Info => "info",
            log::Level::Warn => "warn",
            log::Level::Error => "error",
        };
        self.log.lock().unwrap_or_else(|p| p.into_inner()).push(level, &message);
        Ok(())
    }
}

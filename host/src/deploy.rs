//! A tenant's handler versions and the one that is live.
//!
//! Owns: upload (size cap, validation by loading the component, storing it,
//! building the indexes it declares), activation and roll back (the live swap),
//! deletion, adopting a version another host process activated, and the set of
//! indexes the tenant's writes maintain. Must not: speak HTTP (see
//! [`crate::http::admin`]), hold SQL (see [`crate::store::modules`]) or run a
//! handler (see [`crate::runtime`]). Every method blocks: call it from a
//! blocking thread.
//!
//! The swap: the live module is an `Arc` behind a lock. A call clones it when it
//! starts and runs on that version to its end, however long it takes; the
//! activation replaces it once the new version is loaded (compiled, or taken
//! from the cache) and its activation is committed, so every call that starts
//! after `activate` returns runs the new version and none fails because of it.
//!
//! Indexes: writes maintain the union of the indexes every stored version
//! declares, so activating or rolling back changes no index and is instant; a
//! version's new indexes are built when it is uploaded, and indexes no stored
//! version declares are dropped when a version is deleted. A call that may
//! write holds [`Deployment::writing`] (a read lock) while its transaction is
//! open; a change to the union takes the write lock, so no transaction commits
//! entries computed from an older set after the backfill read the documents.

use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};

use serde::Serialize;
use tracing::{debug, info, warn};

use crate::clock;
use crate::locks::{lock, read, write};
use crate::runtime::limits::InvalidLimit;
use crate::runtime::{CacheStats, InvocationLimits, LoadError, Module, ModuleLimits, Runtime, WIT_VERSION, pool_parts};
use crate::store::StoreError;
use crate::store::documents::{DocError, Documents, Indexes};
use crate::store::exec::{SyncDb, SyncTx};
use crate::store::modules::{self, ModuleInfo, NewModule};

/// How many recently live versions stay loaded.
const KEEP_LOADED: usize = 4;

/// The version calls run on.
#[derive(Clone)]
pub struct Live {
    pub version: i64,
    pub module: Arc<Module>,
    /// What this version sets over its tenant's limits.
    pub limits: ModuleLimits,
}

impl Live {
    /// The limits a call of this version runs under: `tenant`'s, with the version's own applied.
    pub fn limits_over(&self, tenant: &InvocationLimits) -> InvocationLimits {
        self.limits.over(tenant)
    }
}

/// Why a change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("the component is {size} bytes, over the limit of {limit} bytes (modules.max_bytes)")]
    TooLarge { size: usize, limit: usize },
    #[error(transparent)]
    Invalid(#[from] LoadError),
    #[error("there is no version {0}")]
    NotFound(i64),
    #[error("version {0} is active: activate another version before deleting it")]
    Active(i64),
    #[error("there is no earlier version to roll back to")]
    NothingToRollBack,
    #[error("version {version} is stored but cannot be loaded by this host: {reason}")]
    Unloadable { version: i64, reason: String },
    #[error("failed to build the version's indexes: {0}")]
    Indexes(DocError),
    #[error("invalid limit: {0}")]
    InvalidLimit(#[from] InvalidLimit),
    #[error("tenant {0:?} was deleted")]
    TenantGone(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The outcome of an upload.
#[derive(Debug, Clone, Serialize)]
pub struct Uploaded {
    #[serde(flatten)]
    pub info: ModuleInfo,
    /// `false` when a stored version already had these exact bytes.
    pub created: bool,
}

/// What the admin API reports about the runtime.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    pub active_version: Option<i64>,
    pub wit_version: &'static str,
    pub cache: CacheStats,
    /// The host's instance pool size (`handler.instance_slots`).
    pub instance_slots: u32,
    /// The parts wasmtime splits it into, one per CPU (at most 16): a thread
    /// keeps versions warm in its own part only.
    pub instance_pool_parts: u32,
}

pub struct Deployment {
    tenant: String,
    /// The tenant's `created_at`: which tenant of the slug this is. A version
    /// change made through it is refused once the slug names another tenant.
    tenant_created_at: i64,
    runtime: Arc<Runtime>,
    db: Arc<SyncDb>,
    live: RwLock<Option<Live>>,
    maintained: RwLock<Arc<Indexes>>,
    /// One change at a time in this process (processes serialize in the database).
    changes: Mutex<()>,
    /// The last few versions that were live, kept loaded so that switching
    /// back and forth (or rolling back) needs no load from the cache.
    recent: Mutex<Vec<Live>>,
    max_bytes: usize,
}

/// Deletes the cached compiled code of each of `hashes` that no stored
/// version of any tenant has any more (after a version or a tenant was
/// deleted). Best effort: a failure is logged, and the code is only a cache.
/// Blocking.
pub fn forget_unused_code(db: &SyncDb, runtime: &Runtime, hashes: &[String]) {
    let unused = (|| {
        let mut tx = db.begin_read_mostly()?;
        let mut unused = Vec::new();
        for hash in hashes {
            if !modules::hash_in_use(&mut tx, hash)? {
                unused.push(hash);
            }
        }
        tx.commit()?;
        Ok::<_, StoreError>(unused)
    })();
    match unused {
        Ok(unused) => {
            for hash in unused {
                let deleted = runtime.forget_compiled(hash);
                debug!(sha256 = %hash, files = deleted, "compiled code no stored version uses was deleted");
            }
        }
        Err(e) => warn!(error = %e, "could not tell whether compiled code is still used; it stays in the cache"),
    }
}

/// Deletes every file of the compiled-code cache that no stored version of
/// any tenant can use (see [`Runtime::sweep_compiled`]): what a crash kept
/// [`forget_unused_code`] from deleting, and code of other engine
/// fingerprints. Run once at start, off the serving path. Best effort, as
/// above. Blocking.
pub fn sweep_unused_code(db: &SyncDb, runtime: &Runtime) {
    let in_use = (|| {
        let mut tx = db.begin_read_mostly()?;
        let in_use = modules::hashes_in_use(&mut tx)?;
        tx.commit()?;
        Ok::<_, StoreError>(in_use)
    })();
    match in_use {
        Ok(in_use) => {
            let deleted = runtime.sweep_compiled(&in_use);
            if deleted > 0 {
                info!(files = deleted, "deleted compiled code that no stored version uses");
            }
        }
        Err(e) => warn!(error = %e, "could not read which compiled code is still used; the cache is left as it is"),
    }
}

impl Deployment {
    /// Brings the stored state back: the indexes of every stored version, and
    /// the active version, loaded (from the compiled-code cache when it can).
    pub fn open(
        tenant: &str,
        tenant_created_at: i64,
        runtime: Arc<Runtime>,
        db: Arc<SyncDb>,
        max_bytes: usize,
    ) -> Result<Deployment, DeployError> {
        let deployment = Deployment {
            tenant: tenant.to_string(),
            tenant_created_at,
            runtime,
            db,
            live: RwLock::new(None),
            maintained: RwLock::new(Arc::default()),
            changes: Mutex::new(()),
            recent: Mutex::new(Vec::new()),
            max_bytes,
        };
        let mut maintained = write(&deployment.maintained);
        let mut tx = deployment.db.begin()?;
        let pairs = modules::declared_indexes(&mut tx, tenant)?;
        deployment.set_indexes(&mut tx, pairs, &mut maintained)?;
        drop(maintained);
        let active = modules::active(&mut tx, tenant)?;
        tx.commit()?;
        if let Some(version) = active {
            let live = deployment.load_version(version)?;
            info!(version, sha256 = %live.module.hash, "active handler version loaded");
            *write(&deployment.live) = Some(live);
        }
        Ok(deployment)
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The `created_at` of the tenant this deployment was opened for.
    pub fn tenant_created_at(&self) -> i64 {
        self.tenant_created_at
    }

    /// Takes this tenant's turn at version changes inside `tx`; refuses if the
    /// tenant was deleted since this deployment was opened (even if its slug
    /// names a new tenant by now).
    fn lock_tenant(&self, tx: &mut SyncTx) -> Result<(), DeployError> {
        if modules::lock_tenant(tx, &self.tenant, self.tenant_created_at)? {
            Ok(())
        } else {
            Err(DeployError::TenantGone(self.tenant.clone()))
        }
    }

    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    /// The version a call starting now runs on.
    pub fn current(&self) -> Option<Live> {
        read(&self.live).clone()
    }

    /// Every version this deployment keeps loaded: the live one and the last
    /// few that were.
    pub fn loaded_modules(&self) -> Vec<Arc<Module>> {
        let mut modules: Vec<Arc<Module>> = lock(&self.recent).iter().map(|l| l.module.clone()).collect();
        if let Some(live) = self.current().filter(|l| !modules.iter().any(|m| Arc::ptr_eq(m, &l.module))) {
            modules.push(live.module);
        }
        modules
    }

    /// Held by a call that may write, for as long as its transaction is open:
    /// the indexes its writes maintain.
    pub fn writing(&self) -> RwLockReadGuard<'_, Arc<Indexes>> {
        read(&self.maintained)
    }

    pub fn status(&self) -> Status {
        Status {
            active_version: self.current().map(|l| l.version),
            wit_version: WIT_VERSION,
            cache: self.runtime.cache_stats(),
            instance_slots: self.runtime.instance_slots(),
            instance_pool_parts: pool_parts(),
        }
    }

    /// Validates and stores a component as a new version with its own `limits`
    /// (or finds the stored version with the same bytes and limits), and
    /// activates it if asked.
    pub fn upload(&self, bytes: &[u8], limits: ModuleLimits, activate: bool) -> Result<Uploaded, DeployError> {
        if bytes.len() > self.max_bytes {
            return Err(DeployError::TooLarge { size: bytes.len(), limit: self.max_bytes });
        }
        limits.check(self.runtime.limits().max_memory_limit)?;
        let _change = lock(&self.changes);
        let module = self.runtime.load(bytes)?;
        let now = clock::now_ms();
        // Lock order: the indexes' lock before the database's write gate.
        let adds_indexes = !self.writing().covers(&module.indexes);
        let mut maintained = adds_indexes.then(|| write(&self.maintained));
        let mut tx = self.db.begin()?;
        self.lock_tenant(&mut tx)?;
        let (version, created) = match modules::find_by_hash(&mut tx, &self.tenant, &module.hash, &limits)? {
            Some(existing) => (existing.version, false),
            None => {
                let declared: Vec<(String, String)> =
                    module.indexes.pairs().map(|(t, f)| (t.to_string(), f.to_string())).collect();
                let new = NewModule {
                    tenant: &self.tenant,
                    hash: &module.hash,
                    exports: &module.exports,
                    wit_version: WIT_VERSION,
                    indexes: &declared,
                    bytes,
                    now,
                    limits,
                };
                (modules::insert(&mut tx, &new)?, true)
            }
        };
        if let Some(maintained) = maintained.as_mut() {
            let pairs = modules::declared_indexes(&mut tx, &self.tenant)?;
            self.set_indexes(&mut tx, pairs, maintained)?;
        }
        if activate && modules::active(&mut tx, &self.tenant)? != Some(version) {
            modules::push_activation(&mut tx, &self.tenant, version, now)?;
        }
        let info = modules::get(&mut tx, &self.tenant, version)?.ok_or(DeployError::NotFound(version))?;
        tx.commit()?;
        drop(maintained);
        if activate {
            self.go_live(Live { version, module, limits });
        }
        info!(version, created, activate, sha256 = %info.hash, "handler version uploaded");
        Ok(Uploaded { info, created })
    }

    /// Makes a stored version the live one.
    pub fn activate(&self, version: i64) -> Result<ModuleInfo, DeployError> {
        let _change = lock(&self.changes);
        let live = self.load_version(version)?;
        let mut tx = self.db.begin()?;
        self.lock_tenant(&mut tx)?;
        let mut info = modules::get(&mut tx, &self.tenant, version)?.ok_or(DeployError::NotFound(version))?;
        if !info.active {
            modules::push_activation(&mut tx, &self.tenant, version, clock::now_ms())?;
            info.active = true;
        }
        tx.commit()?;
        self.go_live(live);
        Ok(info)
    }

    /// Activates the version that was active before the current one.
    pub fn rollback(&self) -> Result<ModuleInfo, DeployError> {
        let _change = lock(&self.changes);
        // Find the target without changing anything, load it, then commit the roll back.
        let planned = {
            let mut tx = self.db.begin_read_mostly()?;
            modules::plan_rollback(&mut tx, &self.tenant)?
        };
        let (target, _) = planned.ok_or(DeployError::NothingToRollBack)?;
        let live = self.load_version(target)?;
        let mut tx = self.db.begin()?;
        self.lock_tenant(&mut tx)?;
        let Some((again, seqs)) = modules::plan_rollback(&mut tx, &self.tenant)? else {
            return Err(DeployError::NothingToRollBack);
        };
        if again != target {
            return Err(DeployError::Store(StoreError::Corrupt(
                "the versions changed during the roll back; try again".into(),
            )));
        }
        modules::pop_activations(&mut tx, &seqs, clock::now_ms())?;
        let info = modules::get(&mut tx, &self.tenant, target)?.ok_or(DeployError::NotFound(target))?;
        tx.commit()?;
        self.go_live(live);
        Ok(info)
    }

    /// Deletes an inactive version, and the indexes only it declared.
    pub fn delete(&self, version: i64) -> Result<(), DeployError> {
        let _change = lock(&self.changes);
        let mut maintained = write(&self.maintained);
        let mut tx = self.db.begin()?;
        self.lock_tenant(&mut tx)?;
        if modules::active(&mut tx, &self.tenant)? == Some(version) {
            return Err(DeployError::Active(version));
        }
        let hash = modules::get(&mut tx, &self.tenant, version)?.ok_or(DeployError::NotFound(version))?.hash;
        if !modules::delete(&mut tx, &self.tenant, version, clock::now_ms())? {
            return Err(DeployError::NotFound(version));
        }
        let pairs = modules::declared_indexes(&mut tx, &self.tenant)?;
        self.set_indexes(&mut tx, pairs, &mut maintained)?;
        tx.commit()?;
        info!(version, "handler version deleted");
        drop(maintained);
        forget_unused_code(&self.db, &self.runtime, &[hash]);
        Ok(())
    }

    pub fn list(&self) -> Result<Vec<ModuleInfo>, DeployError> {
        let mut tx = self.db.begin_read_mostly()?;
        Ok(modules::list(&mut tx, &self.tenant)?)
    }

    /// Adopts the active version and the indexes another host process
    /// committed. Called periodically; cheap when nothing changed.
    pub fn refresh(&self) -> Result<(), DeployError> {
        let _change = lock(&self.changes);
        let (active, pairs) = {
            let mut tx = self.db.begin_read_mostly()?;
            (modules::active(&mut tx, &self.tenant)?, modules::declared_indexes(&mut tx, &self.tenant)?)
        };
        let indexes = stored_indexes(pairs)?;
        if !self.writing().same_as(&indexes) {
            *write(&self.maintained) = Arc::new(indexes);
        }
        let current = self.current().map(|l| l.version);
        match active {
            Some(version) if current != Some(version) => {
                let live = self.load_version(version)?;
                info!(version, "adopting the handler version activated by another host process");
                self.go_live(live);
            }
            None if current.is_some() => {
                warn!("no handler version is active in the database any more; stopping the handler");
                *write(&self.live) = None;
            }
            _ => {}
        }
        Ok(())
    }

    fn go_live(&self, live: Live) {
        let version = live.version;
        {
            let mut recent = lock(&self.recent);
            recent.retain(|l| l.version != version);
            recent.push(live.clone());
            if recent.len() > KEEP_LOADED {
                recent.remove(0);
            }
        }
        let previous = write(&self.live).replace(live);
        info!(version, previous = previous.map(|p| p.version), "handler version live");
    }

    fn load_version(&self, version: i64) -> Result<Live, DeployError> {
        if let Some(live) = lock(&self.recent).iter().find(|l| l.version == version) {
            return Ok(live.clone());
        }
        let (bytes, limits) = {
            let mut tx = self.db.begin_read_mostly()?;
            modules::load(&mut tx, &self.tenant, version)?.ok_or(DeployError::NotFound(version))?
        };
        let module =
            self.runtime.load(&bytes).map_err(|e| DeployError::Unloadable { version, reason: e.to_string() })?;
        Ok(Live { version, module, limits })
    }

    /// Makes the tenant's maintained indexes exactly `pairs`: builds the new
    /// ones from the stored documents and drops the rest, inside `tx`. The
    /// caller holds the write lock (`maintained`), taken before `tx` began, so
    /// no writer works from the old set meanwhile.
    fn set_indexes(
        &self,
        tx: &mut SyncTx,
        pairs: Vec<(String, String)>,
        maintained: &mut RwLockWriteGuard<'_, Arc<Indexes>>,
    ) -> Result<(), DeployError> {
        let indexes = stored_indexes(pairs)?;
        Documents { tx, tenant: &self.tenant, indexes: &indexes, limits: self.runtime.limits().documents }
            .sync_indexes()
            .map_err(DeployError::Indexes)?;
        // Published before the caller commits: if the commit fails, writes keep
        // a superset (harmless) or the next `refresh` corrects the set.
        **maintained = Arc::new(indexes);
        Ok(())
    }
}

/// The index declarations read back from the `modules` table.
fn stored_indexes(pairs: Vec<(String, String)>) -> Result<Indexes, StoreError> {
    Indexes::new(pairs).map_err(|e| StoreError::Corrupt(format!("stored index declarations: {e}")))
}

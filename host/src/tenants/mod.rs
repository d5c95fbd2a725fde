//! The tenants this host serves, each with its own secrets, limits, verdicts,
//! handler versions and data.
//!
//! Owns: the registry (slug → the tenant's settings as of now, and its
//! [`Deployment`], opened on first use), validation of a tenant's settings,
//! and creating, changing, reloading and deleting tenants. Must not: speak
//! HTTP (see [`crate::http`]) or hold SQL (see [`crate::store::tenants`]).
//!
//! `default` is always there: the host's own settings (file and environment)
//! configure it, and the unprefixed routes serve it, so a single-tenant setup
//! needs none of this. Every other tenant is a row in `tenants`, created
//! through the admin API. A tenant's settings are an immutable snapshot: a
//! change swaps in a new one, so a request sees one consistent set.
//!
//! A tenant's limits (every option but its verdicts) are the operator's: a
//! change through the tenant's own token keeps them ([`ChangedBy`]).
//!
//! Host processes sharing a database pick up each other's tenant changes on
//! their next poll (`modules.poll_interval_ms`).
//!
//! Loaded deployments are a bounded cache ([`loaded`]): at most
//! `modules.max_loaded_tenants` stay open, holding at most
//! `modules.max_loaded_code_mib` of compiled code. Opening one past either
//! bound closes idle ones, those used least often of late first, so a
//! deployment is never open twice for one tenant (the index maintenance in
//! [`crate::deploy`] relies on that). A closed one opens again on its
//! tenant's next use, from the compiled-code cache.

mod loaded;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{info, warn};

use crate::clock;
use crate::deploy::{DeployError, Deployment, forget_unused_code};
use crate::locks::{lock, read, write};
use crate::runtime::limits::{self, ACTION_DEADLINE_MS, EVENT_DEADLINE_MS, ModuleLimits, QUERY_DEADLINE_MS};
use crate::runtime::{InvocationLimits, Runtime};
use crate::settings::{ActionSettings, ConfiguredVerdict, DEFAULT_FALLBACK_MESSAGE, Settings};
use crate::store::exec::SyncDb;
use crate::store::tenants::TenantRow;
use crate::store::{Store, StoreError};
use crate::workos::signature::Secret;

pub use loaded::LoadedStats;
use loaded::Open;

/// The tenant the unprefixed routes serve, configured by the host's settings.
pub const DEFAULT_TENANT: &str = crate::store::inbox::DEFAULT_TENANT;

/// Longest slug, so a slug fits in a DNS label and a log line.
const MAX_SLUG_LEN: usize = 63;

/// What a tenant sets differently from the host's defaults. Absent: the
/// host's value.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantOptions {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_deadline_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_deadline_ms: Option<u64>,
    /// Largest linear memory of the tenant's guests; at most the host's `handler.max_memory_limit_mib`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_bytes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_calls: Option<u32>,
    /// The tenant's document quota, all its tables together (see `handler.max_documents`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_documents: Option<u64>,
    /// Actions handler calls running at once (see `actions.max_concurrent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_actions: Option<usize>,
    /// Queries running at once (see `queries.max_concurrent`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent_queries: Option<usize>,
    /// Host processes that may give this tenant a turn at the same time (see
    /// `worker.max_processes_per_tenant`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_worker_processes: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<VerdictOption>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub no_handler: Option<VerdictOption>,
}

/// A verdict as the API spells it: `{"verdict": "deny", "message": "..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerdictOption {
    pub verdict: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl VerdictOption {
    fn of(v: &ConfiguredVerdict) -> VerdictOption {
        match v {
            ConfiguredVerdict::Allow => VerdictOption { verdict: "allow".into(), message: None },
            ConfiguredVerdict::Deny(m) => VerdictOption { verdict: "deny".into(), message: Some(m.clone()) },
        }
    }

    fn configured(&self, key: &str) -> Result<ConfiguredVerdict, TenantError> {
        match (self.verdict.as_str(), &self.message) {
            ("allow", None) => Ok(ConfiguredVerdict::Allow),
            ("allow", Some(_)) => Err(TenantError::invalid(key, "an allow verdict has no message")),
            ("deny", m) => Ok(ConfiguredVerdict::Deny(m.clone().unwrap_or_else(|| DEFAULT_FALLBACK_MESSAGE.into()))),
            (other, _) => Err(TenantError::invalid(key, format!("{other:?} is neither \"allow\" nor \"deny\""))),
        }
    }
}

/// Why a tenant change was refused. Nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("there is no tenant {0:?}")]
    NotFound(String),
    #[error("a tenant {0:?} already exists")]
    Exists(String),
    #[error(
        "the default tenant is configured by the host's settings (config file and environment), not through the API"
    )]
    DefaultIsFixed,
    #[error("invalid `{key}`: {reason}")]
    Invalid { key: String, reason: String },
    /// A tenant token tried to raise a limit of its own tenant.
    #[error("`{key}` is a limit the host's operator sets with the root token: {reason}")]
    LimitSetByOperator { key: String, reason: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl TenantError {
    fn invalid(key: &str, reason: impl Into<String>) -> TenantError {
        TenantError::Invalid { key: key.to_string(), reason: reason.into() }
    }
}

/// One tenant's settings as of now.
#[derive(Debug)]
pub struct Tenant {
    pub slug: String,
    pub webhook_secret: Option<Secret>,
    pub action_secret: Option<Secret>,
    pub client_id: Option<String>,
    /// What it sets (the rest comes from the host's settings).
    pub options: TenantOptions,
    /// The limits its handlers run under.
    pub limits: InvocationLimits,
    /// How its Actions are decided.
    pub actions: ActionSettings,
    /// How many of its queries may run at once.
    pub max_concurrent_queries: usize,
    /// How many host processes may give it a turn at the same time (Postgres;
    /// on SQLite one process applies events); `None`: no cap.
    pub worker_processes: Option<usize>,
    pub created_at: i64,
    pub updated_at: i64,
}

impl Tenant {
    /// Whether a tenant token may upload a version with `limits`: each limit
    /// it sets at most the tenant's own (a version may ask for less, not more).
    pub fn allows_version_limits(&self, limits: &ModuleLimits) -> Result<(), TenantError> {
        let ms = |d: Duration| d.as_millis() as u64;
        let checks = [
            ("memory_limit_mib", limits.memory_limit_bytes.map(|b| b as u64), self.limits.memory_limit as u64, 1 << 20),
            ("event_deadline_ms", limits.event_deadline_ms, ms(self.limits.event_deadline), 1),
            ("action_deadline_ms", limits.action_deadline_ms, ms(self.actions.deadline), 1),
            ("query_deadline_ms", limits.query_deadline_ms, ms(self.limits.query_deadline), 1),
        ];
        for (key, asked, own, unit) in checks {
            if asked.is_some_and(|v| v > own) {
                return Err(TenantError::LimitSetByOperator {
                    key: key.into(),
                    reason: format!(
                        "a tenant token may upload a version with at most the tenant's own {}",
                        own.div_ceil(unit)
                    ),
                });
            }
        }
        Ok(())
    }

    pub fn is_default(&self) -> bool {
        self.slug == DEFAULT_TENANT
    }

    /// The route prefix: none for `default`, `/t/{slug}` for the others.
    pub fn prefix(&self) -> String {
        if self.is_default() { String::new() } else { format!("/t/{}", self.slug) }
    }

    /// What the admin API shows: never a secret, only whether it is set.
    pub fn describe(&self) -> Value {
        let prefix = self.prefix();
        json!({
            "slug": self.slug,
            "client_id": self.client_id,
            "webhook_secret_set": self.webhook_secret.is_some(),
            "action_secret_set": self.action_secret.is_some(),
            "options": self.options,
            "effective": {
                "event_deadline_ms": self.limits.event_deadline.as_millis() as u64,
                "action_deadline_ms": self.actions.deadline.as_millis() as u64,
                "query_deadline_ms": self.limits.query_deadline.as_millis() as u64,
                "memory_limit_bytes": self.limits.memory_limit,
                "max_calls": self.limits.max_calls,
                "max_documents": self.limits.documents.max_documents,
                "max_concurrent_actions": self.actions.max_concurrent,
                "max_concurrent_queries": self.max_concurrent_queries,
                "max_worker_processes": self.worker_processes,
                "fallback": VerdictOption::of(&self.actions.fallback),
                "no_handler": VerdictOption::of(&self.actions.no_handler),
            },
            "routes": {
                "webhook": format!("{prefix}/workos/webhook"),
                "action": format!("{prefix}/workos/action"),
                "me": format!("{prefix}/me"),
                "query": format!("{prefix}/query/{{name}}"),
            },
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        })
    }
}

/// A new tenant as the API receives it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub slug: String,
    #[serde(default)]
    pub webhook_secret: Option<String>,
    #[serde(default)]
    pub action_secret: Option<String>,
    #[serde(default)]
    pub client_id: Option<String>,
    #[serde(default)]
    pub options: TenantOptions,
}

/// A change: each field given replaces the stored one (`options` as a whole);
/// `null` for a secret or the client id clears it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantChange {
    #[serde(default, deserialize_with = "present")]
    pub webhook_secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub action_secret: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    pub client_id: Option<Option<String>>,
    #[serde(default)]
    pub options: Option<TenantOptions>,
}

/// Tells a field given as `null` (`Some(None)`) from one not given (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

/// The registry. Cheap to read on every request.
pub struct Tenants {
    store: Store,
    db: Arc<SyncDb>,
    runtime: Arc<Runtime>,
    /// The host's settings: `default` itself, and every other tenant's defaults.
    settings: Arc<Settings>,
    /// Slug → settings. Replaced as a whole entry on every change.
    by_slug: RwLock<HashMap<String, Arc<Tenant>>>,
    /// Slug → handler versions, opened on the tenant's first use; a bounded
    /// cache (see [`loaded`]).
    deployments: RwLock<Open<Arc<Deployment>>>,
    /// One opening at a time, so two first requests do not both load.
    opening: Mutex<()>,
    /// Slug → (its cap, the permits of its running Actions handler calls).
    actions_running: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// The same for its queries.
    queries_running: Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    /// One change of the stored tenants at a time, a reload included: a
    /// reload that read the rows before a deletion here must not put the
    /// deleted tenant back when it swaps its snapshot in.
    changing: tokio::sync::Mutex<()>,
}

impl Tenants {
    /// Loads every stored tenant. A stored tenant whose settings no longer
    /// validate (the host's limits were lowered since) is served with the
    /// host's defaults where it differs, with a warning.
    pub async fn load(
        store: Store,
        db: Arc<SyncDb>,
        runtime: Arc<Runtime>,
        settings: Arc<Settings>,
    ) -> Result<Tenants, StoreError> {
        let tenants = Tenants {
            deployments: RwLock::new(Open::new(settings.modules.max_loaded_tenants, settings.modules.max_loaded_code)),
            store,
            db,
            runtime,
            settings,
            by_slug: RwLock::default(),
            opening: Mutex::default(),
            actions_running: Mutex::default(),
            queries_running: Mutex::default(),
            changing: tokio::sync::Mutex::default(),
        };
        tenants.reload().await?;
        Ok(tenants)
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The synchronous transactions handlers run in.
    pub fn db(&self) -> &Arc<SyncDb> {
        &self.db
    }

    /// The WebAssembly runtime every tenant's versions run in.
    pub fn runtime(&self) -> &Arc<Runtime> {
        &self.runtime
    }

    pub fn get(&self, slug: &str) -> Option<Arc<Tenant>> {
        read(&self.by_slug).get(slug).cloned()
    }

    pub fn default_tenant(&self) -> Arc<Tenant> {
        self.get(DEFAULT_TENANT).expect("the default tenant is always registered")
    }

    /// Every tenant, `default` first, then by slug.
    pub fn all(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<Arc<Tenant>> = read(&self.by_slug).values().cloned().collect();
        all.sort_by(|a, b| (!a.is_default(), &a.slug).cmp(&(!b.is_default(), &b.slug)));
        all
    }

    /// The tenant's deployment if it is open already (no blocking).
    pub fn open_deployment(&self, slug: &str) -> Option<Arc<Deployment>> {
        read(&self.deployments).get(slug)
    }

    /// Whether the tenant's handler versions are loaded now.
    pub fn is_loaded(&self, slug: &str) -> bool {
        read(&self.deployments).contains(slug)
    }

    /// Every deployment open now (without counting this as a use).
    pub fn open_deployments(&self) -> Vec<Arc<Deployment>> {
        read(&self.deployments).values()
    }

    /// How many deployments are open and the code they hold, the most of
    /// each that stays, and how many were closed to make room since the start.
    pub fn loaded(&self) -> LoadedStats {
        read(&self.deployments).stats()
    }

    /// The tenant's handler versions, opened (its active version loaded) on
    /// first use. Blocking: call it from a blocking thread.
    pub fn deployment(&self, slug: &str) -> Result<Arc<Deployment>, DeployError> {
        let Some(tenant) = self.get(slug) else { return Err(DeployError::TenantGone(slug.to_string())) };
        // One opened for an earlier tenant of the slug (while it was being
        // deleted) must not serve this one: it is opened again.
        let this_tenants = |d: &Arc<Deployment>| d.tenant_created_at() == tenant.created_at;
        if let Some(open) = self.open_deployment(slug).filter(this_tenants) {
            return Ok(open);
        }
        let _one = lock(&self.opening);
        if let Some(open) = self.open_deployment(slug).filter(this_tenants) {
            return Ok(open);
        }
        let deployment = Arc::new(Deployment::open(
            slug,
            tenant.created_at,
            self.runtime.clone(),
            self.db.clone(),
            self.settings.modules.max_bytes,
        )?);
        write(&self.deployments).insert(slug.to_string(), deployment.clone());
        self.close_past_bounds();
        Ok(deployment)
    }

    /// Closes idle deployments, those used least often of late first, while the
    /// open ones are past `modules.max_loaded_tenants` or `modules.max_loaded_code_mib`.
    /// Runs after each opening, and after each check for versions activated
    /// elsewhere (a version loaded into an open deployment adds code too).
    pub fn close_past_bounds(&self) {
        // Checked first under the read lock, which requests still share.
        if read(&self.deployments).within_bounds() {
            return;
        }
        let closed = write(&self.deployments).close_past_bounds();
        if !closed.is_empty() {
            tracing::debug!(tenants = closed.len(), "closed idle deployments to make room");
        }
        // Their modules are freed here, outside the lock.
        drop(closed);
    }

    /// The tenant's deployment for a request that must be answered within
    /// `deadline`: its first use opens it (a load from the compiled-code cache)
    /// on a blocking thread, and gives up at the deadline.
    pub async fn deployment_within(
        self: &Arc<Self>,
        tenant: &Tenant,
        deadline: Duration,
    ) -> Result<Arc<Deployment>, String> {
        if let Some(open) = self.open_deployment(&tenant.slug) {
            return Ok(open);
        }
        let (tenants, slug) = (self.clone(), tenant.slug.clone());
        let opening = tokio::task::spawn_blocking(move || tenants.deployment(&slug));
        match tokio::time::timeout(deadline, opening).await {
            Ok(Ok(Ok(deployment))) => Ok(deployment),
            Ok(Ok(Err(e))) => Err(format!("the tenant's handler versions could not be loaded: {e}")),
            Ok(Err(e)) => Err(format!("loading the tenant's handler versions failed: {e}")),
            Err(_) => {
                Err(format!("loading the tenant's handler versions took longer than {} ms", deadline.as_millis()))
            }
        }
    }

    /// A permit to run one of `tenant`'s Actions handler calls, held until the
    /// call ends; `None` when it already has its cap running.
    pub fn action_permit(&self, tenant: &Tenant) -> Option<OwnedSemaphorePermit> {
        permit(&self.actions_running, &tenant.slug, tenant.actions.max_concurrent)
    }

    /// A permit to run one of `tenant`'s queries, held until the query ends;
    /// `None` when it already has its cap running.
    pub fn query_permit(&self, tenant: &Tenant) -> Option<OwnedSemaphorePermit> {
        permit(&self.queries_running, &tenant.slug, tenant.max_concurrent_queries)
    }

    /// Reads the stored tenants again (another process may have changed them).
    pub async fn reload(&self) -> Result<(), StoreError> {
        let _changing = self.changing.lock().await;
        let rows = self.store.list_tenants().await?;
        let mut next = HashMap::with_capacity(rows.len() + 1);
        next.insert(DEFAULT_TENANT.to_string(), Arc::new(self.default_from_settings()));
        for row in rows {
            if row.slug == DEFAULT_TENANT {
                warn!(
                    "a stored tenant is named `default`; the host's settings configure that one, so the row is ignored"
                );
                continue;
            }
            let current = self.get(&row.slug).filter(|t| t.updated_at == row.updated_at);
            let tenant = match current {
                Some(unchanged) => unchanged,
                None => Arc::new(self.tenant_of_row(row)),
            };
            next.insert(tenant.slug.clone(), tenant);
        }
        // Deleted, or deleted and created again (another tenant of the same slug).
        let gone: Vec<String> = read(&self.by_slug)
            .iter()
            .filter(|(slug, was)| next.get(*slug).is_none_or(|now| now.created_at != was.created_at))
            .map(|(slug, _)| slug.clone())
            .collect();
        *write(&self.by_slug) = next;
        if !gone.is_empty() {
            let mut deployments = write(&self.deployments);
            let (mut actions, mut queries) = (lock(&self.actions_running), lock(&self.queries_running));
            for slug in &gone {
                deployments.remove(slug);
                actions.remove(slug);
                queries.remove(slug);
            }
            info!(tenants = ?gone, "tenants deleted by another host process are no longer served as they were");
        }
        Ok(())
    }

    pub async fn create(&self, new: NewTenant) -> Result<Arc<Tenant>, TenantError> {
        validate_slug(&new.slug)?;
        if new.slug == DEFAULT_TENANT {
            return Err(TenantError::Exists(new.slug));
        }
        let _changing = self.changing.lock().await;
        let now = clock::now_ms();
        let mut row = TenantRow {
            slug: new.slug.clone(),
            webhook_secret: non_empty("webhook_secret", new.webhook_secret)?,
            action_secret: non_empty("action_secret", new.action_secret)?,
            client_id: non_empty("client_id", new.client_id)?,
            options: self.options_json(&new.options)?,
            created_at: now,
            updated_at: now,
        };
        if !self.store.insert_tenant(&mut row).await? {
            return Err(TenantError::Exists(new.slug));
        }
        let tenant = Arc::new(self.tenant_of_row(row));
        write(&self.by_slug).insert(tenant.slug.clone(), tenant.clone());
        info!(tenant = %tenant.slug, "tenant created");
        Ok(tenant)
    }

    /// Applies `change`. Through a tenant token (`by` the tenant) the
    /// tenant's limits stay as the operator set them: an option that is a
    /// limit keeps its stored value when the change leaves it out, and a
    /// change that sets it to another value is refused. With `created_at`
    /// (the tenant a request through the tenant's own routes was made to), a
    /// tenant created since under the same slug is not found.
    pub async fn update(
        &self,
        slug: &str,
        created_at: Option<i64>,
        mut change: TenantChange,
        by: ChangedBy,
    ) -> Result<Arc<Tenant>, TenantError> {
        if slug == DEFAULT_TENANT {
            return Err(TenantError::DefaultIsFixed);
        }
        let _changing = self.changing.lock().await;
        let mut row = (self.store.get_tenant(slug).await?)
            .filter(|row| created_at.is_none_or(|c| c == row.created_at))
            .ok_or_else(|| TenantError::NotFound(slug.to_string()))?;
        if let (ChangedBy::Tenant, Some(options)) = (by, change.options.as_mut()) {
            // Unreadable stored options count as none (see `tenant_of_row`).
            let stored = serde_json::from_str::<TenantOptions>(&row.options).unwrap_or_default();
            keep_limits(&stored, options)?;
        }
        if let Some(v) = change.webhook_secret {
            row.webhook_secret = non_empty("webhook_secret", v)?;
        }
        if let Some(v) = change.action_secret {
            row.action_secret = non_empty("action_secret", v)?;
        }
        if let Some(v) = change.client_id {
            row.client_id = non_empty("client_id", v)?;
        }
        if let Some(options) = &change.options {
            row.options = self.options_json(options)?;
        }
        // Strictly later, so a process that reloads sees that it changed.
        row.updated_at = clock::now_ms().max(row.updated_at + 1);
        if !self.store.update_tenant(&row).await? {
            return Err(TenantError::NotFound(slug.to_string()));
        }
        let tenant = Arc::new(self.tenant_of_row(row));
        write(&self.by_slug).insert(tenant.slug.clone(), tenant.clone());
        info!(tenant = %slug, "tenant settings changed");
        Ok(tenant)
    }

    /// Stops serving the tenant, then deletes everything it has.
    pub async fn delete(&self, slug: &str) -> Result<(), TenantError> {
        if slug == DEFAULT_TENANT {
            return Err(TenantError::DefaultIsFixed);
        }
        let _changing = self.changing.lock().await;
        let removed = write(&self.by_slug).remove(slug);
        write(&self.deployments).remove(slug);
        lock(&self.actions_running).remove(slug);
        lock(&self.queries_running).remove(slug);
        match self.store.delete_tenant(slug).await {
            Ok(Some(hashes)) => {
                let (db, runtime) = (self.db.clone(), self.runtime.clone());
                // Its compiled code too, unless another tenant has the same bytes.
                let forgotten = tokio::task::spawn_blocking(move || forget_unused_code(&db, &runtime, &hashes));
                if forgotten.await.is_err() {
                    warn!(tenant = %slug, "deleting the deleted tenant's compiled code panicked");
                }
                info!(tenant = %slug, "tenant deleted with all its data");
                Ok(())
            }
            Ok(None) => Err(TenantError::NotFound(slug.to_string())),
            Err(e) => {
                // Nothing was deleted: serve it again.
                if let Some(tenant) = removed {
                    write(&self.by_slug).insert(slug.to_string(), tenant);
                }
                Err(e.into())
            }
        }
    }

    fn default_from_settings(&self) -> Tenant {
        let s = &self.settings;
        let Effective { limits, actions, max_concurrent_queries, worker_processes } = self.host_defaults();
        Tenant {
            slug: DEFAULT_TENANT.to_string(),
            webhook_secret: s.workos.webhook_secret.clone(),
            action_secret: s.workos.action_secret.clone(),
            client_id: s.workos.client_id.clone(),
            options: TenantOptions::default(),
            limits,
            actions,
            max_concurrent_queries,
            worker_processes,
            created_at: 0,
            updated_at: 0,
        }
    }

    fn tenant_of_row(&self, row: TenantRow) -> Tenant {
        let options = match serde_json::from_str::<TenantOptions>(&row.options) {
            Ok(options) => options,
            Err(e) => {
                warn!(tenant = %row.slug, error = %e, "stored tenant options are unreadable; using the host's defaults");
                TenantOptions::default()
            }
        };
        let effective = self.effective(&options).unwrap_or_else(|e| {
            warn!(tenant = %row.slug, error = %e, "stored tenant options no longer fit this host; using the host's defaults");
            self.host_defaults()
        });
        let Effective { limits, actions, max_concurrent_queries, worker_processes } = effective;
        Tenant {
            slug: row.slug,
            webhook_secret: row.webhook_secret.and_then(Secret::new),
            action_secret: row.action_secret.and_then(Secret::new),
            client_id: row.client_id,
            options,
            limits,
            actions,
            max_concurrent_queries,
            worker_processes,
            created_at: row.created_at,
            updated_at: row.updated_at,
        }
    }

    /// Validates `options` and returns them as stored.
    fn options_json(&self, options: &TenantOptions) -> Result<String, TenantError> {
        self.effective(options)?;
        Ok(serde_json::to_string(options).expect("options serialize"))
    }

    /// The host's defaults with `options` applied, if they are valid here.
    /// What a tenant that sets no option gets: the host's settings.
    fn host_defaults(&self) -> Effective {
        Effective {
            limits: self.runtime.limits().clone(),
            actions: self.settings.actions.clone(),
            max_concurrent_queries: self.settings.queries.max_concurrent,
            worker_processes: self.settings.worker.max_processes_per_tenant,
        }
    }

    fn effective(&self, o: &TenantOptions) -> Result<Effective, TenantError> {
        let Effective { mut limits, mut actions, mut max_concurrent_queries, mut worker_processes } =
            self.host_defaults();
        if let Some(ms) = o.event_deadline_ms {
            limits.event_deadline = within("options.event_deadline_ms", ms, EVENT_DEADLINE_MS)?;
        }
        if let Some(ms) = o.action_deadline_ms {
            actions.deadline = within("options.action_deadline_ms", ms, ACTION_DEADLINE_MS)?;
            limits.action_deadline = actions.deadline;
        }
        if let Some(ms) = o.query_deadline_ms {
            limits.query_deadline = within("options.query_deadline_ms", ms, QUERY_DEADLINE_MS)?;
        }
        if let Some(bytes) = o.memory_limit_bytes {
            let cap = self.runtime.limits().max_memory_limit;
            if !(1024 * 1024..=cap).contains(&bytes) {
                return Err(TenantError::invalid(
                    "options.memory_limit_bytes",
                    format!(
                        "must be between 1 MiB and the host's ceiling of {cap} bytes (handler.max_memory_limit_mib)"
                    ),
                ));
            }
            limits.memory_limit = bytes;
        }
        if let Some(n) = o.max_calls {
            if n == 0 {
                return Err(TenantError::invalid("options.max_calls", "must be at least 1"));
            }
            limits.max_calls = n;
        }
        if let Some(n) = o.max_documents {
            if n == 0 {
                return Err(TenantError::invalid("options.max_documents", "must be at least 1"));
            }
            limits.documents.max_documents = Some(n);
        }
        if let Some(n) = o.max_concurrent_actions {
            if !(1..=1024).contains(&n) {
                return Err(TenantError::invalid("options.max_concurrent_actions", "must be between 1 and 1024"));
            }
            actions.max_concurrent = n;
        }
        if let Some(n) = o.max_concurrent_queries {
            if !(1..=1024).contains(&n) {
                return Err(TenantError::invalid("options.max_concurrent_queries", "must be between 1 and 1024"));
            }
            max_concurrent_queries = n;
        }
        if let Some(n) = o.max_worker_processes {
            if !(1..=1024).contains(&n) {
                return Err(TenantError::invalid("options.max_worker_processes", "must be between 1 and 1024"));
            }
            worker_processes = Some(n);
        }
        if let Some(v) = &o.fallback {
            actions.fallback = v.configured("options.fallback")?;
        }
        if let Some(v) = &o.no_handler {
            actions.no_handler = v.configured("options.no_handler")?;
        }
        Ok(Effective { limits, actions, max_concurrent_queries, worker_processes })
    }
}

/// Who changes a tenant's settings: the root token, or the tenant's own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangedBy {
    Root,
    Tenant,
}

/// Gives every limit of `change` its `stored` value, or refuses the change if
/// it sets one to another value. Every field is named, so a new option has to
/// be sorted into a limit or a tenant's own choice here.
fn keep_limits(stored: &TenantOptions, change: &mut TenantOptions) -> Result<(), TenantError> {
    fn keep<T: Clone + PartialEq>(
        key: &'static str,
        stored: &Option<T>,
        change: &mut Option<T>,
    ) -> Result<(), TenantError> {
        if change.is_some() && change != stored {
            return Err(TenantError::LimitSetByOperator {
                key: format!("options.{key}"),
                reason: "a tenant token changes the tenant's secrets, client id and verdicts (`fallback`, \
                         `no_handler`) and leaves its limits as they are"
                    .into(),
            });
        }
        change.clone_from(stored);
        Ok(())
    }
    let TenantOptions {
        event_deadline_ms,
        action_deadline_ms,
        query_deadline_ms,
        memory_limit_bytes,
        max_calls,
        max_documents,
        max_concurrent_actions,
        max_concurrent_queries,
        max_worker_processes,
        // The tenant's own choices.
        fallback: _,
        no_handler: _,
    } = change;
    keep("event_deadline_ms", &stored.event_deadline_ms, event_deadline_ms)?;
    keep("action_deadline_ms", &stored.action_deadline_ms, action_deadline_ms)?;
    keep("query_deadline_ms", &stored.query_deadline_ms, query_deadline_ms)?;
    keep("memory_limit_bytes", &stored.memory_limit_bytes, memory_limit_bytes)?;
    keep("max_calls", &stored.max_calls, max_calls)?;
    keep("max_documents", &stored.max_documents, max_documents)?;
    keep("max_concurrent_actions", &stored.max_concurrent_actions, max_concurrent_actions)?;
    keep("max_concurrent_queries", &stored.max_concurrent_queries, max_concurrent_queries)?;
    keep("max_worker_processes", &stored.max_worker_processes, max_worker_processes)
}

/// A tenant's options applied over the host's settings.
struct Effective {
    limits: InvocationLimits,
    actions: ActionSettings,
    max_concurrent_queries: usize,
    worker_processes: Option<usize>,
}

/// A permit from `slug`'s semaphore in `running` (made with `cap` permits);
/// `None` when all are taken. When the cap changed, calls still running under
/// the old one finish on it.
fn permit(
    running: &Mutex<HashMap<String, (usize, Arc<Semaphore>)>>,
    slug: &str,
    cap: usize,
) -> Option<OwnedSemaphorePermit> {
    let semaphore = {
        let mut running = lock(running);
        let entry = running.entry(slug.to_string()).or_insert_with(|| (cap, Arc::new(Semaphore::new(cap))));
        if entry.0 != cap {
            *entry = (cap, Arc::new(Semaphore::new(cap)));
        }
        entry.1.clone()
    };
    semaphore.try_acquire_owned().ok()
}

/// Lowercase letters, digits and `-`, starting with a letter or digit, at most 63 characters.
pub fn validate_slug(slug: &str) -> Result<(), TenantError> {
    let ok = !slug.is_empty()
        && slug.len() <= MAX_SLUG_LEN
        && slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !slug.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(TenantError::invalid(
            "slug",
            format!(
                "{slug:?}: use 1 to {MAX_SLUG_LEN} lowercase letters, digits and '-', starting with a letter or digit"
            ),
        ))
    }
}

fn within(key: &'static str, ms: u64, range: (u64, u64)) -> Result<Duration, TenantError> {
    limits::deadline_within(key, ms, range).map_err(|e| TenantError::invalid(key, e.reason))
}

/// An empty string is refused rather than stored as a secret nobody can sign with.
fn non_empty(key: &str, value: Option<String>) -> Result<Option<String>, TenantError> {
    match value {
        Some(v) if v.trim().is_empty() => Err(TenantError::invalid(key, "is empty: leave it out or give a value")),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slugs_are_plain_lowercase_names() {
        for ok in ["acme", "a", "acme-prod", "t1", &"a".repeat(63)] {
            assert!(validate_slug(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Acme", "-acme", "a/b", "a b", "ünï", "a.b", &"a".repeat(64)] {
            assert!(validate_slug(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_change_tells_null_from_absent() {
        let c: TenantChange = serde_json::from_str(r#"{"client_id": null}"#).unwrap();
        assert_eq!(c.client_id, Some(None));
        assert_eq!(c.webhook_secret, None);
        assert!(serde_json::from_str::<TenantChange>(r#"{"slug": "x"}"#).is_err(), "unknown fields are refused");
    }
}

//! Runs handler components in a sandbox.
//!
//! Owns: the one wasmtime [`Engine`] (pooling allocator, copy-on-write memory
//! images, epoch interruption), the [`Linker`] with WASI (nothing granted) and
//! the WIT imports, compiled modules cached by content hash, and one invocation:
//! a fresh `Store` from the module's `InstancePre`, its deadline and memory cap,
//! its call budget and its captured log; and a few Actions calls' stores made
//! ready ahead (each still serves one call). Must not: decide what an event means,
//! commit or roll back (the caller owns the transaction it lends to a call), or
//! know HTTP or WorkOS signing.
//!
//! Calls are synchronous: run them on a blocking thread. A guest that loops is
//! stopped at its deadline by the epoch ticker; one that grows memory past its
//! cap is refused the memory and traps; deep recursion hits wasm's stack limit;
//! a WASI sleep is cut short at the deadline.

pub mod bindings;
mod cache;
mod host;
pub mod limits;
mod log;
mod sleep;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use wasmtime::component::{Component, HasSelf, InstancePre, Linker, ResourceTable};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, Trap};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpHooks, WasiHttpView};

use self::bindings::exports::authkit::handler::{actions, events, queries, schema};
pub use self::cache::CacheStats;
use self::cache::CodeCache;
pub use self::host::{HostFault, QuotaExceeded, guest_user as stored_guest_user};
pub use self::limits::ModuleLimits;
pub use self::log::{LogBuffer, MAX_LOG_BYTES, MAX_LOG_LINES};
use crate::store::StoreError;
use crate::store::documents::{Indexes, Limits};
use crate::store::exec::SyncTx;

pub use self::bindings::authkit::handler::types::User as GuestUser;
pub use self::bindings::exports::authkit::handler::actions::{
    AuthenticationContext as GuestAuthentication, Client as GuestClient, Membership as GuestMembership,
    Organization as GuestOrganization, RegistrationContext as GuestRegistration, UserData as GuestUserData,
    Verdict as GuestVerdict,
};
pub use self::bindings::exports::authkit::handler::events::Event as GuestEvent;
pub use self::bindings::exports::authkit::handler::queries::Caller as GuestCaller;

/// Memory and table pages of a freed instance slot that are reset in place
/// (zeroed or restored from the image) instead of being handed back to the
/// kernel, so the next call in that slot does not page-fault on them
/// (measured: a fresh instance and one call of a no-op handler, 15 us -> 5 us;
/// the example's `authenticate`, 32 us -> 10 us). The price is up to this much
/// resident memory per warm slot; a small guest touches far less.
const KEEP_RESIDENT_BYTES: usize = 1024 * 1024;
const KEEP_RESIDENT_TABLE_BYTES: usize = 64 * 1024;

/// Most Actions calls kept made ahead, over every tenant (the most recently
/// made; a tenant's go when it makes one for another version or limits).
const MAX_READY_ACTIONS: usize = 32;

/// The fewest instance slots a host sizes for itself (wasmtime's own default).
pub const DEFAULT_INSTANCE_SLOTS: u32 = 1000;
/// Below this, a few concurrent calls would use up the pool.
pub const MIN_INSTANCE_SLOTS: u32 = 16;
/// Each slot reserves (not commits) several GiB of address space for its
/// linear memory; this many stays well inside a 47-bit address space.
pub const MAX_INSTANCE_SLOTS: u32 = 10_000;

/// How many parts wasmtime splits the instance pool into: one per CPU this
/// process may run on, at most 16 (wasmtime's own rule, which it does not let
/// us set). Each thread takes its slots from one part, its own, and looks for
/// a slot still warm for its module only there (it tries the other parts only
/// when its own is full). So the worker, one thread, keeps a version warm only
/// within one part: with more versions in use than that part's slots, LRU
/// eviction remaps a memory image on nearly every call.
pub fn pool_parts() -> u32 {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(16);
    u32::try_from(cpus).unwrap_or(16)
}

/// The pool's size when the operator sets none (`handler.instance_slots`): two
/// slots per tenant stored at start in each of the pool's `parts` (see
/// [`pool_parts`]), so each tenant's active version keeps a warm slot in the
/// part of whichever thread runs it, with room for a version being swapped in
/// and for calls running at once; at least [`DEFAULT_INSTANCE_SLOTS`], at most
/// [`MAX_INSTANCE_SLOTS`].
pub fn instance_slots_for(tenants: usize, parts: u32) -> u32 {
    let slots = tenants.saturating_mul(2).saturating_mul(parts.max(1) as usize);
    u32::try_from(slots).unwrap_or(u32::MAX).clamp(DEFAULT_INSTANCE_SLOTS, MAX_INSTANCE_SLOTS)
}

/// How often the epoch advances; deadlines are counted in these ticks.
const TICK: Duration = Duration::from_millis(5);

/// The WIT package version this host serves, and the export names in it.
pub const WIT_VERSION: &str = "0.1.0";
const WIT_PACKAGE: &str = "authkit:handler";
pub const EVENTS_EXPORT: &str = "authkit:handler/events@0.1.0";
pub const ACTIONS_EXPORT: &str = "authkit:handler/actions@0.1.0";
pub const SCHEMA_EXPORT: &str = "authkit:handler/schema@0.1.0";
pub const QUERIES_EXPORT: &str = "authkit:handler/queries@0.1.0";

/// Limits of every invocation (the operator's settings).
#[derive(Debug, Clone, PartialEq)]
pub struct InvocationLimits {
    /// How long an event handler may run.
    pub event_deadline: Duration,
    /// How long an action handler may run.
    pub action_deadline: Duration,
    /// How long a query may run.
    pub query_deadline: Duration,
    /// Largest linear memory a guest may grow to, in bytes.
    pub memory_limit: usize,
    /// The highest `memory_limit` a tenant or a handler version may set; the
    /// engine's instance pool is sized for it. Only the operator's value counts.
    pub max_memory_limit: usize,
    /// `db` and `users` calls per invocation.
    pub max_calls: u32,
    pub documents: Limits,
}

impl Default for InvocationLimits {
    fn default() -> InvocationLimits {
        InvocationLimits {
            event_deadline: Duration::from_secs(5),
            action_deadline: Duration::from_secs(1),
            query_deadline: Duration::from_secs(2),
            memory_limit: 64 * 1024 * 1024,
            max_memory_limit: 512 * 1024 * 1024,
            max_calls: 1000,
            documents: Limits::default(),
        }
    }
}

/// Why a component cannot be loaded. Each says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "this is a core WebAssembly module, not a component: build it for `wasm32-wasip2` \
         (cargo build --target wasm32-wasip2) or wrap it with `wasm-tools component new`"
    )]
    CoreModule,
    #[error("this is not a WebAssembly component: {0}")]
    Invalid(String),
    #[error("the component imports something the sandbox does not provide: {0}")]
    Imports(String),
    #[error(
        "the component exports no handler interface this host serves (it serves `{EVENTS_EXPORT}`, `{ACTIONS_EXPORT}` and `{QUERIES_EXPORT}`); it exports: {0}"
    )]
    NoHandler(String),
    #[error(
        "the component was built against WIT `{found}`, and this host serves `{WIT_PACKAGE}@{WIT_VERSION}`: rebuild it with the WIT files of this host's `wit/` directory"
    )]
    WitVersion { found: String },
    #[error("the component's `schema.indexes` failed: {0}")]
    Schema(String),
}

/// A loaded handler component.
pub struct Module {
    /// SHA-256 of the component's bytes, hex.
    pub hash: String,
    pre: InstancePre<Invocation>,
    events: Option<events::GuestIndices>,
    actions: Option<actions::GuestIndices>,
    queries: Option<queries::GuestIndices>,
    /// The indexes the handler declared (empty without a `schema` export);
    /// shared with every invocation, not copied. Its `find` calls may use these.
    pub indexes: Arc<Indexes>,
    /// Which handler interfaces it exports: `events`, `actions`, `queries`, `schema`.
    pub exports: Vec<&'static str>,
    /// The size of its compiled code in memory, in bytes: most of what keeping
    /// it loaded costs.
    pub code_bytes: usize,
}

impl Module {
    pub fn handles_events(&self) -> bool {
        self.events.is_some()
    }

    pub fn handles_actions(&self) -> bool {
        self.actions.is_some()
    }

    pub fn handles_queries(&self) -> bool {
        self.queries.is_some()
    }
}

/// Why an invocation did not succeed. Any of these rolls back what it wrote.
#[derive(Debug, thiserror::Error)]
pub enum HandlerError {
    #[error("the handler returned an error: {0}")]
    Returned(String),
    #[error("the handler ran past its deadline of {} ms", .0.as_millis())]
    Deadline(Duration),
    #[error("the handler needed more than its memory limit of {} MiB", .0 / (1024 * 1024))]
    Memory(usize),
    #[error("the handler trapped: {0}")]
    Trap(String),
    /// A write past the tenant's document quota (see [`QuotaExceeded`]).
    #[error(transparent)]
    Quota(QuotaExceeded),
    /// The host failed (the database, typically): not the guest's fault.
    #[error(transparent)]
    Host(StoreError),
}

/// What an invocation gives back: the transaction it borrowed, its result and its log.
pub struct Invoked<T = ()> {
    pub tx: Option<SyncTx>,
    pub result: Result<T, HandlerError>,
    pub logs: Vec<String>,
    /// Whether the call wrote anything (a read-only call need not commit).
    pub wrote: bool,
    /// The largest linear memory the guest had during the call, in bytes.
    pub peak_memory: usize,
    /// The used store and instance. Dropping it gives the instance's slot back
    /// to the pool (resetting its memory), which a caller in a hurry may do
    /// after answering.
    pub spent: Option<Spent>,
}

impl<T> Invoked<T> {
    /// The outcome when no guest code ran: the transaction back untouched.
    fn not_called(tx: SyncTx, result: Result<T, HandlerError>) -> Invoked<T> {
        Invoked { tx: Some(tx), result, logs: Vec::new(), wrote: false, peak_memory: 0, spent: None }
    }
}

/// A store whose one call is over; it can only be dropped.
pub struct Spent(#[allow(dead_code)] Store<Invocation>);

/// A query as the guest receives it.
pub struct Query {
    pub name: String,
    pub args_json: String,
    pub caller: Option<GuestCaller>,
}

/// An Actions request as the guest receives it.
pub enum GuestAction {
    Authenticate(Box<GuestAuthentication>),
    Register(Box<GuestRegistration>),
}

pub struct Runtime {
    engine: Engine,
    linker: Linker<Invocation>,
    limits: InvocationLimits,
    /// Loaded modules by content hash, while something still holds them.
    modules: Mutex<HashMap<String, Weak<Module>>>,
    cache: CodeCache,
    /// Actions calls made ready ahead, oldest first (see [`Runtime::ready_next_action`]).
    ready_actions: Mutex<VecDeque<ReadyAction>>,
    /// The instance pool's size.
    slots: u32,
    /// Kept for its `Drop`, which stops the epoch thread.
    _ticker: Ticker,
}

/// The engine's settings: component model, epoch interruption, and the
/// pooling allocator with copy-on-write memory images, each slot's memory
/// reserved up to `memory_limit`. Public so a benchmark's bare lower bound can
/// run on exactly the same engine.
///
/// The pool has `slots` of each kind (component and core instances,
/// memories, tables), and every slot may stay warm: a slot keeps the mapping
/// of the module it last ran, so that module's next call reuses it, and a
/// slot's resident memory is bounded by the keep-resident sizes above. With
/// wasmtime's default of 100 warm slots, a host cycling through more handler
/// versions than that remapped a memory image on most calls.
pub fn engine_config(memory_limit: usize, slots: u32) -> Config {
    let mut pool = PoolingAllocationConfig::default();
    pool.total_component_instances(slots)
        .total_core_instances(slots)
        .total_memories(slots)
        .total_tables(slots)
        .max_unused_warm_slots(slots)
        .max_memory_size(memory_limit)
        .linear_memory_keep_resident(KEEP_RESIDENT_BYTES)
        .table_keep_resident(KEEP_RESIDENT_TABLE_BYTES)
        // Reset only the pages a call touched (Linux 6.7+; else the first KEEP_RESIDENT_BYTES).
        .pagemap_scan(wasmtime::Enabled::Auto);
    let mut config = Config::new();
    config
        .wasm_component_model(true)
        .epoch_interruption(true)
        .memory_init_cow(true)
        .allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    config
}

impl Runtime {
    /// `cache_dir`: where compiled code is kept across restarts (`None`: compile on every load).
    /// `slots`: the instance pool's size (see [`engine_config`]).
    pub fn new(limits: InvocationLimits, slots: u32, cache_dir: Option<PathBuf>) -> wasmtime::Result<Runtime> {
        let engine = Engine::new(&engine_config(limits.max_memory_limit.max(limits.memory_limit), slots))?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_sync(&mut linker)?;
        // Engines such as componentize-js's import `wasi:http` for `fetch`;
        // linked so such components load, every request refused.
        wasmtime_wasi_http::p2::add_only_http_to_linker_sync(&mut linker)?;
        sleep::shadow(&mut linker)?;
        bindings::FullHandler::add_to_linker::<Invocation, HasSelf<host::HostState>>(&mut linker, |s| &mut s.host)?;
        let ticker = Ticker::start(engine.clone());
        let cache = CodeCache::new(&engine, cache_dir);
        Ok(Runtime {
            engine,
            linker,
            limits,
            modules: Mutex::default(),
            cache,
            ready_actions: Mutex::default(),
            slots,
            _ticker: ticker,
        })
    }

    /// Deletes the cached compiled code of the component with this content
    /// hash (see [`CodeCache::forget`]): no stored version has it any more.
    /// Blocking: it reads the cache directory.
    pub fn forget_compiled(&self, hash: &str) -> usize {
        self.cache.forget(hash)
    }

    /// Deletes cached compiled code no one will read (see [`CodeCache::sweep`]);
    /// `in_use`: the content hashes of every stored version. Blocking.
    pub fn sweep_compiled(&self, in_use: &std::collections::HashSet<String>) -> usize {
        self.cache.sweep(in_use)
    }

    /// What the compiled-code cache did since start.
    pub fn cache_stats(&self) -> CacheStats {
        self.cache.stats()
    }

    /// The instance pool's size.
    pub fn instance_slots(&self) -> u32 {
        self.slots
    }

    pub fn limits(&self) -> &InvocationLimits {
        &self.limits
    }

    /// Validates, compiles (or takes from the cache), links and inspects a
    /// component. A module already loaded and still in use is shared.
    pub fn load(&self, bytes: &[u8]) -> Result<Arc<Module>, LoadError> {
        let hash = hex::encode(Sha256::digest(bytes));
        if let Some(module) = self.modules.lock().unwrap_or_else(|p| p.into_inner()).get(&hash).and_then(Weak::upgrade)
        {
            return Ok(module);
        }
        if bytes.get(..8) == Some(b"\0asm\x01\0\0\0") {
            return Err(LoadError::CoreModule);
        }
        if !bytes.starts_with(b"\0asm") {
            return Err(LoadError::Invalid("it does not start with the WebAssembly magic bytes".into()));
        }
        let component = self
            .cache
            .load(&self.engine, &hash, || Component::from_binary(&self.engine, bytes))
            .map_err(|e| LoadError::Invalid(format!("{e:#}")))?;
        let exports = self.handler_exports(&component)?;
        let pre = self.linker.instantiate_pre(&component).map_err(|e| LoadError::Imports(format!("{e:#}")))?;
        let events = events::GuestIndices::new(&pre).ok();
        let actions = actions::GuestIndices::new(&pre).ok();
        let queries = queries::GuestIndices::new(&pre).ok();
        let schema = schema::GuestIndices::new(&pre).ok();
        if events.is_none() && actions.is_none() && queries.is_none() {
            return Err(LoadError::NoHandler(exports.join(", ")));
        }
        let code = component.image_range();
        let mut module = Module {
            code_bytes: (code.end as usize).saturating_sub(code.start as usize),
            hash: hash.clone(),
            pre,
            events,
            actions,
            queries,
            indexes: Arc::default(),
            exports: [
                ("events", EVENTS_EXPORT),
                ("actions", ACTIONS_EXPORT),
                ("queries", QUERIES_EXPORT),
                ("schema", SCHEMA_EXPORT),
            ]
            .into_iter()
            .filter(|(_, name)| exports.iter().any(|e| e == name))
            .map(|(short, _)| short)
            .collect(),
        };
        if let Some(schema) = schema {
            module.indexes = Arc::new(self.declared_indexes(&module, &schema)?);
        }
        let module = Arc::new(module);
        let mut modules = self.modules.lock().unwrap_or_else(|p| p.into_inner());
        modules.retain(|_, m| m.strong_count() > 0);
        modules.insert(hash, Arc::downgrade(&module));
        Ok(module)
    }

    /// The component's export names; refuses one built for another WIT version
    /// of this package with a message that says so.
    fn handler_exports(&self, component: &Component) -> Result<Vec<String>, LoadError> {
        let names: Vec<String> =
            component.component_type().exports(&self.engine).map(|(name, _)| name.to_string()).collect();
        let ours = |n: &&String| n.starts_with(&format!("{WIT_PACKAGE}/"));
        if !names.iter().any(|n| n == EVENTS_EXPORT || n == ACTIONS_EXPORT || n == QUERIES_EXPORT)
            && let Some(found) = names.iter().find(ours)
        {
            let found = found.split_once('/').map_or(found.as_str(), |(_, rest)| rest);
            let version = found.split_once('@').map_or("no version", |(_, v)| v);
            return Err(LoadError::WitVersion { found: format!("{WIT_PACKAGE}@{version}") });
        }
        Ok(names)
    }

    fn declared_indexes(&self, module: &Module, schema: &schema::GuestIndices) -> Result<Indexes, LoadError> {
        let mut store = self.store(module, None, "", &self.limits, true, self.limits.event_deadline, &module.indexes);
        let declared = (|| {
            let instance = module.pre.instantiate(&mut store)?;
            schema.load(&mut store, &instance)?.call_indexes(&mut store)
        })()
        .map_err(|e| LoadError::Schema(classify(e, &store, &self.limits, self.limits.event_deadline).to_string()))?;
        Indexes::new(declared.into_iter().map(|i| (i.table, i.field))).map_err(LoadError::Schema)
    }

    /// Calls the module's `events.handle` with `tx` as its database. The
    /// transaction comes back in [`Invoked`] whatever happened; the caller rolls
    /// back (to its savepoint) unless the result is `Ok`. `maintained`: the
    /// indexes the tenant's writes keep up to date (see [`crate::deploy`]).
    /// `limits`: the tenant's; its memory limit is at most the host's.
    pub fn handle_event(
        &self,
        module: &Module,
        tx: SyncTx,
        tenant: &str,
        limits: &InvocationLimits,
        maintained: &Arc<Indexes>,
        event: &GuestEvent,
    ) -> Invoked {
        let started = Instant::now();
        let Some(indices) = &module.events else {
            return Invoked::not_called(tx, Ok(()));
        };
        let deadline = limits.event_deadline;
        let mut store = self.store(module, Some(tx), tenant, limits, false, deadline, maintained);
        let outcome = (|| {
            let instance = module.pre.instantiate(&mut store)?;
            indices.load(&mut store, &instance)?.call_handle(&mut store, event)
        })();
        let outcome = returned(outcome, &store, limits, deadline);
        finish(store, outcome, started, deadline)
    }

    /// For the benchmarks only: what reusing an instance would save. Calls
    /// `events.handle` for each of `events` on one instance in one store (which
    /// the host never does: see ARCHITECTURE, "Instances are never reused") and
    /// returns each call's time, without the instance start. The transaction is
    /// rolled back.
    #[doc(hidden)]
    pub fn time_calls_on_one_instance(
        &self,
        module: &Module,
        tx: SyncTx,
        limits: &InvocationLimits,
        events: &[GuestEvent],
    ) -> wasmtime::Result<Vec<Duration>> {
        let indices = module.events.as_ref().ok_or_else(|| wasmtime::Error::msg("the module handles no events"))?;
        let mut store = self.store(module, Some(tx), "default", limits, false, limits.event_deadline, &module.indexes);
        let instance = module.pre.instantiate(&mut store)?;
        let handler = indices.load(&mut store, &instance)?;
        let mut times = Vec::with_capacity(events.len());
        for event in events {
            let started = Instant::now();
            handler.call_handle(&mut store, event)?.map_err(wasmtime::Error::msg)?;
            times.push(started.elapsed());
        }
        Ok(times)
    }

    /// Calls the module's `actions` export with `tx` as its database; the
    /// caller commits only when the result is a verdict.
    ///
    /// A store and instance made ahead for this module, tenant and limits
    /// (see [`Runtime::ready_next_action`]) is used if one is kept; otherwise
    /// they are made now.
    pub fn handle_action(
        &self,
        module: &Module,
        tx: SyncTx,
        tenant: &str,
        limits: &InvocationLimits,
        maintained: &Arc<Indexes>,
        action: &GuestAction,
    ) -> Invoked<GuestVerdict> {
        let started = Instant::now();
        let deadline = limits.action_deadline;
        let Some(indices) = &module.actions else {
            return Invoked::not_called(tx, Err(HandlerError::Trap("the handler has no actions export".into())));
        };
        let (store, outcome) = match self.take_ready(module, tenant, limits) {
            Some(ReadyAction { mut store, guest, .. }) => {
                let data = store.data_mut();
                data.deadline_at = Instant::now() + deadline;
                data.host.lend(tx, maintained.clone());
                store.set_epoch_deadline(epoch_ticks(deadline));
                let outcome = call_action(&guest, &mut store, action);
                (store, outcome)
            }
            None => {
                let mut store = self.store(module, Some(tx), tenant, limits, false, deadline, maintained);
                let outcome = module
                    .pre
                    .instantiate(&mut store)
                    .and_then(|instance| indices.load(&mut store, &instance))
                    .and_then(|guest| call_action(&guest, &mut store, action));
                (store, outcome)
            }
        };
        let outcome = outcome.map_err(|e| classify(e, &store, limits, deadline));
        finish(store, outcome, started, deadline)
    }

    /// Makes the store and instance of `module`'s next Actions call for
    /// `tenant` under `limits` ahead of time, with no transaction, and keeps
    /// it for that call: Actions answer while WorkOS waits, and making them
    /// is a good part of a call's time. At most [`MAX_READY_ACTIONS`] are kept
    /// (the oldest goes, and so do the tenant's for another version or other
    /// limits), so they hold few of the pool's slots. Nothing is
    /// kept if the module cannot be instantiated so; the call then makes its
    /// own, as usual. Instantiating a component runs none of its exports.
    pub fn ready_next_action(&self, module: &Module, tenant: &str, limits: &InvocationLimits) {
        let Some(indices) = &module.actions else { return };
        let mut store = self.store(module, None, tenant, limits, false, limits.action_deadline, &Arc::default());
        let Ok(guest) = module.pre.instantiate(&mut store).and_then(|instance| indices.load(&mut store, &instance))
        else {
            return;
        };
        let ready = ReadyAction {
            store,
            guest,
            module_hash: module.hash.clone(),
            tenant: tenant.to_string(),
            limits: limits.clone(),
        };
        let evicted: VecDeque<ReadyAction> = {
            let mut kept = self.ready_actions.lock().unwrap_or_else(|p| p.into_inner());
            // This tenant's instances of another version or limits can no longer serve.
            let (mut stale, fresh): (VecDeque<_>, VecDeque<_>) =
                kept.drain(..).partition(|r| r.tenant == ready.tenant && !r.serves(&ready));
            *kept = fresh;
            kept.push_back(ready);
            if kept.len() > MAX_READY_ACTIONS {
                stale.extend(kept.pop_front());
            }
            stale
        };
        // Dropped outside the lock: freeing an instance resets its memory.
        drop(evicted);
    }

    fn take_ready(&self, module: &Module, tenant: &str, limits: &InvocationLimits) -> Option<ReadyAction> {
        let mut kept = self.ready_actions.lock().unwrap_or_else(|p| p.into_inner());
        let at = kept.iter().position(|r| r.module_hash == module.hash && r.tenant == tenant && r.limits == *limits)?;
        kept.remove(at)
    }

    /// Calls the module's `queries.run` with `tx` as a read-only database:
    /// every write returns `read-only`. The caller rolls `tx` back.
    pub fn handle_query(
        &self,
        module: &Module,
        tx: SyncTx,
        tenant: &str,
        limits: &InvocationLimits,
        query: &Query,
    ) -> Invoked<String> {
        let started = Instant::now();
        let deadline = limits.query_deadline;
        let Some(indices) = &module.queries else {
            return Invoked::not_called(tx, Err(HandlerError::Trap("the handler has no queries export".into())));
        };
        // Nothing is written, so the indexes it can read are all that matter.
        let readable = module.indexes.clone();
        let mut store = self.store(module, Some(tx), tenant, limits, true, deadline, &readable);
        let outcome = (|| {
            let instance = module.pre.instantiate(&mut store)?;
            indices.load(&mut store, &instance)?.call_run(
                &mut store,
                &query.name,
                &query.args_json,
                query.caller.as_ref(),
            )
        })();
        let outcome = returned(outcome, &store, limits, deadline);
        finish(store, outcome, started, deadline)
    }

    #[allow(clippy::too_many_arguments)]
    fn store(
        &self,
        module: &Module,
        tx: Option<SyncTx>,
        tenant: &str,
        limits: &InvocationLimits,
        read_only: bool,
        deadline: Duration,
        maintained: &Arc<Indexes>,
    ) -> Store<Invocation> {
        let log = Arc::new(Mutex::new(LogBuffer::new(MAX_LOG_LINES, MAX_LOG_BYTES)));
        let wasi = WasiCtx::builder()
            .stdout(log::LogStream::new(log.clone(), log::STDOUT))
            .stderr(log::LogStream::new(log.clone(), log::STDERR))
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        let indexes = host::CallIndexes { findable: module.indexes.clone(), maintained: maintained.clone() };
        let host = host::HostState::new(tx, tenant, indexes, limits, read_only, log.clone());
        let invocation = Invocation {
            deadline_at: Instant::now() + deadline,
            wasi,
            http: WasiHttpCtx::new(),
            no_requests: NoOutgoingRequests,
            table: ResourceTable::new(),
            limiter: Limiter { memory_limit: limits.memory_limit, memory_denied: false, peak: 0 },
            host,
            log,
        };
        let mut store = Store::new(&self.engine, invocation);
        store.limiter(|s| &mut s.limiter);
        store.set_epoch_deadline(epoch_ticks(deadline));
        store.epoch_deadline_trap();
        store
    }
}

fn call_action(
    guest: &actions::Guest,
    store: &mut Store<Invocation>,
    action: &GuestAction,
) -> wasmtime::Result<GuestVerdict> {
    match action {
        GuestAction::Authenticate(ctx) => guest.call_authenticate(store, ctx),
        GuestAction::Register(ctx) => guest.call_register_user(store, ctx),
    }
}

/// Epoch ticks for a deadline: at least one.
fn epoch_ticks(deadline: Duration) -> u64 {
    deadline.as_millis().div_ceil(TICK.as_millis()).max(1) as u64
}

/// The store and instance of an Actions call, made before its request
/// arrived (see [`Runtime::ready_next_action`]): never called yet, and used
/// by one call only, as every instance is.
struct ReadyAction {
    store: Store<Invocation>,
    guest: actions::Guest,
    module_hash: String,
    tenant: String,
    limits: InvocationLimits,
}

impl ReadyAction {
    /// Whether it could serve the calls `other` was made for.
    fn serves(&self, other: &ReadyAction) -> bool {
        self.module_hash == other.module_hash && self.tenant == other.tenant && self.limits == other.limits
    }
}

/// Ends a call: its result (a call that returns after its deadline, as a guest
/// that slept through it may, counts as past it), log and transaction.
fn finish<T>(
    mut store: Store<Invocation>,
    outcome: Result<T, HandlerError>,
    started: Instant,
    deadline: Duration,
) -> Invoked<T> {
    let result = match outcome {
        Ok(_) if started.elapsed() > deadline => Err(HandlerError::Deadline(deadline)),
        other => other,
    };
    let data = store.data_mut();
    let logs = data.log.lock().unwrap_or_else(|p| p.into_inner()).finish();
    let (wrote, tx, peak_memory) = (data.host.wrote(), data.host.tx.take(), data.limiter.peak);
    Invoked { wrote, tx, result, logs, peak_memory, spent: Some(Spent(store)) }
}

/// The outcome of an export that returns `result<T, string>`: the guest's
/// error, or the reason a failed call failed.
fn returned<T>(
    outcome: wasmtime::Result<Result<T, String>>,
    store: &Store<Invocation>,
    limits: &InvocationLimits,
    deadline: Duration,
) -> Result<T, HandlerError> {
    match outcome {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(message)) => Err(HandlerError::Returned(message)),
        Err(e) => Err(classify(e, store, limits, deadline)),
    }
}

/// Turns a failed call into the reason an operator can act on.
fn classify(
    error: wasmtime::Error,
    store: &Store<Invocation>,
    limits: &InvocationLimits,
    deadline: Duration,
) -> HandlerError {
    if let Some(fault) = error.downcast_ref::<HostFault>() {
        return HandlerError::Host(fault.take());
    }
    if let Some(quota) = error.downcast_ref::<QuotaExceeded>() {
        return HandlerError::Quota(*quota);
    }
    if store.data().limiter.memory_denied {
        return HandlerError::Memory(limits.memory_limit);
    }
    match error.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => HandlerError::Deadline(deadline),
        _ => HandlerError::Trap(format!("{error:#}")),
    }
}

/// Everything one invocation's `Store` holds.
pub struct Invocation {
    /// When the call must be over (sleeps are cut short here, see [`sleep`]).
    deadline_at: Instant,
    wasi: WasiCtx,
    http: WasiHttpCtx,
    no_requests: NoOutgoingRequests,
    table: ResourceTable,
    limiter: Limiter,
    host: host::HostState,
    log: Arc<Mutex<LogBuffer>>,
}

impl WasiView for Invocation {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.wasi, table: &mut self.table }
    }
}

impl WasiHttpView for Invocation {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { hooks: &mut self.no_requests, table: &mut self.table, ctx: &mut self.http }
    }
}

/// Handlers have no network: every outgoing `wasi:http` request fails with
/// `HTTP-request-denied` (the guest sees an error, not a trap).
struct NoOutgoingRequests;

impl WasiHttpHooks for NoOutgoingRequests {
    fn send_request(
        &mut self,
        _request: http::Request<wasmtime_wasi_http::WasiBody>,
        _options: Option<wasmtime_wasi_http::RequestOptions>,
        _fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> Box<
        dyn Future<
                Output = Result<
                    (
                        http::Response<wasmtime_wasi_http::WasiBody>,
                        Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
                    ),
                    wasmtime_wasi_http::Error,
                >,
            > + Send,
    > {
        Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) })
    }
}

/// The memory cap. A refused grow makes `memory.grow` fail, which guests turn
/// into a trap; the flag tells that trap apart from the others.
struct Limiter {
    memory_limit: usize,
    memory_denied: bool,
    /// The largest memory size granted so far (its creation counts too).
    peak: usize,
}

impl wasmtime::ResourceLimiter for Limiter {
    fn memory_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        let allowed = desired <= self.memory_limit;
        if allowed {
            self.peak = self.peak.max(desired);
        } else {
            self.memory_denied = true;
        }
        Ok(allowed)
    }

    fn table_growing(&mut self, _current: usize, desired: usize, _maximum: Option<usize>) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

/// Advances the engine's epoch every [`TICK`] until dropped.
struct Ticker {
    stop: Arc<AtomicBool>,
}

impl Ticker {
    fn start(engine: Engine) -> Ticker {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(TICK);
                    engine.increment_epoch();
                }
            })
            .expect("spawn the epoch thread");
        Ticker { stop }
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest component there is: the magic and the component layer's version.
    const EMPTY_COMPONENT: &[u8] = b"\0asm\x0d\0\x01\0";

    #[test]
    fn the_pool_holds_two_slots_per_tenant_in_each_part() {
        assert_eq!(instance_slots_for(1, 2), DEFAULT_INSTANCE_SLOTS);
        assert_eq!(instance_slots_for(700, 1), 1400);
        assert_eq!(instance_slots_for(700, 2), 2800);
        assert_eq!(instance_slots_for(1000, 16), MAX_INSTANCE_SLOTS);
        assert_eq!(instance_slots_for(usize::MAX, 0), MAX_INSTANCE_SLOTS);
        assert!((1..=16).contains(&pool_parts()));
    }

    #[test]
    fn the_pool_holds_as_many_instances_as_it_has_slots() {
        let engine = Engine::new(&engine_config(64 * 1024 * 1024, MIN_INSTANCE_SLOTS)).unwrap();
        let component = wasmtime::component::Component::new(&engine, EMPTY_COMPONENT).unwrap();
        let linker = Linker::<()>::new(&engine);
        let instantiate = || {
            let mut store = Store::new(&engine, ());
            linker.instantiate(&mut store, &component).map(|_| store)
        };
        let live: Vec<_> = (0..MIN_INSTANCE_SLOTS).map(|_| instantiate().unwrap()).collect();
        let refused = instantiate().expect_err("the pool has one slot fewer than asked for");
        assert!(format!("{refused:#}").contains("instance"), "{refused:#}");
        drop(live);
        instantiate().expect("a freed slot is used again");
    }
}

//! Assembles and runs the host: store, ingest writer, worker and HTTP server.
//!
//! Owns: start-up order and the graceful shutdown sequence. Must not: parse
//! flags or read the environment (see [`crate::settings`]).
//!
//! Shutdown, once `shutdown` is cancelled, or once another host process has
//! migrated the database past this build (then the host exits with an error,
//! since its statements no longer fit the schema): stop accepting connections; let
//! in-flight requests finish (each waits for its event's commit); let the ingest
//! writer and the action decision recorder drain; let the worker finish its
//! batch and the inbox pruner its step; stop the SQLite checkpointer after a
//! last checkpoint; close the pool.
//! Anything acknowledged is durable before its 2xx, so nothing acknowledged is
//! lost even when the grace period runs out or the process is killed.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::deploy::Deployment;
use crate::http::{self, AppState, Shared};
use crate::pipeline::actions::Decider;
use crate::pipeline::ingest::Ingest;
use crate::pipeline::retention::prune_periodically;
use crate::pipeline::worker::Worker;
use crate::runtime::{InvocationLimits, ModuleLimits, Runtime, instance_slots_for, pool_parts};
use crate::settings::{Settings, env};
use crate::store::Store;
use crate::store::documents::Limits;
use crate::store::inbox::InboxWriter;
use crate::tenants::{DEFAULT_TENANT, Tenants};
use crate::workos::jwks::KeyCache;

/// Runs the host on `listener` until `shutdown` is cancelled, then stops cleanly.
pub async fn run(settings: Settings, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with(settings, listener, shutdown, |_| {}).await
}

/// Like [`run`]; `ready` gets the tenant's deployment once it is loaded, before
/// requests are served (`dev --watch` deploys through it).
pub async fn run_with(
    settings: Settings,
    listener: TcpListener,
    shutdown: CancellationToken,
    ready: impl FnOnce(Arc<Deployment>),
) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database)
        .await
        .with_context(|| format!("failed to open the database {:?}", settings.database))?;
    info!(database = ?settings.database, backend = store.backend(), "database ready");
    let checkpointer = store.start_checkpointer().context("failed to start the SQLite checkpointer")?;
    if settings.workos.webhook_secret.is_none() {
        warn!(
            "{} is not set: POST /workos/webhook answers 503 until it is. Copy the secret from the WorkOS dashboard's webhook settings.",
            env::WEBHOOK_SECRET
        );
    }

    let settings = Arc::new(settings);
    let tenants = open_tenants(&settings, &store).await?;
    let deployment = open_default(&tenants).await?;
    // Compiled code no stored version uses: off the way to serving.
    let sweep = tenants.clone();
    tokio::task::spawn_blocking(move || crate::deploy::sweep_unused_code(sweep.db(), sweep.runtime()));
    if let Some(path) = &settings.handler.path {
        deploy_at_start(&deployment, path).await?;
    }
    ready(deployment.clone());
    if settings.admin_token.is_none() {
        info!("{} is not set: the admin API (/admin/...) answers 503 until it is", env::ADMIN_TOKEN);
    }

    let writer = InboxWriter::new(&store).context("failed to open the inbox writer")?;
    let stored = Arc::new(Notify::new());
    let (ingest, ingest_task) = Ingest::start(writer, stored.clone());
    let worker_stop = CancellationToken::new();
    let worker_task = if settings.worker.enabled {
        let worker = Worker::new(&store, settings.worker.clone(), tenants.clone(), stored, Handle::current())
            .context("failed to open the worker's database connection")?;
        let stop = worker_stop.clone();
        Some(tokio::task::spawn_blocking(move || worker.run(stop)))
    } else {
        info!("worker disabled: events are stored and acknowledged but not applied by this process");
        None
    };
    let pruner =
        settings.inbox.keep_done.map(|keep| tokio::spawn(prune_periodically(store.clone(), keep, worker_stop.clone())));
    if pruner.is_none() {
        info!("inbox.keep_done_days is 0: done events are kept for good");
    }

    if settings.workos.action_secret.is_none() {
        info!("{} is not set: POST /workos/action answers 503 until it is", env::ACTION_SECRET);
    }
    let db = store.sync_db(Handle::current()).context("failed to open the actions' database connection")?;
    let (decider, recorder) = Decider::new(store.clone(), Arc::new(db), tenants.clone());
    let decider = Arc::new(decider);
    let refresher = tokio::spawn(refresh_periodically(tenants.clone(), settings.modules.poll_interval));

    let grace = settings.shutdown_grace;
    let keys = Arc::new(KeyCache::new(&settings.workos.api_base_url, &settings.auth));
    let state = AppState::new(Shared { settings, ingest, decider, tenants, keys });
    let app = http::router(state);
    let addr = listener.local_addr().context("failed to read the listening address")?;
    info!(%addr, "authkit-host listening on http://{addr}");

    // The host stops when asked to, once another host has migrated the
    // database past this build, or once its log could not be synced (see
    // `watch_database`).
    let stop = shutdown.child_token();
    let database_watch = tokio::spawn(watch_database(store.clone(), stop.clone(), SCHEMA_CHECK_EVERY));
    let server = axum::serve(listener, app).with_graceful_shutdown(stop.clone().cancelled_owned());
    let serve_result = tokio::select! {
        result = server => result.context("the HTTP server failed"),
        () = async { stop.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; closing them");
            Ok(())
        }
    };
    info!("stopped accepting requests; finishing stored work");
    // However serving ended, the schema watch ends with it.
    stop.cancel();

    // Every `Ingest` clone lived in the router's connections: once they are gone the
    // writer drains and ends. Connections cut off by the grace period may linger a
    // moment; their events were not acknowledged, so WorkOS will redeliver them.
    match tokio::time::timeout(grace, ingest_task).await {
        Ok(joined) => joined.context("the ingest writer panicked")?,
        Err(_) => warn!("the ingest writer did not finish in time; unacknowledged events will be redelivered"),
    }
    // Likewise the decider: once it is gone the recorder writes what is queued and ends.
    if tokio::time::timeout(grace, recorder).await.is_err() {
        warn!("the action decision recorder did not finish in time; the latest decisions may not be recorded");
    }
    worker_stop.cancel();
    if let Some(task) = worker_task {
        task.await.context("the worker panicked")?;
    }
    if let Some(task) = pruner {
        task.await.context("the inbox pruner panicked")?;
    }
    refresher.abort();
    // A last checkpoint, after every writer here has stopped.
    if let Some(checkpointer) = checkpointer {
        tokio::task::spawn_blocking(move || drop(checkpointer)).await.context("the checkpointer panicked")?;
    }
    store.close().await;
    info!("shutdown complete");
    if let Ok(Some(stopped)) = database_watch.await {
        return Err(stopped.into());
    }
    serve_result
}

/// How often a running host checks that no newer host has migrated its database.
const SCHEMA_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(2);

/// Why the database made the host stop.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("this host stopped: its database is ahead of it")]
    Outdated(#[source] crate::store::StoreError),
    #[error(
        "this host stopped: syncing the SQLite database's log failed (see the error logged before), so nothing \
         committed since may be on disk; nothing after it was acknowledged. Check the disk, then start the host \
         again: SQLite reads its log back and copies it into the database file"
    )]
    LogFailed,
}

/// Stops the host (cancels `stop`), checking every `every`:
/// - once the database's schema is newer than this build's, which happens when
///   a newer version starts on the same database while this one runs: this
///   build's statements no longer fit it, and its worker would fail every
///   event it touched;
/// - on SQLite, once a sync of the log has failed ([`crate::store::exec::LogHealth`]):
///   from then on nothing is acknowledged, and only a restart makes the log
///   durable again.
///
/// Returns why, or `None` once `stop` is cancelled for another reason. A
/// database that cannot be reached is not a reason to stop; the next check
/// tries again.
async fn watch_database(store: Store, stop: CancellationToken, every: std::time::Duration) -> Option<Stopped> {
    let health = store.log_health();
    loop {
        tokio::select! {
            () = stop.cancelled() => return None,
            () = tokio::time::sleep(every) => {}
        }
        if health.as_ref().is_some_and(|h| h.failed()) {
            error!("stopping: a sync of the database's log failed, and nothing more can be acknowledged");
            stop.cancel();
            return Some(Stopped::LogFailed);
        }
        match store.check_schema().await {
            Ok(()) => {}
            Err(e @ crate::store::StoreError::NewerSchema { .. }) => {
                error!(error = %e, "stopping: another host process has migrated the database past this version");
                stop.cancel();
                return Some(Stopped::Outdated(e));
            }
            Err(e) => warn!(error = %e, "could not check the database's schema version"),
        }
    }
}

/// Starts the runtime and loads the tenants.
async fn open_tenants(settings: &Arc<Settings>, store: &Store) -> anyhow::Result<Arc<Tenants>> {
    let h = &settings.handler;
    let limits = InvocationLimits {
        event_deadline: h.event_deadline,
        action_deadline: settings.actions.deadline,
        query_deadline: settings.queries.deadline,
        memory_limit: h.memory_limit,
        max_memory_limit: h.max_memory_limit,
        max_calls: h.max_calls,
        documents: Limits {
            max_document_bytes: h.max_document_bytes,
            max_documents: h.max_documents,
            ..Limits::default()
        },
    };
    let db = store.sync_db(Handle::current()).context("failed to open a database connection for the handlers")?;
    let slots = match h.instance_slots {
        Some(slots) => slots,
        None => instance_slots_for(store.count_tenants().await.context("failed to count the tenants")?, pool_parts()),
    };
    info!(slots, "instance pool sized");
    let cache_dir = settings.modules.cache_dir.clone();
    let runtime = tokio::task::spawn_blocking(move || Runtime::new(limits, slots, cache_dir))
        .await
        .context("the runtime start panicked")?
        .map_err(|e| {
            anyhow::anyhow!(
                "failed to start the WebAssembly runtime with {slots} instance slots \
                 (each reserves address space; fewer: handler.instance_slots): {e:#}"
            )
        })?;
    let tenants = Tenants::load(store.clone(), Arc::new(db), Arc::new(runtime), settings.clone())
        .await
        .context("failed to load the tenants")?;
    info!(tenants = tenants.all().len(), "tenants loaded");
    Ok(Arc::new(tenants))
}

/// Brings back the default tenant's handler versions: their indexes and the
/// active one (from the compiled-code cache when it can). Other tenants' are
/// opened on their first use.
async fn open_default(tenants: &Arc<Tenants>) -> anyhow::Result<Arc<Deployment>> {
    let started = std::time::Instant::now();
    let t = tenants.clone();
    let deployment = tokio::task::spawn_blocking(move || t.deployment(DEFAULT_TENANT))
        .await
        .context("the handler loader panicked")?
        .context("failed to load the stored handler versions")?;
    let status = deployment.status();
    info!(
        active_version = ?status.active_version,
        cache_hits = status.cache.hits,
        compiled = status.cache.compiled,
        elapsed_ms = started.elapsed().as_millis() as u64,
        "handler versions ready"
    );
    Ok(deployment)
}

/// `--handler FILE`: deploys and activates the file (a stored version with the
/// same bytes is reused). A component that cannot be used stops the start-up.
async fn deploy_at_start(deployment: &Arc<Deployment>, path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(path).await.with_context(|| format!("cannot read the handler {}", path.display()))?;
    let d = deployment.clone();
    let uploaded = tokio::task::spawn_blocking(move || d.upload(&bytes, ModuleLimits::default(), true))
        .await
        .context("the handler loader panicked")?
        .with_context(|| format!("the handler {} cannot be used", path.display()))?;
    info!(handler = %path.display(), version = uploaded.info.version, sha256 = %uploaded.info.hash, "handler loaded");
    Ok(())
}

/// Adopts tenants and versions other host processes change (they share the database).
async fn refresh_periodically(tenants: Arc<Tenants>, every: std::time::Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        if let Err(e) = tenants.reload().await {
            warn!(error = %e, "could not check the database for tenant changes");
        }
        let (open, all) = (tenants.open_deployments(), tenants.clone());
        let checked = tokio::task::spawn_blocking(move || {
            for d in open {
                if let Err(e) = d.refresh() {
                    warn!(tenant = %d.tenant(), error = %e, "could not check the database for handler version changes");
                }
            }
            // Versions loaded since the last check (an upload, an activation
            // here or elsewhere) may have taken the open ones past the bounds.
            all.close_past_bounds();
        });
        if let Err(e) = checked.await {
            warn!(error = %e, "the handler version check panicked");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::settings::DatabaseUrl;

    /// A failed sync of the log stops the server, with that reason; asked to
    /// stop for another, the watch ends with none.
    #[tokio::test]
    async fn a_failed_sync_of_the_log_stops_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("authkit.db").display());
        let store = Store::connect(&DatabaseUrl::parse(&url).unwrap()).await.unwrap();
        let every = std::time::Duration::from_millis(10);

        let stop = CancellationToken::new();
        let watch = tokio::spawn(watch_database(store.clone(), stop.clone(), every));
        tokio::time::sleep(every * 5).await;
        assert!(!watch.is_finished(), "nothing to stop for");
        stop.cancel();
        assert!(watch.await.unwrap().is_none());

        let stop = CancellationToken::new();
        let watch = tokio::spawn(watch_database(store.clone(), stop.clone(), every));
        store.log_health().unwrap().fail();
        let stopped = tokio::time::timeout(std::time::Duration::from_secs(10), watch).await.unwrap().unwrap();
        assert!(matches!(stopped, Some(Stopped::LogFailed)), "{stopped:?}");
        assert!(stop.is_cancelled());
        store.close().await;
    }
}

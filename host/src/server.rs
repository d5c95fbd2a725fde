//! Assembles and runs the host: store, ingest writer, worker and HTTP server.
//!
//! Owns: start-up order and the graceful shutdown sequence. Must not: parse
//! flags or read the environment (see [`crate::settings`]).
//!
//! Shutdown, once `shutdown` is cancelled: stop accepting connections; let
//! in-flight requests finish (each waits for its event's commit); let the ingest
//! writer drain; let the worker finish its batch; close the pool. Anything
//! acknowledged is durable before its 2xx, so nothing acknowledged is lost even
//! when the grace period runs out or the process is killed.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::{self, AppState};
use crate::pipeline::actions::Decider;
use crate::pipeline::ingest::Ingest;
use crate::pipeline::worker::{Handler, Worker};
use crate::runtime::{InvocationLimits, Runtime};
use crate::settings::{Settings, env};
use crate::store::Store;
use crate::store::documents::{Documents, Limits};
use crate::store::inbox::{DEFAULT_TENANT, InboxWriter};

/// Runs the host on `listener` until `shutdown` is cancelled, then stops cleanly.
pub async fn run(settings: Settings, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    let store = Store::connect(&settings.database)
        .await
        .with_context(|| format!("failed to open the database {:?}", settings.database))?;
    info!(database = ?settings.database, backend = store.backend(), "database ready");
    if settings.workos.webhook_secret.is_none() {
        warn!(
            "{} is not set: POST /workos/webhook answers 503 until it is. Copy the secret from the WorkOS dashboard's webhook settings.",
            env::WEBHOOK_SECRET
        );
    }

    let handler = match &settings.handler.path {
        Some(path) => Some(load_handler(&settings, &store, path).await?),
        None => None,
    };

    let writer = InboxWriter::new(&store).context("failed to open the inbox writer")?;
    let stored = Arc::new(Notify::new());
    let (ingest, ingest_task) = Ingest::start(writer, stored.clone());
    let worker_stop = CancellationToken::new();
    let worker_task = if settings.worker.enabled {
        let worker = Worker::new(&store, settings.worker.clone(), handler.clone(), stored, Handle::current())
            .context("failed to open the worker's database connection")?;
        let stop = worker_stop.clone();
        Some(tokio::task::spawn_blocking(move || worker.run(stop)))
    } else {
        info!("worker disabled: events are stored and acknowledged but not applied by this process");
        None
    };

    if settings.workos.action_secret.is_none() {
        info!("{} is not set: POST /workos/action answers 503 until it is", env::ACTION_SECRET);
    }
    let db = store.sync_db(Handle::current()).context("failed to open the actions' database connection")?;
    let decider = Arc::new(Decider::new(store.clone(), db, handler, settings.actions.clone()));

    let grace = settings.shutdown_grace;
    let state = AppState { settings: Arc::new(settings), ingest, decider };
    let app = http::router(state);
    let addr = listener.local_addr().context("failed to read the listening address")?;
    info!(%addr, "authkit-host listening on http://{addr}");

    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    let serve_result = tokio::select! {
        result = server => result.context("the HTTP server failed"),
        () = async { shutdown.cancelled().await; tokio::time::sleep(grace).await } => {
            warn!(grace_secs = grace.as_secs(), "requests still running after the grace period; closing them");
            Ok(())
        }
    };
    info!("stopped accepting requests; finishing stored work");

    // Every `Ingest` clone lived in the router's connections: once they are gone the
    // writer drains and ends. Connections cut off by the grace period may linger a
    // moment; their events were not acknowledged, so WorkOS will redeliver them.
    match tokio::time::timeout(grace, ingest_task).await {
        Ok(joined) => joined.context("the ingest writer panicked")?,
        Err(_) => warn!("the ingest writer did not finish in time; unacknowledged events will be redelivered"),
    }
    worker_stop.cancel();
    if let Some(task) = worker_task {
        task.await.context("the worker panicked")?;
    }
    store.close().await;
    info!("shutdown complete");
    serve_result
}

/// Loads the `--handler` component and builds the indexes it declares, before
/// any event reaches it. A component that cannot load stops the start-up.
async fn load_handler(settings: &Settings, store: &Store, path: &std::path::Path) -> anyhow::Result<Handler> {
    let bytes = tokio::fs::read(path).await.with_context(|| format!("cannot read the handler {}", path.display()))?;
    let h = &settings.handler;
    let limits = InvocationLimits {
        event_deadline: h.event_deadline,
        action_deadline: settings.actions.deadline,
        memory_limit: h.memory_limit,
        max_calls: h.max_calls,
        documents: Limits { max_document_bytes: h.max_document_bytes, ..Limits::default() },
    };
    let db = store.sync_db(Handle::current()).context("failed to open a database connection for the handler")?;
    let path_text = path.display().to_string();
    let handler = tokio::task::spawn_blocking(move || -> anyhow::Result<Handler> {
        let runtime =
            Runtime::new(limits).map_err(|e| anyhow::anyhow!("failed to start the WebAssembly runtime: {e:#}"))?;
        let runtime = Arc::new(runtime);
        let module = runtime.load(&bytes).with_context(|| format!("the handler {path_text} cannot be used"))?;
        let mut tx = db.begin()?;
        Documents { tx: &mut tx, tenant: DEFAULT_TENANT, indexes: &module.indexes, limits: runtime.limits().documents }
            .sync_indexes()
            .context("failed to build the handler's indexes")?;
        tx.commit()?;
        Ok(Handler { runtime, module })
    })
    .await
    .context("the handler loader panicked")??;
    info!(handler = %path.display(), sha256 = %handler.module.hash, "handler loaded");
    Ok(handler)
}

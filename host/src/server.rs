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
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::http::{self, AppState};
use crate::pipeline::ingest::Ingest;
use crate::pipeline::worker::Worker;
use crate::settings::{Settings, env};
use crate::store::Store;
use crate::store::inbox::InboxWriter;

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

    let writer = InboxWriter::new(&store).context("failed to open the inbox writer")?;
    let stored = Arc::new(Notify::new());
    let (ingest, ingest_task) = Ingest::start(writer, stored.clone());
    let worker_stop = CancellationToken::new();
    let worker_task = if settings.worker.enabled {
        let worker = Worker::new(store.clone(), settings.worker.clone(), stored);
        Some(tokio::spawn(worker.run(worker_stop.clone())))
    } else {
        info!("worker disabled: events are stored and acknowledged but not applied by this process");
        None
    };

    let grace = settings.shutdown_grace;
    let state = AppState { settings: Arc::new(settings), ingest };
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

//! `authkit-host dev --watch handler.wasm`: the edit-build-run loop.
//!
//! Owns: watching one file (polled; a change counts once the file has stopped
//! changing for a moment, so a build still writing it is not read half-way) and
//! telling the developer what happened. Must not: validate or swap anything
//! itself: each new build goes through [`Deployment::upload`], like an upload
//! through the admin API, so a bad build is refused and the previous good
//! version stays live.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::deploy::Deployment;
use crate::runtime::ModuleLimits;

/// How often the file is looked at.
const POLL: Duration = Duration::from_millis(200);
/// How long the file must stay unchanged before it is read.
const SETTLE: Duration = Duration::from_millis(300);

/// Deploys `path` now and after every change, until `stop`.
pub async fn watch(deployment: Arc<Deployment>, path: PathBuf, limits: ModuleLimits, stop: CancellationToken) {
    println!("[dev] watching {}", path.display());
    let mut deployed: Option<(Option<SystemTime>, u64)> = None;
    let mut seen = stamp(&path);
    loop {
        if seen.is_some() && seen != deployed {
            // Wait for the writer to finish: the stamp must hold still for SETTLE.
            tokio::select! {
                () = tokio::time::sleep(SETTLE) => {}
                () = stop.cancelled() => return,
            }
            let now = stamp(&path);
            if now == seen {
                deploy(&deployment, &path, limits).await;
                deployed = seen;
            }
            seen = now;
            continue;
        }
        tokio::select! {
            () = tokio::time::sleep(POLL) => {}
            () = stop.cancelled() => return,
        }
        seen = stamp(&path);
    }
}

/// Modification time and length: what changes when a build rewrites the file.
fn stamp(path: &Path) -> Option<(Option<SystemTime>, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok(), meta.len()))
}

async fn deploy(deployment: &Arc<Deployment>, path: &Path, limits: ModuleLimits) {
    let bytes = match tokio::fs::read(path).await {
        Ok(bytes) => bytes,
        Err(e) => {
            println!("[dev] cannot read {}: {e}", path.display());
            return;
        }
    };
    let d = deployment.clone();
    let live = deployment.current().map(|l| l.version);
    match tokio::task::spawn_blocking(move || d.upload(&bytes, limits, true)).await {
        Ok(Ok(uploaded)) if !uploaded.created && live == Some(uploaded.info.version) => {
            println!("[dev] {} unchanged: version {} stays live", path.display(), uploaded.info.version);
        }
        Ok(Ok(uploaded)) => {
            let info = serde_json::to_value(&uploaded.info).unwrap_or_default();
            println!("[dev] version {} live: {}", uploaded.info.version, super::remote::describe(&info));
        }
        Ok(Err(e)) => {
            let keeps = live.map_or("no version is live".to_string(), |v| format!("version {v} stays live"));
            println!("[dev] refused {}: {e}; {keeps}", path.display());
        }
        Err(e) => println!("[dev] the deployment failed: {e}"),
    }
}

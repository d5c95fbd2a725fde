//! WASI sleeps that end at the invocation's deadline.
//!
//! A guest that sleeps (`wasi:clocks/monotonic-clock.subscribe-*` then
//! `pollable.block`) waits in the host, where the epoch deadline cannot stop it.
//! These replacements cap every sleep at the time the invocation has left (plus
//! a little), so the guest wakes up, runs, and meets its epoch trap.
//!
//! Owns: the monotonic clock guests see (`now` and both `subscribe` functions,
//! on one base instant). Must not: change what a guest that does not sleep past
//! its deadline observes.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi::p2::{DynPollable, Pollable, subscribe};

use super::Invocation;

/// The `wasi:clocks` version wasmtime-wasi defines; guests of any 0.2.x match it.
const MONOTONIC_CLOCK: &str = "wasi:clocks/monotonic-clock@0.2.12";

/// How long after the deadline a capped sleep ends.
const GRACE: Duration = Duration::from_millis(10);

/// The base of the guest's monotonic clock: nanoseconds since the first use.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

fn now_nanos() -> u64 {
    u64::try_from(base().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

struct Wake(tokio::time::Instant);

#[wasmtime_wasi::async_trait]
impl Pollable for Wake {
    async fn ready(&mut self) {
        tokio::time::sleep_until(self.0).await;
    }
}

fn sleep_for(inv: &mut Invocation, wanted: Duration) -> wasmtime::Result<Resource<DynPollable>> {
    let left = inv.deadline_at.saturating_duration_since(Instant::now()) + GRACE;
    let wake = tokio::time::Instant::now() + wanted.min(left);
    let resource = inv.table.push(Wake(wake))?;
    subscribe(&mut inv.table, resource)
}

/// Replaces the monotonic clock's `now`, `subscribe-instant` and `subscribe-duration`.
pub fn shadow(linker: &mut Linker<Invocation>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    let mut clock = linker.instance(MONOTONIC_CLOCK)?;
    clock.func_wrap("now", |_, (): ()| Ok((now_nanos(),)))?;
    clock.func_wrap("subscribe-duration", |mut cx, (nanos,): (u64,)| {
        Ok((sleep_for(cx.data_mut(), Duration::from_nanos(nanos))?,))
    })?;
    clock.func_wrap("subscribe-instant", |mut cx, (when,): (u64,)| {
        Ok((sleep_for(cx.data_mut(), Duration::from_nanos(when.saturating_sub(now_nanos())))?,))
    })?;
    linker.allow_shadowing(false);
    Ok(())
}

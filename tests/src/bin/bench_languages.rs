//! Languages benchmark: the reference handler built from Rust, JavaScript
//! (componentize-js) and Python (componentize-py), each measured in this run:
//! component size, cold compile, load from the compiled-code cache, the first
//! invocation (a fresh instance and one `events.handle` of a user.created,
//! after the host's own sync in the same transaction, as the worker does), the
//! next ones, the worker's steady drain rate of a user.created backlog, and
//! the guest's peak linear memory; and, for comparison only, calls on one
//! instance (what reusing instances, which the host does not, would cost).
//! Prints figures; asserts nothing.
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-languages -- [--events 2000]`
//! (the guests are built first if they are missing, as the tests do).

/// The allocator the `authkit-host` binary uses, so the in-process server measures the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use anyhow::Context;
use authkit_host::pipeline::sync;
use authkit_host::runtime::{DEFAULT_INSTANCE_SLOTS, GuestEvent, GuestUser, InvocationLimits, Runtime};
use authkit_host::settings::DatabaseUrl;
use authkit_host::store::Store;
use authkit_host::workos::event::Event;
use authkit_tests::bench::{drain, median, ms};
use authkit_tests::guests::{js_guest, python_guest, rust_guest};
use serde_json::json;

const USAGE: &str = "bench-languages [--events 2000]";

fn parse_events() -> anyhow::Result<u32> {
    let mut events = 2000;
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--events" => events = it.next().context("--events needs a value")?.parse()?,
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(events)
}

fn created(i: u32) -> GuestEvent {
    let id = format!("user_bench_{i}");
    let user = GuestUser {
        id: id.clone(),
        email: Some(format!("{id}@example.com")),
        email_verified: Some(true),
        first_name: Some("Bench".into()),
        last_name: Some("User".into()),
        name: Some("Bench User".into()),
        profile_picture_url: None,
        last_sign_in_at: None,
        locale: None,
        external_id: None,
        metadata: "{}".into(),
        created_at: Some("2025-01-01T00:00:00.000Z".into()),
        updated_at: Some("2025-01-01T00:00:00.000Z".into()),
    };
    GuestEvent {
        id: format!("event_bench_{i}"),
        event_type: "user.created".into(),
        data: json!({ "object": "user", "id": id }).to_string(),
        created_at: Some("2025-01-01T00:00:00.000Z".into()),
        user: Some(user),
        attempt: 1,
    }
}

/// The host's own sync of user `i`'s user.created, as the worker does before the handler.
fn sync_user(tx: &mut authkit_host::store::exec::SyncTx, i: u32) -> anyhow::Result<()> {
    let envelope = json!({ "object": "event", "id": format!("event_bench_{i}"), "event": "user.created",
        "data": { "object": "user", "id": format!("user_bench_{i}"), "email": "b@example.com",
                  "first_name": "Bench", "updated_at": "2025-01-01T00:00:00.000Z" },
        "created_at": "2025-01-01T00:00:00.000Z" });
    let parsed = Event::parse(envelope.to_string().as_bytes())?;
    sync::apply(tx, "default", &parsed, parsed.sync_action(), authkit_host::clock::now_ms())?;
    Ok(())
}

struct Row {
    name: &'static str,
    size: usize,
    cold: Duration,
    cached: Duration,
    first: Duration,
    next: Duration,
    /// A call on an instance that already exists (what reuse would cost).
    reused: Duration,
    drain: f64,
    peak: usize,
}

fn measure(
    rt: &tokio::runtime::Runtime,
    name: &'static str,
    path: std::path::PathBuf,
    events: u32,
) -> anyhow::Result<Row> {
    let bytes = std::fs::read(&path)?;
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let limits = InvocationLimits::default();
    let err = |e: wasmtime::Error| anyhow::anyhow!("{e:#}");

    // Cold: validation, compilation (stored in the cache), linking, the schema call.
    let runtime = Runtime::new(limits.clone(), DEFAULT_INSTANCE_SLOTS, Some(cache.clone())).map_err(err)?;
    let started = Instant::now();
    drop(runtime.load(&bytes)?);
    let cold = started.elapsed();
    drop(runtime);
    // Another host process starting: the same, from the cache.
    let runtime = Runtime::new(limits.clone(), DEFAULT_INSTANCE_SLOTS, Some(cache)).map_err(err)?;
    let started = Instant::now();
    let module = runtime.load(&bytes)?;
    let cached = started.elapsed();

    // Invocations in a real transaction; the first one is a fresh slot, cold caches.
    let url = format!("sqlite://{}", dir.path().join("calls.db").display());
    let store = rt.block_on(Store::connect(&DatabaseUrl::parse(&url)?))?;
    let db = store.sync_db(rt.handle().clone())?;
    let maintained = module.indexes.clone();
    let (mut times, mut peak) = (Vec::new(), 0);
    for i in 0..21 {
        let mut tx = db.begin()?;
        let event = created(i);
        sync_user(&mut tx, i)?;
        let started = Instant::now();
        let invoked = runtime.handle_event(&module, tx, "default", &limits, &maintained, &event);
        times.push(started.elapsed());
        invoked.result.with_context(|| format!("{name}: the call failed"))?;
        peak = peak.max(invoked.peak_memory);
        invoked.tx.context("the transaction")?.commit()?;
    }
    let first = times.remove(0);
    // For comparison only: calls on one instance, as reuse would make them.
    let mut tx = db.begin()?;
    for i in 100..121 {
        sync_user(&mut tx, i)?;
    }
    let more: Vec<GuestEvent> = (100..121).map(created).collect();
    let mut on_one = runtime.time_calls_on_one_instance(&module, tx, &limits, &more).map_err(err)?;
    on_one.remove(0);
    drop((module, runtime));
    let drain = drain(rt, events, None, Some(path))?;
    Ok(Row { name, size: bytes.len(), cold, cached, first, next: median(times), reused: median(on_one), drain, peak })
}

fn main() -> anyhow::Result<()> {
    let events = parse_events()?;
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let guests = [("Rust", rust_guest("user_data")), ("JavaScript", js_guest()), ("Python", python_guest())];
    let mut rows = Vec::new();
    for (name, path) in guests {
        rows.push(measure(&rt, name, path, events)?);
    }
    println!("the reference handler in each language (events, actions, my-todo-lists), measured in this run");
    println!(
        "{:<11} {:>10} {:>11} {:>11} {:>12} {:>11} {:>14} {:>14} {:>10}",
        "language", "size", "compile", "from cache", "first call", "next calls", "same instance", "drain", "peak mem"
    );
    for r in &rows {
        println!(
            "{:<11} {:>7.2} MB {:>8.0} ms {:>8.1} ms {:>9.2} ms {:>8.3} ms {:>11.3} ms {:>9.0} ev/s {:>6.1} MiB",
            r.name,
            r.size as f64 / 1e6,
            ms(r.cold),
            ms(r.cached),
            ms(r.first),
            ms(r.next),
            ms(r.reused),
            r.drain,
            r.peak as f64 / (1024.0 * 1024.0)
        );
    }
    println!(
        "(first call: a fresh instance and one events.handle of a user.created; next calls: the median of the next 20, \
         each on a fresh instance as the host runs them; same instance: the median of 20 calls on one instance, \
         which the host never does, to show what reuse would save; drain: the worker applying a {events}-event user.created backlog with the handler, end to end on SQLite)"
    );
    Ok(())
}

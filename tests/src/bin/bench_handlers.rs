//! Handler benchmarks. Prints figures; asserts nothing.
//!
//! Phases, all in this run on this machine:
//! 1. invoke: a fresh instance and one call of a handler that does nothing
//!    (`guest-examples/rust/noop`) through the host's runtime (sandbox, log,
//!    limits, a lent transaction), against the bare wasmtime lower bound: the
//!    same engine settings, a `Store` with nothing in it, `InstancePre`, one call.
//! 2. events: a backlog of user.created events drained by the worker on SQLite,
//!    without a handler (the host's own sync only) and with the User data example
//!    (about three document operations per event).
//! 3. lookup: `find` on a declared index in a table of 1,000 and of 1,000,000
//!    documents, with the log copied into the database file as a server's
//!    checkpointer does.
//! 4. actions: signed authentication requests at a steady 200/s over loopback,
//!    answered by the User data example (it reads the app's users table), against
//!    the no-handler path; two hosts, taking turns so noise falls on both alike.
//!    Every response's verdict is checked: a fallback would count as an error.
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-handlers -- [--only invoke,events,lookup,actions]
//! [--iterations 20000] [--events 10000] [--large 1000000] [--seconds 20] [--rate 200] [--database-url URL]`
//! The guests must be built (tests/run.sh or the README's bench command does it).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use authkit_host::runtime::bindings::exports::authkit::handler::events;
use authkit_host::runtime::{DEFAULT_INSTANCE_SLOTS, GuestEvent, InvocationLimits, Runtime};
use authkit_host::settings::{DatabaseUrl, Overrides, Settings};
use authkit_host::store::Store;
use authkit_host::store::documents::{Documents, Indexes, Limits};
use authkit_tests::bench::{Latencies, Probe, drain, interleaved, median};
use authkit_tests::guests::rust_guest;
use serde_json::json;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

struct Args {
    only: Option<Vec<String>>,
    iterations: u32,
    events: u32,
    large: u32,
    seconds: u64,
    rate: u64,
    database_url: Option<String>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|p| p == phase))
    }
}

const USAGE: &str = "bench-handlers [--only invoke,events,lookup,actions] [--iterations 20000] [--events 10000] [--large 1000000] [--seconds 20] [--rate 200] [--database-url URL]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args {
        only: None,
        iterations: 20_000,
        events: 10_000,
        large: 1_000_000,
        seconds: 20,
        rate: 200,
        database_url: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--only" => args.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--iterations" => args.iterations = value()?.parse()?,
            "--events" => args.events = value()?.parse()?,
            "--large" => args.large = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            "--rate" => args.rate = value()?.parse()?,
            "--database-url" => args.database_url = Some(value()?),
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("authkit-host handler benchmark, {cores} cores");
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    if args.runs("invoke") {
        invoke(&args, &rt)?;
    }
    if args.runs("events") {
        events_phase(&args, &rt)?;
    }
    if args.runs("lookup") {
        lookup(&args, &rt)?;
    }
    if args.runs("actions") {
        actions(&args, &rt)?;
    }
    Ok(())
}

fn sample_event() -> GuestEvent {
    GuestEvent {
        id: "event_bench".into(),
        event_type: "user.updated".into(),
        data: json!({"object": "user", "id": "user_1", "email": "a@example.com"}).to_string(),
        created_at: Some("2025-01-01T00:00:00.000Z".into()),
        user: None,
        attempt: 1,
    }
}

/// Phase 1: the host's invocation against wasmtime's bare lower bound.
fn invoke(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let bytes = std::fs::read(rust_guest("noop"))?;
    let event = sample_event();
    let n = args.iterations;

    // The bare lower bound: the host's engine settings, nothing in the store, no WASI.
    let config = authkit_host::runtime::engine_config(InvocationLimits::default().memory_limit, DEFAULT_INSTANCE_SLOTS);
    let engine = wasmtime::Engine::new(&config).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let component =
        wasmtime::component::Component::from_binary(&engine, &bytes).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let mut linker = wasmtime::component::Linker::<()>::new(&engine);
    linker.define_unknown_imports_as_traps(&component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let pre = linker.instantiate_pre(&component).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let indices = events::GuestIndices::new(&pre).map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let bare_once = || -> anyhow::Result<()> {
        let mut store = wasmtime::Store::new(&engine, ());
        store.set_epoch_deadline(1_000_000);
        let instance = pre.instantiate(&mut store).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        let guest = indices.load(&mut store, &instance).map_err(|e| anyhow::anyhow!("{e:#}"))?;
        guest.call_handle(&mut store, &event).map_err(|e| anyhow::anyhow!("{e:#}"))?.map_err(anyhow::Error::msg)
    };

    // The host's path: a sandboxed invocation with a transaction lent to it.
    let runtime = Runtime::new(InvocationLimits::default(), DEFAULT_INSTANCE_SLOTS, None)
        .map_err(|e| anyhow::anyhow!("{e:#}"))?;
    let module = runtime.load(&bytes)?;
    let maintained = module.indexes.clone();
    let dir = tempfile::tempdir()?;
    let url = format!("sqlite://{}", dir.path().join("invoke.db").display());
    let store = rt.block_on(Store::connect(&DatabaseUrl::parse(&url)?))?;
    let db = store.sync_db(rt.handle().clone())?;
    let mut tx = Some(db.begin()?);
    let mut host_once = || -> anyhow::Result<()> {
        let invoked =
            runtime.handle_event(&module, tx.take().unwrap(), "default", runtime.limits(), &maintained, &event);
        tx = invoked.tx;
        invoked.result.map_err(anyhow::Error::from)
    };

    // Warm up both, then alternate rounds so machine noise hits both alike.
    for _ in 0..1000 {
        bare_once()?;
        host_once()?;
    }
    let (mut bare, mut host) = (Duration::ZERO, Duration::ZERO);
    let rounds = 10;
    for _ in 0..rounds {
        let t = Instant::now();
        for _ in 0..n / rounds {
            bare_once()?;
        }
        bare += t.elapsed();
        let t = Instant::now();
        for _ in 0..n / rounds {
            host_once()?;
        }
        host += t.elapsed();
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / f64::from(n / rounds * rounds);
    println!("\ninvocation overhead ({} calls each, {} bytes component)", n / rounds * rounds, bytes.len());
    println!("  bare wasmtime: fresh instance from InstancePre + one call   {:>8.2} us", per(bare));
    println!("  authkit-host: sandboxed invocation (WASI, log, limits, tx)  {:>8.2} us", per(host));
    let ratio = per(host) / per(bare);
    println!("  ratio {ratio:.2}x (target <= 1.5x: {})", if ratio <= 1.5 { "met" } else { "NOT met" });

    // For scale: the User data example deciding a sign-in (one indexed find).
    let example = runtime.load(&std::fs::read(rust_guest("user_data"))?)?;
    let action =
        authkit_host::runtime::GuestAction::Authenticate(Box::new(authkit_host::runtime::GuestAuthentication {
            id: "act_bench".into(),
            user: authkit_host::pipeline::guest_user(serde_json::from_value(json!({"id": "user_1"}))?),
            organization: None,
            membership: None,
            client: authkit_host::runtime::GuestClient {
                ip_address: None,
                user_agent: None,
                device_fingerprint: None,
                authentication_method: None,
            },
            raw: "{}".into(),
        }));
    let mut decide = || -> anyhow::Result<()> {
        let invoked =
            runtime.handle_action(&example, tx.take().unwrap(), "default", runtime.limits(), &example.indexes, &action);
        tx = invoked.tx;
        invoked.result.map(drop).map_err(anyhow::Error::from)
    };
    for _ in 0..200 {
        decide()?;
    }
    let t = Instant::now();
    for _ in 0..n / rounds {
        decide()?;
    }
    println!(
        "  the User data example's authenticate (one find), back to back    {:>8.2} us",
        t.elapsed().as_secs_f64() * 1e6 / f64::from(n / rounds)
    );
    Ok(())
}

/// Phase 2: a backlog of user.created events drained by the worker.
fn events_phase(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    println!(
        "\nworker drain of a {}-event user.created backlog (timed from the first committed batch to empty)",
        args.events
    );
    let without = drain(rt, args.events, args.database_url.clone(), None)?;
    println!("  host sync only, no handler                    {without:>8.0} events/s");
    let with = drain(rt, args.events, args.database_url.clone(), Some(rust_guest("user_data")))?;
    println!(
        "  with the User data example handler            {with:>8.0} events/s (target >= 5,000: {})",
        if with >= 5000.0 { "met" } else { "NOT met" }
    );
    Ok(())
}

/// Waits until the SQLite log at `url` is all copied into the database file
/// (checking with PASSIVE checkpoints, which copy what they can, as the
/// server's checkpointer does).
async fn log_copied(url: &str) -> anyhow::Result<()> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_busy, log, copied): (i64, i64, i64) =
            sqlx::query_as("PRAGMA wal_checkpoint(PASSIVE)").fetch_one(&mut conn).await?;
        if log == copied {
            break;
        }
        if Instant::now() > deadline {
            bail!("the log was not copied into the database file within 60 s ({copied} of {log} pages)");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    conn.close().await?;
    Ok(())
}

/// Phase 3: indexed lookups in a small and a large table.
fn lookup(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url =
        args.database_url.clone().unwrap_or_else(|| format!("sqlite://{}", dir.path().join("lookup.db").display()));
    let store = rt.block_on(Store::connect(&DatabaseUrl::parse(&url)?))?;
    // As in a running server, the log is copied into the database file as it grows.
    let _checkpointer = store.start_checkpointer()?;
    let db = store.sync_db(rt.handle().clone())?;
    let indexes = Indexes::new([("small".to_string(), "k".to_string()), ("large".to_string(), "k".to_string())])
        .map_err(anyhow::Error::msg)?;
    let tenant = "default".to_string();
    // Store the declarations, as deploying a handler that declares them does,
    // and look up once, as a server's handlers do from its start: the tables
    // then grow under a connection that has already read the file.
    if url.starts_with("sqlite:") {
        rt.block_on(log_copied(&url))?;
    }
    let mut tx = db.begin()?;
    let mut docs = Documents { tx: &mut tx, tenant: &tenant, indexes: &indexes, limits: Limits::default() };
    docs.sync_indexes()?;
    docs.find("small", "k", "\"none\"", 1, None)?;
    tx.commit()?;
    let fill = |db: &authkit_host::store::exec::SyncDb, table: &str, n: u32| -> anyhow::Result<()> {
        let mut i = 0;
        while i < n {
            let mut tx = db.begin()?;
            let mut docs = Documents { tx: &mut tx, tenant: &tenant, indexes: &indexes, limits: Limits::default() };
            for _ in 0..10_000.min(n - i) {
                docs.insert(table, &json!({"k": format!("{table}_{i}"), "v": i}).to_string())?;
                i += 1;
            }
            tx.commit()?;
        }
        Ok(())
    };
    println!("\nindexed lookup (find on a declared index, one match)");
    let t = Instant::now();
    fill(&db, "small", 1000)?;
    fill(&db, "large", args.large)?;
    println!("  filled 1,000 + {} documents in {:.1}s", args.large, t.elapsed().as_secs_f64());
    // Let the checkpointer catch up with the fill, as it would between a server's
    // bursts: until the whole log is in the database file, readers take the pages
    // the fill changed last (the B-trees' upper levels among them) from the log,
    // a read each, instead of from the memory-mapped file.
    if url.starts_with("sqlite:") {
        rt.block_on(log_copied(&url))?;
    }
    let measure = |db: &authkit_host::store::exec::SyncDb, table: &str, n: u32| -> anyhow::Result<f64> {
        let mut tx = db.begin()?;
        let mut docs = Documents { tx: &mut tx, tenant: &tenant, indexes: &indexes, limits: Limits::default() };
        let lookups = 10_000u32;
        let t = Instant::now();
        for j in 0..lookups {
            let key = json!(format!("{table}_{}", (j.wrapping_mul(2_654_435_761)) % n)).to_string();
            let page = docs.find(table, "k", &key, 10, None)?;
            assert_eq!(page.documents.len(), 1);
        }
        Ok(t.elapsed().as_secs_f64() * 1e6 / f64::from(lookups))
    };
    // Alternate rounds so noise hits both alike; report each table's median round.
    let (mut small, mut large) = (Vec::new(), Vec::new());
    for _ in 0..7 {
        small.push(measure(&db, "small", 1000)?);
        large.push(measure(&db, "large", args.large)?);
    }
    let (small, large) = (median(small), median(large));
    println!("  1,000 documents        {small:>8.2} us per find");
    println!("  {:<22} {large:>8.2} us per find", format!("{} documents", args.large));
    let ratio = large / small;
    println!("  ratio {ratio:.2}x (target <= 2x: {})", if ratio <= 2.0 { "met" } else { "NOT met" });
    Ok(())
}

const ACTION_SECRET: &str = "sk_action_bench";

/// Phase 4: Actions latency at a steady rate, without and with a handler: two
/// hosts, taking turns of a few seconds each (see [`interleaved`]).
fn actions(args: &Args, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    println!(
        "\nactions: signed authentication requests at {}/s for {}s per path over loopback (open loop, \
         the paths taking {ACTION_SLICES} turns each)",
        args.rate, args.seconds
    );
    println!("  {:<44} {:>9} {:>9} {:>9} {:>7}", "path", "p50 ms", "p99 ms", "max ms", "errors");
    let base_host = ActionHost::start(args, rt, None)?;
    let handler_host = ActionHost::start(args, rt, Some(rust_guest("user_data")))?;
    let figures = {
        let (mut base_path, mut handler_path) = (base_host.requests(), handler_host.requests());
        rt.block_on(interleaved(args.rate, args.seconds, ACTION_SLICES, &mut [&mut base_path, &mut handler_path]))
    };
    base_host.stop(rt)?;
    handler_host.stop(rt)?;
    let [base, with] = <[Latencies; 2]>::try_from(figures?).map_err(|_| anyhow::anyhow!("two paths, two figures"))?;
    base.print("no handler (the configured no-handler verdict)");
    with.print("User data example (reads the app's users table)");
    let ratio = with.p50 / base.p50;
    println!(
        "  handler p50 / baseline p50 = {ratio:.2}x (target <= 2x: {}); handler p99 {:.2} ms (target < 5 ms: {})",
        if ratio <= 2.0 { "met" } else { "NOT met" },
        with.p99,
        if with.p99 < 5.0 { "met" } else { "NOT met" }
    );
    if base.errors + with.errors > 0 {
        bail!("some requests failed or got another verdict than the path should give; the figures above are not valid");
    }
    Ok(())
}

/// Turns each Actions path takes in the measured time.
const ACTION_SLICES: u64 = 10;

/// The verdict the path must give for the `i`th request: without a handler the
/// no-handler verdict (allow); with the example, deny for the banned tenth of
/// the users and allow for the rest (the fallback, deny, would fail the others).
fn expected_verdict(handler: bool, i: u64) -> String {
    let verdict = if handler && (i % 1000).is_multiple_of(10) { "Deny" } else { "Allow" };
    format!("\"verdict\":\"{verdict}\"")
}

/// A host in this process answering Actions, on its own SQLite file (or
/// `--database-url`) holding an app users table of 1,000.
struct ActionHost {
    addr: std::net::SocketAddr,
    handler: bool,
    stop: CancellationToken,
    server: tokio::task::JoinHandle<anyhow::Result<()>>,
    client: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl ActionHost {
    fn start(
        args: &Args,
        rt: &tokio::runtime::Runtime,
        handler: Option<std::path::PathBuf>,
    ) -> anyhow::Result<ActionHost> {
        let dir = tempfile::tempdir()?;
        let url = args
            .database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join("actions.db").display()));
        let store = rt.block_on(Store::connect(&DatabaseUrl::parse(&url)?))?;
        // An app users table of 1,000 (indexed by authId, as the example declares),
        // its documents as the example writes them.
        let db = store.sync_db(rt.handle().clone())?;
        let indexes = Indexes::new([("users".to_string(), "authId".to_string())]).map_err(anyhow::Error::msg)?;
        let mut tx = db.begin()?;
        let mut docs = Documents { tx: &mut tx, tenant: "default", indexes: &indexes, limits: Limits::default() };
        docs.sync_indexes()?;
        for i in 0..1000 {
            let mut doc = json!({"authId": format!("user_{i}"), "email": format!("u{i}@example.com"), "name": format!("User {i}")});
            if i % 10 == 0 {
                doc["banned"] = json!(true);
            }
            docs.insert("users", &doc.to_string())?;
        }
        tx.commit()?;
        let has_handler = handler.is_some();
        let overrides = Overrides { database_url: Some(url), handler, no_worker: true, ..Default::default() };
        let settings =
            Settings::load_with(&overrides, |k| (k == "WORKOS_ACTION_SECRET").then(|| ACTION_SECRET.to_string()))?;
        let stop = CancellationToken::new();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
        let addr = listener.local_addr()?;
        let server = rt.spawn({
            let stop = stop.clone();
            async move { authkit_host::run(settings, listener, stop).await }
        });
        Ok(ActionHost { addr, handler: has_handler, stop, server, client: reqwest::Client::new(), _dir: dir })
    }

    /// The `i`th signed authentication request, for one of the 1,000 users.
    fn requests(&self) -> impl FnMut(u64) -> anyhow::Result<Probe> + '_ {
        let url = format!("http://{}/workos/action", self.addr);
        let signer = authkit_tests::Emulator::new(ACTION_SECRET);
        move |i| {
            let user =
                serde_json::json!({"object": "user", "id": format!("user_{}", i % 1000), "email": "u@example.com"});
            let body = serde_json::to_vec(&json!({
                "object": "authentication_action_context", "id": format!("act_{i}"), "user": user,
                "ip_address": "127.0.0.1", "user_agent": "bench",
            }))?;
            let signature = signer.signature(authkit_tests::workos::now_ms(), &body);
            Ok((
                self.client.post(&url).header("WorkOS-Signature", signature).body(body),
                Some(expected_verdict(self.handler, i)),
            ))
        }
    }

    fn stop(self, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
        self.stop.cancel();
        rt.block_on(self.server)?
    }
}

//! Ingest benchmark: signed `user.updated` webhooks over loopback HTTP, each
//! acknowledged only after durable storage, at a fixed number of concurrent
//! keep-alive connections. Prints figures; asserts nothing.
//!
//! Phases, all in this run on this machine:
//! 1. baseline: a plain axum route that answers 200 and does nothing, sent
//!    the same signed requests as the host;
//! 2. ingest: authkit-host with its worker off (pure verify + durable store);
//! 3. apply: the worker draining phase 2's backlog (users-table apply rate);
//! 4. ingest with the worker running at the same time.
//!
//! Phases 1 and 2 take turns (`--rounds`, 3 by default), and the ratio printed
//! is the median of each round's ingest rate over the baseline measured just
//! before it: the machine is shared, and its speed drifts within a minute.
//! Phases 3 and 4 use the last round's database.
//!
//! Each load phase also prints the CPU time the whole process (server and load
//! generator together) spent per request over its measured seconds. It moves
//! less with the machine's noise than the rates do, so it shows whether a
//! change made a request cheaper even when the ratio cannot tell; and the
//! baseline's figure over ingest's is the ratio the two rates would have if
//! both used every core.
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-ingest -- [--seconds 5]
//! [--warmup 1] [--rounds 3] [--connections 64] [--users 10000] [--database-url URL]
//! [--only baseline,ingest,apply,mixed]`
//! (default database: a fresh SQLite file in a temporary directory).

/// The allocator the `authkit-host` binary uses, so the in-process server measures the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use authkit_host::settings::{Overrides, Settings};
use authkit_host::store::Store;
use authkit_host::workos::signature::{Secret, header_value};
use authkit_tests::bench::{median, process_cpu_seconds};
use axum::body::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

const SECRET: &str = "whsec_bench";

struct Args {
    seconds: u64,
    warmup: u64,
    rounds: usize,
    connections: usize,
    users: u64,
    database_url: Option<String>,
    /// Phases to run (baseline, ingest, apply, mixed); all by default.
    only: Option<Vec<String>>,
}

impl Args {
    fn runs(&self, phase: &str) -> bool {
        self.only.as_ref().is_none_or(|only| only.iter().any(|p| p == phase))
    }
}

const USAGE: &str = "bench-ingest [--seconds 5] [--warmup 1] [--rounds 3] [--connections 64] [--users 10000] [--database-url URL] [--only baseline,ingest,apply,mixed]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args =
        Args { seconds: 5, warmup: 1, rounds: 3, connections: 64, users: 10_000, database_url: None, only: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--seconds" => args.seconds = value()?.parse()?,
            "--warmup" => args.warmup = value()?.parse()?,
            "--rounds" => args.rounds = value()?.parse::<usize>()?.max(1),
            "--connections" => args.connections = value()?.parse()?,
            "--users" => args.users = value()?.parse()?,
            "--database-url" => args.database_url = Some(value()?),
            "--only" => args.only = Some(value()?.split(',').map(str::to_string).collect()),
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(args)
}

/// Figures of one load phase.
struct Figures {
    requests: u64,
    seconds: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// CPU seconds the process used over the measured seconds, if Linux's
    /// `/proc/self/stat` could be read.
    cpu_seconds: Option<f64>,
}

impl Figures {
    fn rate(&self) -> f64 {
        self.requests as f64 / self.seconds
    }

    /// CPU microseconds per request answered in the measured seconds.
    fn cpu_us_per_request(&self) -> Option<f64> {
        self.cpu_seconds.filter(|_| self.requests > 0).map(|cpu| cpu * 1e6 / self.requests as f64)
    }
}

/// A server running on its own runtime in its own thread.
struct Running {
    addr: SocketAddr,
    stop: CancellationToken,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Running {
    fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.thread.join().map_err(|_| anyhow::anyhow!("server thread panicked"))?
    }
}

fn server_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn start_baseline() -> anyhow::Result<Running> {
    let rt = server_runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let thread = std::thread::spawn(move || {
        rt.block_on(async move {
            let app = axum::Router::new()
                .route("/workos/webhook", axum::routing::post(|| async { axum::http::StatusCode::OK }));
            axum::serve(listener, app).with_graceful_shutdown(token.cancelled_owned()).await?;
            Ok(())
        })
    });
    Ok(Running { addr, stop, thread })
}

fn start_host(database_url: &str, worker: bool) -> anyhow::Result<Running> {
    let overrides =
        Overrides { database_url: Some(database_url.to_string()), no_worker: !worker, ..Default::default() };
    let settings = Settings::load_with(&overrides, |k| (k == "WORKOS_WEBHOOK_SECRET").then(|| SECRET.to_string()))?;
    let rt = server_runtime();
    let listener = rt.block_on(TcpListener::bind("127.0.0.1:0"))?;
    let addr = listener.local_addr()?;
    let stop = CancellationToken::new();
    let token = stop.clone();
    let thread = std::thread::spawn(move || rt.block_on(authkit_host::run(settings, listener, token)));
    Ok(Running { addr, stop, thread })
}

fn event_body(run: &str, i: u64, users: u64) -> Vec<u8> {
    let user = i % users;
    // Later events carry later times, so every update applies.
    let secs = 1_735_689_600 + i / 1000;
    let ms = i % 1000;
    let at = format!("{}.{ms:03}Z", time_text(secs));
    format!(
        r#"{{"object":"event","id":"event_{run}_{i:012}","event":"user.updated","data":{{"object":"user","id":"user_{user:08}","email":"user{user}@example.com","email_verified":true,"first_name":"Bench","last_name":"User {user}","name":"Bench User {user}","profile_picture_url":"https://example.com/p/{user}.jpg","last_sign_in_at":"{at}","locale":"en-US","external_id":"ext_{user}","metadata":{{"plan":"pro","seq":"{i}"}},"created_at":"2025-01-01T00:00:00.000Z","updated_at":"{at}"}},"created_at":"{at}","context":{{"client_id":"client_bench"}}}}"#
    )
    .into_bytes()
}

/// `YYYY-MM-DDTHH:MM:SS` for unix seconds (UTC).
fn time_text(secs: u64) -> String {
    let at = time::OffsetDateTime::from_unix_timestamp(secs as i64).unwrap();
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

/// Drives `connections` keep-alive connections for warm-up + measured time.
fn load(addr: SocketAddr, args: &Args, run: &str) -> anyhow::Result<Figures> {
    let run: Arc<str> = run.into();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let next = Arc::new(AtomicU64::new(0));
        let start = Instant::now();
        let measure_from = start + Duration::from_secs(args.warmup);
        let end = measure_from + Duration::from_secs(args.seconds);
        let secret = Secret::new(SECRET).unwrap();
        // The process's CPU time over exactly the measured seconds.
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(measure_from.into()).await;
            let from = process_cpu_seconds();
            tokio::time::sleep_until(end.into()).await;
            Some(process_cpu_seconds()? - from?)
        });
        let mut tasks = Vec::new();
        for _ in 0..args.connections {
            let (next, secret, users, run) = (next.clone(), secret.clone(), args.users, run.clone());
            tasks.push(tokio::spawn(async move {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let (mut latencies, mut errors) = (Vec::new(), 0u64);
                while Instant::now() < end {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let body = event_body(&run, i, users);
                    // The baseline gets the same signed requests: the two phases
                    // differ only in the server that answers them.
                    let now_ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis() as i64;
                    let req = hyper::Request::post("/workos/webhook")
                        .header("host", "bench")
                        .header("content-type", "application/json")
                        .header("workos-signature", header_value(&secret, now_ms, &body))
                        .body(Full::new(Bytes::from(body)))?;
                    sender.ready().await?;
                    let sent = Instant::now();
                    let resp = sender.send_request(req).await?;
                    let ok = resp.status().is_success();
                    resp.into_body().collect().await?;
                    if !ok {
                        errors += 1;
                    } else if sent >= measure_from {
                        latencies.push(sent.elapsed().as_micros() as u32);
                    }
                }
                anyhow::Ok((latencies, errors))
            }));
        }
        let mut all = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (latencies, e) = task.await??;
            all.extend(latencies);
            errors += e;
        }
        all.sort_unstable();
        let pct = |p: f64| {
            all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0) as f64
                / 1000.0
        };
        Ok(Figures {
            requests: all.len() as u64,
            seconds: args.seconds as f64,
            p50_ms: pct(0.50),
            p99_ms: pct(0.99),
            errors,
            cpu_seconds: cpu.await?,
        })
    })
}

fn print_row(round: &str, name: &str, f: &Figures) {
    let cpu = f.cpu_us_per_request().map_or_else(|| "-".to_string(), |us| format!("{us:.1}"));
    println!("{round:>5}  {name:<44} {:>10.0} {:>9.2} {:>9.2} {:>7} {cpu:>12}", f.rate(), f.p50_ms, f.p99_ms, f.errors);
}

fn unfinished(database_url: &str) -> anyhow::Result<i64> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let store = Store::connect(&authkit_host::settings::DatabaseUrl::parse(database_url)?).await?;
        let n = store.count_unfinished().await?;
        store.close().await;
        Ok(n)
    })
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    // Each round ingests into a fresh file, so every round measures the same
    // work, and the apply phase drains one round's backlog. A database given
    // with --database-url keeps every round's events.
    let database_for = |round: usize| {
        args.database_url
            .clone()
            .unwrap_or_else(|| format!("sqlite://{}", dir.path().join(format!("bench-{round}.db")).display()))
    };
    let database_url = database_for(args.rounds);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "authkit-host ingest benchmark: {} connections, {}s warm-up + {}s measured per phase, {} distinct users, {cores} cores, database {}",
        args.connections,
        args.warmup,
        args.seconds,
        args.users,
        if args.database_url.is_some() {
            "as given"
        } else {
            "SQLite (fresh file, WAL, synced before each acknowledgement)"
        }
    );
    println!(
        "{:>5}  {:<44} {:>10} {:>9} {:>9} {:>7} {:>12}",
        "round", "phase", "req/s", "p50 ms", "p99 ms", "errors", "cpu µs/req"
    );

    let (mut ratios, mut ingest_rates, mut cpu_pairs) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=args.rounds {
        let mut base = None;
        if args.runs("baseline") {
            let baseline = start_baseline()?;
            let figures = load(baseline.addr, &args, &format!("baseline{round}"))?;
            baseline.stop()?;
            print_row(&round.to_string(), "baseline: plain axum route, 200, no work", &figures);
            base = Some(figures);
        }
        if args.runs("ingest") {
            let host = start_host(&database_for(round), false)?;
            let figures = load(host.addr, &args, &format!("ingest{round}"))?;
            host.stop()?;
            print_row(&round.to_string(), "ingest, acknowledged after commit (no worker)", &figures);
            ingest_rates.push(figures.rate());
            if let Some(base) = base {
                ratios.push(figures.rate() / base.rate());
                if let (Some(base_cpu), Some(cpu)) = (base.cpu_us_per_request(), figures.cpu_us_per_request()) {
                    cpu_pairs.push((base_cpu, cpu));
                }
            }
        }
    }
    let mut apply = None;
    if args.runs("apply") {
        let backlog = unfinished(&database_url)?;
        let started = Instant::now();
        let host = start_host(&database_url, true)?;
        while unfinished(&database_url)? > 0 {
            std::thread::sleep(Duration::from_millis(50));
        }
        apply = Some((backlog, started.elapsed().as_secs_f64()));
        host.stop()?;
    }
    if args.runs("mixed") {
        let host = start_host(&database_url, true)?;
        let mixed = load(host.addr, &args, "mixed")?;
        host.stop()?;
        print_row("-", "ingest with the worker applying concurrently", &mixed);
    }

    println!();
    if let Some((backlog, drain)) = apply {
        println!(
            "worker apply rate: {backlog} user.updated events applied to the users table in {drain:.2}s = {:.0} events/s",
            backlog as f64 / drain
        );
    }
    if !ratios.is_empty() {
        let each: Vec<String> = ratios.iter().map(|r| format!("{:.1}%", r * 100.0)).collect();
        let ratio = median(ratios);
        println!(
            "ingest / baseline by round: {}; median {:.1}% (target >= 40%: {})",
            each.join(", "),
            ratio * 100.0,
            if ratio >= 0.4 { "met" } else { "NOT met" }
        );
    }
    if !cpu_pairs.is_empty() {
        let base = median(cpu_pairs.iter().map(|(b, _)| *b).collect());
        let ingest = median(cpu_pairs.iter().map(|(_, i)| *i).collect());
        println!(
            "CPU per request, whole process, median of the rounds: baseline {base:.1} µs, ingest {ingest:.1} µs \
             ({:.1}%: the ratio if both were bound by the CPU alone)",
            100.0 * base / ingest
        );
    }
    if !ingest_rates.is_empty() {
        let rate = median(ingest_rates);
        println!(
            "ingest rate, median of the rounds: {rate:.0}/s (target >= 10,000/s: {})",
            if rate >= 10_000.0 { "met" } else { "NOT met" }
        );
    }
    Ok(())
}

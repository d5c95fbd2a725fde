//! Handler version benchmarks. Prints figures; asserts nothing.
//!
//! Phases, all in this run on this machine, against the host running in this
//! process on loopback with SQLite:
//! 1. upload: time from `POST /admin/modules?activate=true` to its answer (the
//!    version is live when it returns) for the User data example, for the
//!    same example padded to about 10 MB with a custom section (size without
//!    code), and for the example plus about 10 MB of generated code in a core
//!    module (size that is code), cold (empty compiled-code cache) and warm (a
//!    fresh database, the same cache).
//! 2. startup: time from start to the first answered request with 100 stored
//!    versions (the active one from the cache), beside an empty database.
//! 3. swap: latency of signed Actions requests (200/s) and webhooks (100/s) for
//!    10 s, without swaps and with a version activated every 100 ms.
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-modules -- [--only upload,startup,swap]
//! [--rounds 3] [--versions 100] [--seconds 10]`. The guests must be built
//! (tests/run.sh or the README's bench command does it).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use authkit_tests::bench::{ACTION_SECRET, Host, TOKEN, WEBHOOK_SECRET, leb128, median, ms, padded};
use authkit_tests::guests::rust_guest;
use authkit_tests::workos::now_ms;
use serde_json::json;
use tokio::task::JoinHandle;

/// Part of the default fallback verdict's message.
const FALLBACK: &str = "temporarily unavailable";

struct Args {
    only: Option<Vec<String>>,
    rounds: usize,
    versions: u32,
    seconds: u64,
}

const USAGE: &str = "bench-modules [--only upload,startup,swap] [--rounds 3] [--versions 100] [--seconds 10]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { only: None, rounds: 3, versions: 100, seconds: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--only" => args.only = Some(value()?.split(',').map(str::to_string).collect()),
            "--rounds" => args.rounds = value()?.parse()?,
            "--versions" => args.versions = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(args)
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let runs = |phase: &str| args.only.as_ref().is_none_or(|o| o.iter().any(|p| p == phase));
    rt.block_on(async {
        if runs("upload") {
            upload_phase(&args).await?;
        }
        if runs("startup") {
            startup_phase(&args).await?;
        }
        if runs("swap") {
            swap_phase(&args).await?;
        }
        anyhow::Ok(())
    })
}

/// Appends a core module of generated code (functions of integer arithmetic)
/// so the component is about `size` bytes, most of it code wasmtime compiles:
/// a stand-in for a large guest such as an interpreter. The module is never
/// instantiated; wasmtime compiles every module a component contains.
fn with_code(bytes: &[u8], size: usize) -> Vec<u8> {
    const BODY_OPS: usize = 90;
    let mut body = vec![0]; // no locals
    body.extend([0x20, 0]); // local.get 0
    for i in 0..BODY_OPS as i64 {
        for (op, c) in [(0x6a, i * 7919 + 1), (0x6c, i | 3), (0x73, i * 104_729)] {
            body.push(0x41); // i32.const
            body.extend(sleb128(c));
            body.push(op); // i32.add / i32.mul / i32.xor
        }
    }
    body.push(0x0b); // end
    let functions = size.saturating_sub(bytes.len()) / (body.len() + 3);
    let mut code = leb128(functions as u64);
    for _ in 0..functions {
        code.extend(leb128(body.len() as u64));
        code.extend(&body);
    }
    let mut module = b"\0asm\x01\0\0\0".to_vec();
    section(&mut module, 1, &[1, 0x60, 1, 0x7f, 1, 0x7f]); // one type: (i32) -> i32
    let mut funcs = leb128(functions as u64);
    funcs.extend(std::iter::repeat_n(0u8, functions));
    section(&mut module, 3, &funcs);
    section(&mut module, 10, &code);
    let mut out = bytes.to_vec();
    section(&mut out, 1, &module); // a component's core module section
    out
}

fn section(out: &mut Vec<u8>, id: u8, payload: &[u8]) {
    out.push(id);
    out.extend(leb128(payload.len() as u64));
    out.extend_from_slice(payload);
}

fn sleb128(mut n: i64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        let done = (n == 0 && byte & 0x40 == 0) || (n == -1 && byte & 0x40 != 0);
        out.push(if done { byte } else { byte | 0x80 });
        if done {
            return out;
        }
    }
}

/// The hostile fixture stamped with version `n` (see its `VERSION`).
fn stamped(bytes: &[u8], n: u32) -> Vec<u8> {
    let from = b"authkit-test-version:000";
    let to = format!("authkit-test-version:{:03}", n % 1000);
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the version stamp");
    let mut out = bytes.to_vec();
    out[at..at + from.len()].copy_from_slice(to.as_bytes());
    out
}

async fn upload_phase(args: &Args) -> anyhow::Result<()> {
    let example = std::fs::read(rust_guest("user_data"))?;
    let large = padded(&example, 10 * 1024 * 1024 - example.len());
    let code = with_code(&example, 10 * 1024 * 1024);
    let mut times: [Vec<Duration>; 6] = Default::default();
    for _ in 0..args.rounds {
        let dir = tempfile::tempdir()?;
        let cache = dir.path().join("cache");
        let (host, _) = Host::start(&dir.path().join("cold.db"), &cache).await?;
        times[0].push(host.upload(example.clone(), true).await?);
        times[1].push(host.upload(large.clone(), true).await?);
        times[4].push(host.upload(code.clone(), true).await?);
        host.stop().await?;
        let (host, _) = Host::start(&dir.path().join("warm.db"), &cache).await?;
        times[2].push(host.upload(example.clone(), true).await?);
        times[3].push(host.upload(large.clone(), true).await?);
        times[5].push(host.upload(code.clone(), true).await?);
        host.stop().await?;
    }
    println!("\nupload to live (POST /admin/modules?activate=true until it answers; median of {} rounds)", args.rounds);
    println!("  {:<62} {:>10} {:>10}", "component", "cold ms", "warm ms");
    println!(
        "  {:<62} {:>10.1} {:>10.1}",
        format!("User data example ({} KB)", example.len() / 1024),
        ms(median(times[0].clone())),
        ms(median(times[2].clone()))
    );
    println!(
        "  {:<62} {:>10.1} {:>10.1}",
        format!("the same padded to {:.1} MB (a custom section; same code)", large.len() as f64 / 1048576.0),
        ms(median(times[1].clone())),
        ms(median(times[3].clone()))
    );
    println!(
        "  {:<62} {:>10.1} {:>10.1}",
        format!(
            "the same plus {:.1} MB of generated code in a core module",
            (code.len() - example.len()) as f64 / 1048576.0
        ),
        ms(median(times[4].clone())),
        ms(median(times[5].clone()))
    );
    println!("  cold: compiled (empty cache); warm: a fresh database, the compiled code from the cache");
    Ok(())
}

async fn startup_phase(args: &Args) -> anyhow::Result<()> {
    let hostile = std::fs::read(rust_guest("hostile"))?;
    let dir = tempfile::tempdir()?;
    let cache = dir.path().join("cache");
    let full = dir.path().join("versions.db");
    let (host, _) = Host::start(&full, &cache).await?;
    let filled = Instant::now();
    for n in 1..=args.versions {
        host.upload(stamped(&hostile, n), n == args.versions).await?;
    }
    let fill = filled.elapsed();
    host.stop().await?;
    let (mut empty_times, mut full_times) = (Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let (host, took) = Host::start(&dir.path().join(format!("empty{round}.db")), &cache).await?;
        empty_times.push(took);
        host.stop().await?;
        let (host, took) = Host::start(&full, &cache).await?;
        full_times.push(took);
        host.stop().await?;
    }
    println!("\nstart-up until the first answered request (median of {} rounds)", args.rounds);
    println!("  empty database (baseline)                                  {:>10.1} ms", ms(median(empty_times)));
    println!(
        "  {} stored versions ({} KB each), the active one from the cache {:>7.1} ms",
        args.versions,
        hostile.len() / 1024,
        ms(median(full_times))
    );
    println!(
        "  (storing the {} versions took {:.1} s: {:.0} ms each, compile included)",
        args.versions,
        fill.as_secs_f64(),
        ms(fill) / f64::from(args.versions)
    );
    Ok(())
}

struct Latencies(Vec<f64>, u64);

impl Latencies {
    fn print(&self, name: &str) {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        let pct =
            |p: f64| v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(0.0);
        println!(
            "  {name:<40} {:>7} {:>8.2} {:>8.2} {:>8.2} {:>7}",
            v.len(),
            pct(0.5),
            pct(0.99),
            v.last().copied().unwrap_or(0.0),
            self.1
        );
    }
}

async fn swap_phase(args: &Args) -> anyhow::Result<()> {
    let hostile = std::fs::read(rust_guest("hostile"))?;
    println!("\nswap storm: Actions at 200/s and webhooks at 100/s for {} s (open loop), latency in ms", args.seconds);
    println!("  {:<40} {:>7} {:>8} {:>8} {:>8} {:>7}", "run", "count", "p50", "p99", "max", "errors");
    for swaps in [false, true] {
        let dir = tempfile::tempdir()?;
        let (host, _) = Host::start(&dir.path().join("swap.db"), &dir.path().join("cache")).await?;
        for n in 1..=3 {
            host.upload(stamped(&hostile, n), n == 1).await?;
        }
        let host = Arc::new(host);
        let stop = Arc::new(AtomicBool::new(false));
        let swapper = tokio::spawn({
            let (host, stop) = (host.clone(), stop.clone());
            async move {
                let (mut n, mut failed) = (0u32, 0u64);
                let mut every = tokio::time::interval(Duration::from_millis(100));
                while swaps && !stop.load(Ordering::Relaxed) {
                    every.tick().await;
                    let resp = host
                        .client
                        .post(host.url(&format!("/admin/modules/{}/activate", n % 3 + 1)))
                        .bearer_auth(TOKEN)
                        .send()
                        .await;
                    failed += u64::from(!resp.is_ok_and(|r| r.status().is_success()));
                    n += 1;
                }
                (n, failed)
            }
        });
        let actions = open_loop(host.clone(), 200, args.seconds, |i| {
            let body = serde_json::to_vec(&json!({
                "object": "authentication_action_context", "id": format!("act_{i}"),
                "user": {"object": "user", "id": format!("user_{}", i % 100), "email": "u@example.com", "first_name": "Version"},
                "ip_address": "127.0.0.1", "user_agent": "bench",
            }))
            .unwrap();
            ("/workos/action", ACTION_SECRET, body)
        });
        let webhooks = open_loop(host.clone(), 100, args.seconds, |i| {
            let body = serde_json::to_vec(&json!({
                "id": format!("event_{i}"), "event": "test.version", "created_at": "2025-01-01T00:00:01.000Z",
                "data": {"object": "test", "id": format!("x_{}", i % 10)},
            }))
            .unwrap();
            ("/workos/webhook", WEBHOOK_SECRET, body)
        });
        let (actions, webhooks) = (actions.await??, webhooks.await??);
        stop.store(true, Ordering::Relaxed);
        let (activations, failed) = swapper.await?;
        let label = if swaps {
            format!("with swaps ({activations} activations, {failed} failed)")
        } else {
            "without swaps".into()
        };
        actions.print(&format!("actions, {}", if swaps { "with swaps" } else { "without swaps" }));
        webhooks.print(&format!("webhooks, {}", if swaps { "with swaps" } else { "without swaps" }));
        if swaps {
            println!("  {label}");
        }
        Arc::try_unwrap(host).ok().context("the host is still shared")?.stop().await?;
    }
    Ok(())
}

/// Sends `rate` signed requests a second for `seconds`, each on its own task, after a one-second warm-up.
fn open_loop(
    host: Arc<Host>,
    rate: u64,
    seconds: u64,
    make: impl Fn(u64) -> (&'static str, &'static str, Vec<u8>) + Send + 'static,
) -> JoinHandle<anyhow::Result<Latencies>> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let warmup = rate;
        let mut tasks = Vec::new();
        for i in 0..(rate * seconds + warmup) {
            tick.tick().await;
            let (path, secret, body) = make(i);
            let signature = authkit_tests::Emulator::new(secret).signature(now_ms(), &body);
            let request = host.client.post(host.url(path)).header("WorkOS-Signature", signature).body(body);
            tasks.push(tokio::spawn(async move {
                let started = Instant::now();
                // A fallback verdict is a 200 too, but a failure here.
                let ok = match request.send().await {
                    Ok(resp) if resp.status().is_success() => {
                        resp.bytes().await.is_ok_and(|b| !b.windows(FALLBACK.len()).any(|w| w == FALLBACK.as_bytes()))
                    }
                    _ => false,
                };
                (i >= warmup, ok, started.elapsed())
            }));
        }
        let (mut latencies, mut errors) = (Vec::new(), 0);
        for task in tasks {
            let (measured, ok, elapsed) = task.await?;
            if !ok {
                errors += 1;
            } else if measured {
                latencies.push(ms(elapsed));
            }
        }
        Ok(Latencies(latencies, errors))
    })
}

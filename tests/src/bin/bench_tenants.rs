//! Many-tenant benchmark. Prints figures; asserts nothing.
//!
//! All in this run, on this machine, against a host running in this process
//! on loopback with SQLite:
//! 1. setup: create `--tenants` tenants and deploy the User data example to
//!    each (the same bytes for all, or with `--distinct` a copy made distinct
//!    by a custom section naming the tenant, so none shares compiled code);
//!    resident memory after.
//! 2. cold: restart the host (no tenant's versions in memory); for `--cold`
//!    tenants, the time from sending a signed `user.created` to its being
//!    applied (the host's own received → processed times, and as the client
//!    saw it), beside a second event to the same, now warm, tenant; and the
//!    round trip of an Actions request to a cold tenant beside a warm one.
//! 3. throughput, from first send to last applied: `--events` events spread
//!    evenly across every tenant, most tenants' versions not yet loaded; then
//!    `--rounds` (3) turns each of the same number for one tenant and spread
//!    again (all loaded), alternating, and the median of each, and the median
//!    of each round's ratio (spread over the one-tenant turn just before it); resident memory with every
//!    tenant loaded. The host sizes its instance pool itself (two slots per
//!    tenant) unless `AUTHKIT_INSTANCE_SLOTS` is set, which is passed through,
//!    as are `AUTHKIT_MAX_LOADED_TENANTS` and `AUTHKIT_MAX_LOADED_CODE_MIB`
//!    (set below what 1,000 tenants need, spread turns close and open
//!    tenants' versions as they go; "all loaded" then means as many as the
//!    bounds hold).
//!
//! It fails if any event ended dead-lettered, so the rates are of events the
//! handler applied.
//!
//! Resident memory is the measuring process's (phases 2 and 3 run in a fresh
//! one), host and load generator together. `--cold 0` skips phase 2's samples.
//! Each throughput turn ends its line with its start and end in seconds since
//! the Unix epoch, so that a `perf record -k CLOCK_REALTIME` of the run can be
//! cut into turns (`perf report --time <start>,<end>`).
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-tenants -- [--tenants 1000]
//! [--events 5000] [--cold 20] [--rounds 3] [--distinct]`. The guests must be built (tests/run.sh
//! or the README's bench command does it).

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use authkit_host::settings::DatabaseUrl;
use authkit_host::store::Store;
use authkit_host::store::inbox::{EventFilter, Status};
use authkit_tests::bench::{Host, TOKEN, median, ms, process_cpu_seconds, resident_mib, with_custom_section};
use authkit_tests::guests::rust_guest;
use authkit_tests::workos::{Emulator, authentication_action, now_ms, user};
use serde_json::json;
use tokio::sync::Semaphore;

struct Args {
    tenants: usize,
    events: usize,
    cold: usize,
    distinct: bool,
    /// Turns of one tenant and of every tenant in phase 3 (each).
    rounds: usize,
    /// Set in the child process that runs phases 2 and 3 on the setup's files.
    prepared: Option<std::path::PathBuf>,
}

const USAGE: &str = "bench-tenants [--tenants 1000] [--events 5000] [--cold 20] [--rounds 3] [--distinct]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { tenants: 1000, events: 5000, cold: 20, distinct: false, rounds: 3, prepared: None };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--tenants" => args.tenants = value()?.parse()?,
            "--events" => args.events = value()?.parse()?,
            "--cold" => args.cold = value()?.parse()?,
            "--distinct" => args.distinct = true,
            "--rounds" => args.rounds = value()?.parse::<usize>()?.max(1),
            "--prepared" => args.prepared = Some(value()?.into()),
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(args)
}

fn slug(i: usize) -> String {
    format!("t{i:04}")
}

fn webhook_secret(slug: &str) -> String {
    format!("whsec_{slug}")
}

fn action_secret(slug: &str) -> String {
    format!("sk_{slug}")
}

/// Runs `f(i)` for every `i` in `0..n`, at most `width` at a time.
async fn each<F, Fut>(n: usize, width: usize, f: F) -> anyhow::Result<()>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(width));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let job = f(i);
        tasks.push(tokio::spawn(async move {
            let out = job.await;
            drop(permit);
            out
        }));
    }
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Sends a signed `user.created` for `user_id` to `slug`; returns the event id.
async fn send_event(host: &Host, slug: &str, user_id: &str) -> anyhow::Result<String> {
    let emulator = Emulator::new(&webhook_secret(slug));
    let created = authkit_host::clock::format_ms(now_ms());
    let (id, body) =
        emulator.event("user.created", user(user_id, &format!("{user_id}@example.com"), "Bench", &created), &created);
    let signature = emulator.signature(now_ms(), &body);
    let resp = host
        .client
        .post(host.url(&format!("/t/{slug}/workos/webhook")))
        .header("WorkOS-Signature", signature)
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    if !status.is_success() {
        bail!("webhook to {slug} refused: {text}");
    }
    // A redelivery costs the worker nothing: counting one would flatter the figure.
    if !text.contains(r#""duplicate":false"#) {
        bail!("webhook to {slug} was taken as a redelivery: {text}");
    }
    Ok(id)
}

/// The round trip of a signed authentication request to `slug`.
async fn send_action(host: &Host, slug: &str) -> anyhow::Result<Duration> {
    let body = authentication_action(
        &format!("act_{slug}_{}", now_ms()),
        user("user_1", "someone@example.com", "Someone", "2025-01-01T00:00:01.000Z"),
    );
    let signature = Emulator::new(&action_secret(slug)).signature(now_ms(), &body);
    let started = Instant::now();
    let resp = host
        .client
        .post(host.url(&format!("/t/{slug}/workos/action")))
        .header("WorkOS-Signature", signature)
        .body(body)
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    let elapsed = started.elapsed();
    if !status.is_success() || text.contains("temporarily unavailable") {
        bail!("action to {slug} not decided by its handler: {status} {text}");
    }
    Ok(elapsed)
}

/// Waits until `slug`'s event `id` is done; returns the host's received → processed time.
async fn applied(store: &Store, slug: &str, id: &str) -> anyhow::Result<Duration> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(e) = store.get_event(slug, id).await?
            && e.status == "done"
        {
            let processed = e.processed_at.context("a done event has a processed time")?;
            return Ok(Duration::from_millis((processed - e.received_at).max(0) as u64));
        }
        if Instant::now() > deadline {
            bail!("event {id} of {slug} was not applied within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

async fn drained(store: &Store) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(600);
    while store.count_unfinished().await? > 0 {
        if Instant::now() > deadline {
            bail!("the worker did not drain within 600 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// Sends `n` events, the `i`th to `target(i)`, 32 at a time; returns events/s from
/// the first send to the last applied.
async fn throughput(
    host: &Arc<Host>,
    store: &Store,
    n: usize,
    run: &str,
    target: impl Fn(usize) -> String,
) -> anyhow::Result<f64> {
    let written = disk_bytes_written();
    let cpu = process_cpu_seconds();
    let started = Instant::now();
    each(n, 32, |i| {
        let (host, slug, user_id) = (host.clone(), target(i), format!("user_{run}_{i}"));
        async move { send_event(&host, &slug, &user_id).await.map(drop) }
    })
    .await?;
    let sent = started.elapsed();
    drained(store).await?;
    let total = started.elapsed();
    let mut per_event = match (written, disk_bytes_written()) {
        (Some(before), Some(after)) => {
            format!("; {:.1} KB written to disk per event", (after - before) as f64 / n as f64 / 1e3)
        }
        _ => String::new(),
    };
    if let (Some(before), Some(after)) = (cpu, process_cpu_seconds()) {
        per_event.push_str(&format!(", {:.0} µs of CPU per event", (after - before) * 1e6 / n as f64));
    }
    let (from, to) = (wall_clock(started), wall_clock(started + total));
    println!(
        "  {run}: {n} acknowledged in {:.0} ms, all applied after {:.0} ms{per_event} [{from:.6},{to:.6}]",
        ms(sent),
        ms(total)
    );
    Ok(n as f64 / total.as_secs_f64())
}

/// `at` as seconds since the Unix epoch: the turn's bounds, for `perf report
/// --time` on a recording made with `perf record -k CLOCK_REALTIME`, which
/// tells one kind of turn's profile from the other's.
fn wall_clock(at: Instant) -> f64 {
    let ago = Instant::now().saturating_duration_since(at);
    (std::time::SystemTime::now() - ago).duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Bytes this process has caused to be written to disk so far (Linux's
/// `/proc/self/io`), host and load generator together. Each turn prints its
/// share beside its CPU time per event: spread turns write and read more pages
/// per event, and on a 2-core machine at 40,000 events a turn it is the
/// worker's CPU that bounds them (it ran at about three quarters of a core
/// while the disk was busy a fifth of the time).
fn disk_bytes_written() -> Option<u64> {
    let io = std::fs::read_to_string("/proc/self/io").ok()?;
    io.lines().find_map(|l| l.strip_prefix("write_bytes:"))?.trim().parse().ok()
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    rt.block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.prepared {
        return measure(&args, dir).await;
    }
    let dir = tempfile::tempdir()?;
    let (db, cache) = (dir.path().join("tenants.db"), dir.path().join("cache"));
    let example = std::fs::read(rust_guest("user_data"))?;
    println!(
        "bench-tenants: {} tenants, {} events, {} copies of the User data example ({} KB)",
        args.tenants,
        args.events,
        if args.distinct { "distinct" } else { "identical" },
        example.len() / 1024
    );

    // 1. setup
    let (host, _) = Host::start(&db, &cache).await?;
    let host = Arc::new(host);
    let started = Instant::now();
    each(args.tenants, 8, |i| {
        let host = host.clone();
        let slug = slug(i);
        async move {
            let body =
                json!({ "slug": slug, "webhook_secret": webhook_secret(&slug), "action_secret": action_secret(&slug) });
            let resp = host.client.post(host.url("/admin/tenants")).bearer_auth(TOKEN).json(&body).send().await?;
            if !resp.status().is_success() {
                bail!("creating {slug}: {}", resp.text().await?);
            }
            Ok(())
        }
    })
    .await?;
    let created = started.elapsed();
    let started = Instant::now();
    each(args.tenants, 4, |i| {
        let host = host.clone();
        let slug = slug(i);
        let bytes =
            if args.distinct { with_custom_section(&example, "tenant", slug.as_bytes()) } else { example.clone() };
        async move {
            let resp = host
                .client
                .post(host.url(&format!("/t/{slug}/admin/modules?activate=true")))
                .bearer_auth(TOKEN)
                .body(bytes)
                .send()
                .await?;
            if !resp.status().is_success() {
                bail!("deploying to {slug}: {}", resp.text().await?);
            }
            Ok(())
        }
    })
    .await?;
    let deployed = started.elapsed();
    let (rss, peak) = resident_mib();
    println!(
        "setup: created {} tenants in {:.1} s, deployed to each in {:.1} s; resident {rss:.0} MiB (peak {peak:.0} MiB)",
        args.tenants,
        created.as_secs_f64(),
        deployed.as_secs_f64()
    );
    Arc::into_inner(host).context("no request still holds the host")?.stop().await?;

    // Phases 2 and 3 in a fresh process, so its resident memory owes nothing to the setup.
    let status = std::process::Command::new(std::env::current_exe()?)
        .args(std::env::args().skip(1))
        .arg("--prepared")
        .arg(dir.path())
        .status()?;
    if !status.success() {
        bail!("the measuring process failed: {status}");
    }
    Ok(())
}

/// Phases 2 and 3, on the database and cache the setup left in `dir`.
async fn measure(args: &Args, dir: &std::path::Path) -> anyhow::Result<()> {
    let (db, cache) = (dir.join("tenants.db"), dir.join("cache"));
    // 2. cold
    let passed = ["AUTHKIT_INSTANCE_SLOTS", "AUTHKIT_MAX_LOADED_TENANTS", "AUTHKIT_MAX_LOADED_CODE_MIB"]
        .map(|k| (k, std::env::var(k).ok()));
    let env: Vec<(&str, &str)> = passed.iter().filter_map(|(k, v)| Some((*k, v.as_deref()?))).collect();
    let set = passed[0].1.clone();
    let (host, startup) = Host::start_with(&db, &cache, &env).await?;
    let status =
        host.client.get(host.url("/admin/status")).bearer_auth(TOKEN).send().await?.json::<serde_json::Value>().await?;
    let how = if set.is_some() { "AUTHKIT_INSTANCE_SLOTS" } else { "sized by the host for its tenants" };
    println!(
        "instance slots: {} ({how}), in {} parts (one per CPU)",
        status["instance_slots"], status["instance_pool_parts"]
    );
    let host = Arc::new(host);
    let store = Store::connect(&DatabaseUrl::Sqlite(format!("sqlite://{}", db.display()))).await?;
    let (rss, _) = resident_mib();
    println!(
        "cold: restarted with {} tenants in {:.0} ms; resident {rss:.0} MiB before any tenant's first use",
        args.tenants,
        ms(startup)
    );
    if args.cold > 0 {
        cold_phase(args, &host, &store).await?;
    }

    // 3. throughput. The first spread run loads most tenants' versions; then
    // one tenant and every tenant take turns, so noise hits both alike.
    let tenants = args.tenants;
    let spread_cold = throughput(&host, &store, args.events, "spread_loading", |i| slug(i % tenants)).await?;
    let (mut single, mut spread, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..args.rounds {
        let one = throughput(&host, &store, args.events, &format!("single{round}"), |_| slug(0)).await?;
        let every = throughput(&host, &store, args.events, &format!("spread{round}"), |i| slug(i % tenants)).await?;
        ratios.push(every / one);
        single.push(one);
        spread.push(every);
    }
    let each: Vec<String> = ratios.iter().map(|r| format!("{:.0}%", 100.0 * r)).collect();
    let (single, spread, paired) = (median(single), median(spread), median(ratios));
    let (rss, peak) = resident_mib();
    println!("throughput (median of {} turns each):", args.rounds);
    println!("            {} events for one tenant: {single:.0} events/s", args.events);
    println!(
        "            spread over {} tenants, all loaded: {spread:.0} events/s ({:.0}% of one tenant; target >= 70%)",
        args.tenants,
        100.0 * spread / single
    );
    println!(
        "            each round's spread turn over the one-tenant turn just before it: {}; median {:.0}%",
        each.join(", "),
        100.0 * paired
    );
    println!(
        "            the first spread run, most loading on first use: {spread_cold:.0} events/s ({:.0}%)",
        100.0 * spread_cold / single
    );
    let listed = host
        .client
        .get(host.url("/admin/tenants"))
        .bearer_auth(TOKEN)
        .send()
        .await?
        .json::<serde_json::Value>()
        .await?;
    let loaded = &listed["loaded"];
    let mib = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    println!(
        "memory: resident {rss:.0} MiB (peak {peak:.0} MiB) with {} tenants loaded at the end, holding {:.1} MiB of \
         compiled code; at most {} tenants and {:.0} MiB stay loaded, and {} were closed to make room during the run \
         ({} uses found their tenant loaded, {} loaded it)",
        loaded["open"],
        mib(&loaded["code_bytes"]),
        loaded["max"],
        mib(&loaded["max_code_bytes"]),
        loaded["evicted"],
        loaded["hits"],
        loaded["loads"]
    );
    every_event_applied(&store, tenants).await?;
    Arc::into_inner(host).context("no request still holds the host")?.stop().await?;
    Ok(())
}

/// Drained counts dead events as finished: make sure none is, so the figures
/// above are of events the handler applied, not of failures.
async fn every_event_applied(store: &Store, tenants: usize) -> anyhow::Result<()> {
    for i in 0..tenants {
        let filter = EventFilter { tenant: slug(i), status: Some(Status::Dead), event_type: None, limit: 1 };
        if let Some(dead) = store.list_events(&filter).await?.first() {
            bail!(
                "event {} of {} was dead-lettered ({}); the figures above are not valid",
                dead.event_id,
                slug(i),
                dead.last_error.as_deref().unwrap_or("no error recorded")
            );
        }
    }
    Ok(())
}

/// The first event and Actions request of tenants whose versions are not in memory.
async fn cold_phase(args: &Args, host: &Host, store: &Store) -> anyhow::Result<()> {
    let sample: Vec<usize> = (0..args.cold).map(|k| k * args.tenants / args.cold).collect();
    let (mut cold_server, mut cold_client, mut warm_server, mut warm_client) = (vec![], vec![], vec![], vec![]);
    for &i in &sample {
        let slug = slug(i);
        for (server, client, run) in
            [(&mut cold_server, &mut cold_client, "cold"), (&mut warm_server, &mut warm_client, "warm")]
        {
            let sent = Instant::now();
            let id = send_event(host, &slug, &format!("user_{run}_{i}")).await?;
            server.push(applied(store, &slug, &id).await?);
            client.push(sent.elapsed());
        }
    }
    println!(
        "cold: first event of a tenant not in memory: applied {:.1} ms after receipt, {:.1} ms as the client saw it (median of {}; max {:.1} / {:.1} ms)",
        ms(median(cold_server.clone())),
        ms(median(cold_client.clone())),
        sample.len(),
        ms(*cold_server.iter().max().unwrap()),
        ms(*cold_client.iter().max().unwrap()),
    );
    println!(
        "      next event of the same tenant:           applied {:.1} ms after receipt, {:.1} ms as the client saw it",
        ms(median(warm_server)),
        ms(median(warm_client)),
    );
    let (mut cold_actions, mut warm_actions) = (vec![], vec![]);
    for &i in &sample {
        let slug = slug((i + 1) % args.tenants);
        cold_actions.push(send_action(host, &slug).await?);
        warm_actions.push(send_action(host, &slug).await?);
    }
    println!(
        "cold: Actions round trip to a tenant not in memory {:.2} ms (max {:.2}), warm {:.2} ms (medians of {})",
        ms(median(cold_actions.clone())),
        ms(*cold_actions.iter().max().unwrap()),
        ms(median(warm_actions)),
        sample.len()
    );

    Ok(())
}

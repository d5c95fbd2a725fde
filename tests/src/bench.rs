//! What the benchmarks share: a host running in the bench's own process on
//! loopback, component padding, and figures. Must not: assert anything.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::bail;
use authkit_host::settings::{DatabaseUrl, Overrides, Settings};
use authkit_host::store::Store;
use authkit_host::store::inbox::NewEvent;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// The root admin token of a bench host.
pub const TOKEN: &str = "bench-admin-token";
/// The default tenant's secrets on a bench host.
pub const ACTION_SECRET: &str = "sk_bench_modules";
pub const WEBHOOK_SECRET: &str = "whsec_bench_modules";

/// A host running in this process.
pub struct Host {
    pub addr: std::net::SocketAddr,
    stop: CancellationToken,
    task: JoinHandle<anyhow::Result<()>>,
    pub client: reqwest::Client,
}

impl Host {
    /// Starts on `db` with `cache`; returns once it answers, and how long that took.
    pub async fn start(db: &Path, cache: &Path) -> anyhow::Result<(Host, Duration)> {
        Host::start_with(db, cache, &[]).await
    }

    /// Like [`Host::start`], with more environment variables set.
    pub async fn start_with(db: &Path, cache: &Path, env: &[(&str, &str)]) -> anyhow::Result<(Host, Duration)> {
        let overrides = Overrides { database_url: Some(format!("sqlite://{}", db.display())), ..Default::default() };
        let cache = cache.display().to_string();
        let settings = Settings::load_with(&overrides, |k| match k {
            "AUTHKIT_ADMIN_TOKEN" => Some(TOKEN.to_string()),
            "WORKOS_ACTION_SECRET" => Some(ACTION_SECRET.to_string()),
            "WORKOS_WEBHOOK_SECRET" => Some(WEBHOOK_SECRET.to_string()),
            "AUTHKIT_CACHE_DIR" => Some(cache.clone()),
            "AUTHKIT_LOG" => Some("warn".to_string()),
            other => env.iter().find(|(name, _)| *name == other).map(|(_, v)| v.to_string()),
        })?;
        let started = Instant::now();
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let task = tokio::spawn({
            let stop = stop.clone();
            async move { authkit_host::run(settings, listener, stop).await }
        });
        let client = reqwest::Client::new();
        loop {
            if let Ok(r) = client.get(format!("http://{addr}/healthz")).send().await
                && r.status().is_success()
            {
                break;
            }
            if task.is_finished() {
                bail!("the host stopped during start-up: {:?}", task.await);
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok((Host { addr, stop, task, client }, started.elapsed()))
    }

    pub async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        self.task.await?
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Uploads `bytes`; returns how long until the answer, which must be a success.
    pub async fn upload(&self, bytes: Vec<u8>, activate: bool) -> anyhow::Result<Duration> {
        let started = Instant::now();
        let resp = self
            .client
            .post(self.url(&format!("/admin/modules?activate={activate}")))
            .bearer_auth(TOKEN)
            .body(bytes)
            .send()
            .await?;
        let elapsed = started.elapsed();
        if !resp.status().is_success() {
            bail!("upload refused: {}", resp.text().await?);
        }
        Ok(elapsed)
    }
}

/// A flag a benchmark does not take: `--help` or `-h` prints `usage` and
/// exits; anything else is an error that shows it.
pub fn not_a_flag(flag: &str, usage: &str) -> anyhow::Error {
    if flag == "--help" || flag == "-h" {
        println!("usage: {usage}");
        std::process::exit(0);
    }
    anyhow::anyhow!("unknown flag {flag}\nusage: {usage}")
}

/// Appends a custom section of `pad` bytes: a bigger component with the same code.
pub fn padded(bytes: &[u8], pad: usize) -> Vec<u8> {
    with_custom_section(bytes, "bench-padding", &vec![0x5a; pad])
}

/// Appends a custom section `name` holding `payload`: different bytes, the same code.
pub fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    let mut section = leb128(name.len() as u64);
    section.extend_from_slice(name.as_bytes());
    section.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0); // custom section id
    out.extend(leb128(section.len() as u64));
    out.extend(section);
    out
}

pub fn leb128(mut n: u64) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let byte = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(byte);
            return out;
        }
        out.push(byte | 0x80);
    }
}

/// The middle value (of durations, rates, ...); NaN sorts as equal.
pub fn median<T: PartialOrd + Copy>(mut v: Vec<T>) -> T {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// CPU time this process has used so far, user and system, in seconds: fields
/// 14 and 15 of `/proc/self/stat`, in the kernel's clock ticks (100 a second
/// on Linux, whatever its scheduler's frequency).
pub fn process_cpu_seconds() -> Option<f64> {
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // The command name (field 2) may hold spaces: count fields after its ')'.
    let mut fields = stat.get(stat.rfind(')')? + 1..)?.split_whitespace();
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some((utime + stime) as f64 / TICKS_PER_SECOND)
}

/// This process's resident memory now and at its peak, in MiB (Linux).
pub fn resident_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|kb| kb.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// Latency figures of a steady load, in milliseconds.
pub struct Latencies {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    pub errors: u64,
}

impl Latencies {
    pub fn print(&self, name: &str) {
        println!("  {name:<44} {:>9.2} {:>9.2} {:>9.2} {:>7}", self.p50, self.p99, self.max, self.errors);
    }
}

/// One request of a steady load, and the text its response body must contain,
/// if any.
pub type Probe = (reqwest::RequestBuilder, Option<String>);

/// Sends `rate` requests a second for one second of warm-up and then
/// `seconds` measured, open loop (a request goes out on its tick whether or
/// not earlier ones are answered). `request(i)` makes the `i`th request and
/// says what its response body must contain, if anything; a response that is
/// not a success, or lacks that text, counts as an error (so a benchmark
/// cannot time a path other than the one it means to).
pub async fn steady(
    rate: u64,
    seconds: u64,
    mut request: impl FnMut(u64) -> anyhow::Result<Probe>,
) -> anyhow::Result<Latencies> {
    let mut samples = Samples::default();
    samples.errors += send_at(rate, 0, rate, &mut request).await?.errors;
    samples.extend(send_at(rate, rate, rate * seconds, &mut request).await?);
    Ok(samples.latencies())
}

/// [`steady`] for several paths in one run, taking turns: one second of
/// warm-up each, then `seconds` measured for each path, in `slices` turns per
/// path, a path sending at `rate` in its turn and nothing in the others'. On a
/// shared, noisy machine the noise then falls on every path alike, where runs
/// one after the other let it favour one. Figures are per path, in order.
pub async fn interleaved(
    rate: u64,
    seconds: u64,
    slices: u64,
    paths: &mut [&mut dyn FnMut(u64) -> anyhow::Result<Probe>],
) -> anyhow::Result<Vec<Latencies>> {
    let mut samples: Vec<Samples> = paths.iter().map(|_| Samples::default()).collect();
    for (path, samples) in paths.iter_mut().zip(&mut samples) {
        samples.errors += send_at(rate, 0, rate, path).await?.errors;
    }
    let per_slice = (rate * seconds).div_ceil(slices.max(1));
    for slice in 0..slices.max(1) {
        for (path, samples) in paths.iter_mut().zip(&mut samples) {
            samples.extend(send_at(rate, rate + slice * per_slice, per_slice, path).await?);
        }
    }
    Ok(samples.into_iter().map(|s| s.latencies()).collect())
}

/// Latencies (ms) of the answered requests, and how many failed.
#[derive(Default)]
struct Samples {
    ms: Vec<f64>,
    errors: u64,
}

impl Samples {
    fn extend(&mut self, other: Samples) {
        self.ms.extend(other.ms);
        self.errors += other.errors;
    }

    fn latencies(mut self) -> Latencies {
        self.ms.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            self.ms
                .get(((self.ms.len() as f64 * p) as usize).min(self.ms.len().saturating_sub(1)))
                .copied()
                .unwrap_or(0.0)
        };
        Latencies { p50: pct(0.5), p99: pct(0.99), max: self.ms.last().copied().unwrap_or(0.0), errors: self.errors }
    }
}

/// Sends requests `first..first + count` at `rate` a second, open loop, and
/// waits for every answer.
async fn send_at(
    rate: u64,
    first: u64,
    count: u64,
    request: &mut (impl FnMut(u64) -> anyhow::Result<Probe> + ?Sized),
) -> anyhow::Result<Samples> {
    let interval = Duration::from_micros(1_000_000 / rate.max(1));
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut tasks = Vec::with_capacity(count as usize);
    for i in first..first + count {
        tick.tick().await;
        let (request, expect) = request(i)?;
        tasks.push(tokio::spawn(async move {
            let started = Instant::now();
            let body = match request.send().await {
                Ok(resp) if resp.status().is_success() => resp.bytes().await.ok(),
                _ => None,
            };
            let elapsed = started.elapsed();
            let ok = body
                .is_some_and(|body| expect.is_none_or(|text| body.windows(text.len()).any(|w| w == text.as_bytes())));
            ok.then_some(elapsed)
        }));
    }
    let mut samples = Samples::default();
    for task in tasks {
        match task.await? {
            Some(elapsed) => samples.ms.push(elapsed.as_secs_f64() * 1000.0),
            None => samples.errors += 1,
        }
    }
    Ok(samples)
}

/// The worker's drain rate (events/s) of a backlog of `events` user.created
/// events stored before the host starts, with `handler` (or none), on
/// `database_url` (default: a fresh SQLite file). Timed from the first
/// committed batch to the last, so start-up (compiling the component) is not
/// counted as draining.
pub fn drain(
    rt: &tokio::runtime::Runtime,
    events: u32,
    database_url: Option<String>,
    handler: Option<std::path::PathBuf>,
) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let url = database_url.unwrap_or_else(|| format!("sqlite://{}", dir.path().join("events.db").display()));
    let store = rt.block_on(Store::connect(&DatabaseUrl::parse(&url)?))?;
    let run = uuid::Uuid::new_v4().simple().to_string();
    let rows: Vec<NewEvent> = (0..events)
        .map(|i| {
            let at = format!("2025-01-01T00:00:{:02}.{:03}Z", (i / 1000) % 60, i % 1000);
            let data = json!({
                "object": "user", "id": format!("user_{run}_{i}"), "email": format!("u{i}@example.com"),
                "email_verified": true, "first_name": "Bench", "last_name": format!("User {i}"),
                "created_at": at, "updated_at": at,
            });
            let id = format!("event_{run}_{i:08}");
            let payload = json!({"object": "event", "id": id, "event": "user.created", "data": data, "created_at": at});
            NewEvent {
                tenant_id: "default".into(),
                event_id: id,
                event_type: "user.created".into(),
                subject: format!("user:user_{run}_{i}"),
                occurred_at: 1_735_689_600_000 + i64::from(i),
                received_at: authkit_host::clock::now_ms(),
                payload: payload.to_string(),
                tenant_created_at: Some(0),
            }
        })
        .collect();
    rt.block_on(async {
        for chunk in rows.chunks(512) {
            store.insert_events(chunk).await?;
        }
        anyhow::Ok(())
    })?;
    let overrides = Overrides { database_url: Some(url), handler, ..Default::default() };
    let settings = Settings::load_with(&overrides, |_| None)?;
    let stop = CancellationToken::new();
    let server = rt.spawn({
        let stop = stop.clone();
        async move {
            let listener = TcpListener::bind("127.0.0.1:0").await?;
            authkit_host::run(settings, listener, stop).await
        }
    });
    let backlog = i64::from(events);
    let (drained, elapsed) = rt.block_on(async {
        let (mut first, mut left_at_first) = (None, backlog);
        loop {
            let left = store.count_unfinished().await?;
            if first.is_none() && left < backlog {
                first = Some(Instant::now());
                left_at_first = left;
            }
            if left == 0 {
                let first = first.unwrap_or_else(Instant::now);
                return anyhow::Ok((left_at_first, first.elapsed().as_secs_f64()));
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })?;
    stop.cancel();
    rt.block_on(server)??;
    Ok(drained as f64 / elapsed)
}

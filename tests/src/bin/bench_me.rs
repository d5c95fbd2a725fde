//! Who-is-calling benchmark: `GET /me` with a valid AuthKit access token
//! (RS256 verified against a cached JWKS, then the users-table lookup) and the
//! example's `my-todo-lists` query, each at a steady rate over loopback,
//! beside `GET /healthz` (a route that verifies nothing) in the same run.
//! Prints figures; asserts nothing.
//!
//! Usage: `cargo run --release -p authkit-tests --bin bench-me -- [--rate 200] [--seconds 10]`
//! (build the guest examples first, see the README).

/// The allocator the `authkit-host` binary uses, so the in-process server measures the same.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Duration;

use anyhow::{Context, bail};
use authkit_tests::authkit::AuthKit;
use authkit_tests::bench::{Host, WEBHOOK_SECRET, steady};
use authkit_tests::guests::rust_guest;
use authkit_tests::workos::{Emulator, now_ms, user};

const CLIENT: &str = "client_01BENCHME";
const USERS: u64 = 100;

struct Args {
    rate: u64,
    seconds: u64,
}

const USAGE: &str = "bench-me [--rate 200] [--seconds 10]";

fn parse_args() -> anyhow::Result<Args> {
    let mut args = Args { rate: 200, seconds: 10 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--rate" => args.rate = value()?.parse()?,
            "--seconds" => args.seconds = value()?.parse()?,
            other => return Err(authkit_tests::bench::not_a_flag(other, USAGE)),
        }
    }
    Ok(args)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let dir = tempfile::tempdir()?;
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let base = authkit.base_url();
    let env = [("WORKOS_CLIENT_ID", CLIENT), ("WORKOS_API_BASE_URL", base.as_str())];
    let (host, _) = Host::start_with(&dir.path().join("me.db"), &dir.path().join("cache"), &env).await?;
    host.upload(std::fs::read(rust_guest("user_data"))?, true).await?;

    // Users synced through signed webhooks; the example gives each a todo list.
    let emulator = Emulator::new(WEBHOOK_SECRET);
    for i in 0..USERS {
        let at = "2025-01-01T00:00:01.000Z";
        let (_, body) = emulator.event("user.created", user(&format!("user_{i:04}"), "u@example.com", "Bench", at), at);
        let signature = emulator.signature(now_ms(), &body);
        let resp = host
            .client
            .post(host.url("/workos/webhook"))
            .header("WorkOS-Signature", signature)
            .body(body)
            .send()
            .await?;
        if !resp.status().is_success() {
            bail!("a webhook was refused: {}", resp.text().await?);
        }
    }
    let tokens: Vec<String> = (0..USERS).map(|i| authkit.token(CLIENT, &format!("user_{i:04}"))).collect();
    let last = format!("Bearer {}", tokens[USERS as usize - 1]);
    for _ in 0..200 {
        let resp = host.client.post(host.url("/query/my-todo-lists")).header("authorization", &last).send().await?;
        if resp.status().is_success() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!(
        "who is calling: {} requests/s for {} s (after 1 s of warm-up), open loop over loopback, {USERS} users, SQLite",
        args.rate, args.seconds
    );
    println!("  {:<44} {:>9} {:>9} {:>9} {:>7}", "route", "p50 ms", "p99 ms", "max ms", "errors");
    let client = &host.client;
    let baseline = steady(args.rate, args.seconds, |_| Ok((client.get(host.url("/healthz")), None))).await?;
    baseline.print("GET /healthz (verifies nothing)");
    let bearer = |i: u64| format!("Bearer {}", tokens[(i % USERS) as usize]);
    let me =
        steady(args.rate, args.seconds, |i| Ok((client.get(host.url("/me")).header("authorization", bearer(i)), None)))
            .await?;
    me.print("GET /me (RS256 + users table)");
    let query = steady(args.rate, args.seconds, |i| {
        Ok((client.post(host.url("/query/my-todo-lists")).header("authorization", bearer(i)), None))
    })
    .await?;
    query.print("POST /query/my-todo-lists (token + guest)");
    println!(
        "  /me p50 / baseline p50 = {:.2}x; query p50 / baseline p50 = {:.2}x",
        me.p50 / baseline.p50,
        query.p50 / baseline.p50
    );
    if me.errors + query.errors + baseline.errors > 0 {
        bail!("some requests failed; the figures above are not valid");
    }
    host.stop().await
}

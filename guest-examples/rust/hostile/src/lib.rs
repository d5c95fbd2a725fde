//! A test fixture, not an example: a handler that misbehaves on purpose, so the
//! tests can show the host contains it. The event type picks the misbehaviour;
//! every other event type is handled well (it records the event in `seen`).
//!
//! A `user.*` event for a user whose first name is `Fail` is refused (so the
//! tests can show the host's own sync is rolled back with the handler's writes).
//!
//! Each misbehaviour first writes a `seen` document, so a test can tell that
//! the write was rolled back with the rest of the failed call.
//!
//! Hot-swap tests make distinct versions of this component by patching the
//! digits of [`VERSION`] in the built file; `test.version` events and `Version`
//! actions report the number.

wit_bindgen::generate!({
    path: "../../../wit",
    world: "authkit:handler/full-handler",
});

use authkit::handler::{db, log};
use exports::authkit::handler::actions::{AuthenticationContext, Guest as Actions, RegistrationContext, Verdict};
use exports::authkit::handler::events::{Event, Guest};
use exports::authkit::handler::queries::{Caller, Guest as Queries};
use exports::authkit::handler::schema::{Guest as Schema, Index};
use serde_json::json;

struct Hostile;

/// The version stamp; the digits are patched in the built component.
static VERSION: [u8; 24] = *b"authkit-test-version:000";

fn version() -> u32 {
    // A volatile read keeps the bytes in the data segment, where the patch finds them.
    let stamp = unsafe { core::ptr::read_volatile(&VERSION) };
    stamp[21..].iter().fold(0, |n, d| n * 10 + u32::from(d.wrapping_sub(b'0')))
}

impl Guest for Hostile {
    fn handle(event: Event) -> Result<(), String> {
        let seen = json!({ "event": event.id, "type": event.event_type, "attempt": event.attempt }).to_string();
        db::insert("seen", &seen).map_err(|e| format!("{e:?}"))?;
        if event.user.as_ref().is_some_and(|u| u.first_name.as_deref() == Some("Fail")) {
            return Err(format!("refusing user {} (attempt {})", event.user.as_ref().unwrap().id, event.attempt));
        }
        match event.event_type.as_str() {
            "test.fail_unless_flagged" => match db::list("flags", 1, None) {
                Ok(page) if !page.documents.is_empty() => Ok(()),
                _ => Err("no flag yet".into()),
            },
            "test.seq" => check_order(&event),
            "test.fail" => Err(format!("told to fail (attempt {})", event.attempt)),
            "test.fail_once" if event.attempt == 1 => Err("failing the first attempt only".into()),
            "test.panic" => panic!("told to panic"),
            "test.loop" => {
                log::log(log::Level::Info, "looping forever");
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "test.sleep" => {
                std::thread::sleep(std::time::Duration::from_secs(3600));
                Ok(())
            }
            "test.bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1024 * 1024]);
                    log::log(log::Level::Debug, &format!("holding {} MiB", hoard.len()));
                }
            }
            "test.recurse" => {
                #[allow(unconditional_recursion)]
                fn deeper(n: u64) -> u64 {
                    // black_box keeps the recursion from being turned into a loop.
                    std::hint::black_box(deeper(std::hint::black_box(n + 1))) + 1
                }
                let _ = deeper(0);
                Ok(())
            }
            "test.escape" => escape(&event),
            "test.big" => big(),
            "test.flood" => {
                // 2,000 lines, 36 KB: twenty times the line cap, twice the byte cap, and
                // quick enough for the test deadline on a busy machine.
                for i in 0..1_000 {
                    println!("stdout line {i}");
                    log::log(log::Level::Info, &format!("log line {i}"));
                }
                eprint!("an unfinished stderr line");
                Ok(())
            }
            "test.peek" => peek(),
            "test.census" => census(),
            "test.version" => {
                // Two writes: a call that ran on two versions would show it.
                let v = version();
                for part in [1, 2] {
                    let stamp = json!({ "event": event.id, "version": v, "part": part }).to_string();
                    db::insert("stamps", &stamp).map_err(|e| format!("{e:?}"))?;
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// Tries the host's files, environment, network and clock-free sleeps; records what it got.
fn escape(event: &Event) -> Result<(), String> {
    let file = std::fs::read("/etc/passwd").map(|b| b.len()).map_err(|e| e.to_string());
    let dir = std::fs::read_dir("/").map(|d| d.count()).map_err(|e| e.to_string());
    let cwd = std::env::current_dir().map(|p| p.display().to_string()).map_err(|e| e.to_string());
    let env: Vec<String> = std::env::vars().map(|(k, _)| k).collect();
    let args: Vec<String> = std::env::args().collect();
    let tcp = std::net::TcpStream::connect("127.0.0.1:5432").map(|_| ()).map_err(|e| e.to_string());
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").map(|_| ()).map_err(|e| e.to_string());
    let mut stdin = String::new();
    let stdin_read = std::io::Read::read_to_string(&mut std::io::stdin(), &mut stdin).map_err(|e| e.to_string());
    let report = json!({
        "event": event.id,
        "file": format!("{file:?}"),
        "dir": format!("{dir:?}"),
        "cwd": format!("{cwd:?}"),
        "env": env,
        "args": args,
        "tcp": format!("{tcp:?}"),
        "udp": format!("{udp:?}"),
        "stdin": format!("{stdin_read:?}"),
        "file_ok": file.is_ok(),
        "dir_ok": dir.is_ok(),
        "tcp_ok": tcp.is_ok(),
        "udp_ok": udp.is_ok(),
    });
    db::insert("escape", &report.to_string()).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Oversized documents and bad names: each must be a typed error.
fn big() -> Result<(), String> {
    let huge = json!({ "blob": "x".repeat(2 * 1024 * 1024) }).to_string();
    let results = json!({
        "insert_huge": format!("{:?}", db::insert("big", &huge).map(|_| ())),
        "bad_table": format!("{:?}", db::insert("no such table!", "{}").map(|_| ())),
        "not_object": format!("{:?}", db::insert("big", "[1,2,3]").map(|_| ())),
        "not_indexed": format!("{:?}", db::find("big", "blob", "\"x\"", 10, None).map(|_| ())),
    });
    db::insert("big_results", &results.to_string()).map_err(|e| format!("{e:?}"))?;
    // Spend the rest of the call budget: the next call must be refused.
    let mut refused = None;
    for _ in 0..2000 {
        if let Err(e) = db::get("big", "00000000000000000000") {
            refused = Some(format!("{e:?}"));
            break;
        }
    }
    log::log(log::Level::Info, &format!("budget: {refused:?}"));
    if refused.is_none() {
        return Err("the call budget was never enforced".into());
    }
    Ok(())
}

/// Counts what this tenant's tables hold as the handler sees them (another
/// tenant's documents in tables of the same names must not show).
fn census() -> Result<(), String> {
    let mut counts = serde_json::Map::new();
    for table in ["seen", "stamps", "census"] {
        let n = db::list(table, 1000, None).map(|p| p.documents.len()).map_err(|e| format!("{e:?}"))?;
        counts.insert(table.to_string(), json!(n));
    }
    db::insert("census", &serde_json::Value::Object(counts).to_string()).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

/// Asks for the host's own tables and other tenants' data by name.
fn peek() -> Result<(), String> {
    let mut found = Vec::new();
    for table in ["inbox", "users", "organizations", "documents", "tombstones", "sqlite_master", "pg_tables"] {
        match db::list(table, 100, None) {
            Ok(page) => found.push(json!({ "table": table, "documents": page.documents.len() })),
            Err(e) => found.push(json!({ "table": table, "error": format!("{e:?}") })),
        }
    }
    let names = ["inbox; DROP TABLE inbox", "users--", "../users", "default.users", "\"users\""];
    let refused: Vec<String> = names.iter().map(|n| format!("{:?}", db::list(n, 1, None).map(|_| ()))).collect();
    db::insert("peek", &json!({ "found": found, "refused": refused }).to_string()).map_err(|e| format!("{e:?}"))?;
    Ok(())
}

impl Schema for Hostile {
    fn indexes() -> Vec<Index> {
        vec![Index { table: "seq".into(), field: "subject".into() }]
    }
}

/// `test.seq` events carry `user_id` and an increasing `n` per user: each must
/// come after the previous one of its user. One that does not is recorded in
/// `violations`. It takes a few milliseconds, so that concurrent workers overlap.
fn check_order(event: &Event) -> Result<(), String> {
    let data: serde_json::Value = serde_json::from_str(&event.data).map_err(|e| e.to_string())?;
    let (subject, n) = (data["user_id"].clone(), data["n"].as_i64().unwrap_or(-1));
    std::thread::sleep(std::time::Duration::from_millis(3));
    let page = db::find("seq", "subject", &subject.to_string(), 1, None).map_err(|e| format!("{e:?}"))?;
    match page.documents.first() {
        None => db::insert("seq", &json!({ "subject": subject, "last": n }).to_string()).map(drop),
        Some(doc) => {
            let body: serde_json::Value = serde_json::from_str(&doc.body).map_err(|e| e.to_string())?;
            let last = body["last"].as_i64().unwrap_or(-1);
            if last >= n {
                let violation = json!({ "subject": subject, "last": last, "n": n }).to_string();
                db::insert("violations", &violation).map_err(|e| format!("{e:?}"))?;
            }
            db::patch("seq", &doc.id, &json!({ "last": n }).to_string()).map(drop)
        }
    }
    .map_err(|e| format!("{e:?}"))
}

/// Actions misbehave by the first name they are about: `Loop`, `Panic`,
/// `Sleep`, `Linger` (waits a second before it records the decision, then
/// allows), `Deny` (a long non-ASCII message); anyone else (`Write`, say) is
/// allowed. Each records the decision in `decisions` before it misbehaves.
impl Actions for Hostile {
    fn authenticate(ctx: AuthenticationContext) -> Verdict {
        misbehave(ctx.user.first_name.as_deref().unwrap_or_default(), &ctx.id)
    }

    fn register_user(ctx: RegistrationContext) -> Verdict {
        misbehave(ctx.user_data.first_name.as_deref().unwrap_or_default(), &ctx.id)
    }
}

fn misbehave(name: &str, action_id: &str) -> Verdict {
    if name == "Version" {
        return Verdict::Deny(format!("version {}", version()));
    }
    if name == "Linger" {
        // A test deletes the tenant meanwhile: the write below must not outlive it.
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
    // Written before misbehaving: a test checks it is rolled back.
    let record = json!({ "action": action_id, "name": name }).to_string();
    if db::insert("decisions", &record).is_err() {
        return Verdict::Deny("could not record".into());
    }
    match name {
        "Loop" =>
        {
            #[allow(clippy::empty_loop)]
            loop {}
        }
        "Panic" => panic!("told to panic"),
        "Sleep" => {
            std::thread::sleep(std::time::Duration::from_secs(3600));
            Verdict::Allow
        }
        "Deny" => Verdict::Deny(format!("Zugriff verweigert — {}", "ü".repeat(600))),
        _ => Verdict::Allow,
    }
}

/// Queries misbehave by name: `echo` answers what it got, `write` tries to
/// write (and reports the error it gets), `fail` returns an error, `panic`,
/// `loop` and `bomb` trap, run past the deadline or out of memory,
/// `not-json` answers text that is not JSON, `big` answers 5 MB.
impl Queries for Hostile {
    fn run(name: String, args_json: String, caller: Option<Caller>) -> Result<String, String> {
        match name.as_str() {
            "echo" => {
                let args: serde_json::Value = serde_json::from_str(&args_json).map_err(|e| e.to_string())?;
                let caller = caller.map(|c| {
                    json!({ "user": c.user.id, "email": c.user.email, "session": c.session_id,
                            "organization": c.organization_id, "role": c.role, "permissions": c.permissions })
                });
                Ok(json!({ "name": name, "args": args, "caller": caller, "version": version() }).to_string())
            }
            "write" => match db::insert("seen", "{}") {
                Ok(id) => Ok(json!({ "wrote": id }).to_string()),
                Err(e) => Err(format!("the write was refused: {e:?}")),
            },
            "fail" => Err("told to fail".into()),
            "panic" => panic!("told to panic"),
            "loop" =>
            {
                #[allow(clippy::empty_loop)]
                loop {}
            }
            "bomb" => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1024 * 1024]);
                }
            }
            // Needs `mib` MiB of memory, then answers: fits a memory cap or not.
            "hold" => {
                let mib = number(&args_json, "mib")?;
                let hoard: Vec<Vec<u8>> = (0..mib).map(|i| vec![i as u8; 1024 * 1024]).collect();
                Ok(json!({ "held": hoard.len() }).to_string())
            }
            // Computes for `ms` milliseconds, then answers: fits a deadline or not.
            "spin" => {
                let ms = number(&args_json, "ms")?;
                let started = std::time::Instant::now();
                let mut turns = 0u64;
                while started.elapsed() < std::time::Duration::from_millis(ms) {
                    turns = std::hint::black_box(turns + 1);
                }
                Ok(json!({ "spun_ms": ms }).to_string())
            }
            "not-json" => Ok("this is not JSON".into()),
            "big" => Ok(json!({ "blob": "x".repeat(5 * 1024 * 1024) }).to_string()),
            other => Err(format!("no query {other:?}")),
        }
    }
}

export!(Hostile);

/// The whole number `field` of a query's JSON arguments.
fn number(args_json: &str, field: &str) -> Result<u64, String> {
    let args: serde_json::Value = serde_json::from_str(args_json).map_err(|e| e.to_string())?;
    args[field].as_u64().ok_or_else(|| format!("give {field} as a whole number"))
}

//! Handlers as WebAssembly components, built from `guest-examples/` sources and
//! run by the real binary: the reference example end to end over HTTP, a
//! failing handler (rollback, retries, dead letter, retry command), and hostile
//! guests contained while the host keeps processing other events.

use std::time::Duration;

use authkit_host::store::Store;
use authkit_host::store::documents::Indexes;
use authkit_host::store::inbox::InboxEvent;
use authkit_tests::documents::with_documents;
use authkit_tests::guests::rust_guest;
use authkit_tests::server::cli;
use authkit_tests::workos::user;
use authkit_tests::{Backend, ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(
    the_example_keeps_app_users_in_step_whatever_the_order,
    a_failing_handler_rolls_back_everything_retries_and_dead_letters,
    a_dead_event_can_be_retried_once_the_cause_is_fixed,
    hostile_guests_are_contained_and_the_host_keeps_serving,
);

/// A component that cannot be used stops the start-up with a message saying why.
#[tokio::test]
async fn a_handler_that_cannot_load_stops_the_start_with_a_clear_message() {
    let db = TestDb::create(Backend::Sqlite, "bad_handler").await.unwrap();
    let cases: [(&str, &[u8], &str); 3] = [
        ("core.wasm", b"\0asm\x01\0\0\0", "core WebAssembly module, not a component"),
        ("garbage.wasm", b"hello, world", "not a WebAssembly component"),
        ("missing.wasm", b"", "cannot read the handler"),
    ];
    for (name, bytes, expected) in cases {
        let path = db.dir.path().join(name);
        if !bytes.is_empty() {
            std::fs::write(&path, bytes).unwrap();
        }
        let (ok, _, err) =
            cli(&db, &["serve", "--listen", "127.0.0.1:0", "--no-worker", "--handler", path.to_str().unwrap()]);
        assert!(!ok, "{name}: the server started");
        assert!(err.contains(expected), "{name}: {err}");
    }
}

const T1: &str = "2025-01-01T00:00:01.000Z";
const T2: &str = "2025-01-01T00:00:02.000Z";
const T3: &str = "2025-01-01T00:00:03.000Z";

/// A server running `guest` with fast retries and the given extra config.
fn with_handler(db: &TestDb, guest: &str, max_attempts: u32, handler_config: &str) -> ServerOptions {
    let path = db.dir.path().join("authkit.toml");
    let config = format!(
        "[worker]\nretry_base_ms = 50\nretry_max_ms = 200\npoll_interval_ms = 50\nmax_attempts = {max_attempts}\n\n[handler]\n{handler_config}\n"
    );
    std::fs::write(&path, config).unwrap();
    let wasm = rust_guest(guest);
    ServerOptions::default().arg("--config").arg(path.to_str().unwrap()).arg("--handler").arg(wasm.to_str().unwrap())
}

async fn settle(store: &Store) {
    eventually("the worker to finish", Duration::from_secs(60), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
}

async fn event(store: &Store, id: &str) -> InboxEvent {
    store.get_event("default", id).await.unwrap().expect("event in inbox")
}

/// Every document of `table` (tenant `default`): the body, with `_id` added.
async fn documents(store: &Store, table: &str) -> Vec<Value> {
    authkit_tests::documents::documents(store, table)
        .await
        .into_iter()
        .map(|(id, mut body)| {
            body["_id"] = json!(id);
            body
        })
        .collect()
}

fn without_ids(docs: Vec<Value>) -> Vec<Value> {
    docs.into_iter()
        .map(|mut d| {
            d.as_object_mut().unwrap().remove("_id");
            d
        })
        .collect()
}

async fn the_example_keeps_app_users_in_step_whatever_the_order(db: TestDb) {
    let server = TestServer::start_with(&db, with_handler(&db, "user_data", 20, "")).await;
    let store = db.store().await;

    // In order: create, then update.
    let (_, created_body) = server.emulator.event("user.created", user("user_a", "ada@example.com", "Ada", T1), T1);
    assert_eq!(server.deliver(&created_body).await.status, 200);
    server.send("user.updated", user("user_a", "ada@new.example.com", "Ada", T2), T2).await;
    // Out of order: the update arrives before its create.
    server.send("user.updated", user("user_b", "bob@new.example.com", "Bob", T2), T2).await;
    settle(&store).await;
    server.send("user.created", user("user_b", "bob@example.com", "Robert", T1), T1).await;
    // A delete that arrives before its create: the user never appears.
    server.send("user.deleted", json!({"id": "user_c"}), T2).await;
    settle(&store).await;
    server.send("user.created", user("user_c", "cy@example.com", "Cy", T1), T1).await;
    // A redelivery changes nothing.
    assert_eq!(server.deliver(&created_body).await.body["duplicate"], true);
    settle(&store).await;

    let mut users = without_ids(documents(&store, "users").await);
    users.sort_by_key(|u| u["authId"].as_str().unwrap().to_string());
    assert_eq!(
        users,
        vec![
            json!({"authId": "user_a", "email": "ada@new.example.com", "name": "Ada Tester"}),
            json!({"authId": "user_b", "email": "bob@new.example.com", "name": "Bob Tester"}),
        ]
    );
    let mut lists = without_ids(documents(&store, "todoLists").await);
    lists.sort_by_key(|l| l["userId"].as_str().unwrap().to_string());
    assert_eq!(
        lists,
        vec![
            json!({"name": "Ada's Todo List", "userId": "user_a"}),
            // Named from the newest data the host holds, not the late create's.
            json!({"name": "Bob's Todo List", "userId": "user_b"}),
        ]
    );

    // The update that came first found no app user and said so in its log.
    let events =
        store.list_events(&authkit_host::store::inbox::EventFilter { limit: 100, ..Default::default() }).await.unwrap();
    let early_update =
        events.iter().find(|e| e.subject == "user:user_b" && e.event_type == "user.updated").expect("the early update");
    assert!(early_update.logs.as_deref().unwrap_or("").contains("User not found: user_b"), "{early_update:?}");
    assert!(events.iter().all(|e| e.status == "done"), "{events:?}");

    // Deleting removes the app user (the reference keeps the todo list).
    server.send("user.deleted", user("user_a", "ada@new.example.com", "Ada", T3), T3).await;
    settle(&store).await;
    let users = without_ids(documents(&store, "users").await);
    assert_eq!(users, vec![json!({"authId": "user_b", "email": "bob@new.example.com", "name": "Bob Tester"})]);
    assert_eq!(documents(&store, "todoLists").await.len(), 2);
}

async fn a_failing_handler_rolls_back_everything_retries_and_dead_letters(db: TestDb) {
    let server = TestServer::start_with(&db, with_handler(&db, "hostile", 3, "")).await;
    let store = db.store().await;
    // The handler refuses this user: the host's own sync must not stay either.
    let refused = server.send("user.created", user("user_f", "f@example.com", "Fail", T1), T1).await;
    // A later event of the same user waits for it; another user's does not.
    let later = server.send("session.created", json!({"id": "session_1", "user_id": "user_f"}), T2).await;
    let other = server.send("user.created", user("user_g", "g@example.com", "Gina", T1), T1).await;

    let dead = eventually("the refused event to be dead-lettered", Duration::from_secs(30), || async {
        let e = event(&store, &refused).await;
        (e.status == "dead").then_some(e)
    })
    .await;
    assert_eq!(dead.attempts, 3);
    assert!(dead.last_error.as_deref().unwrap().contains("refusing user user_f (attempt 3)"), "{dead:?}");
    assert!(dead.logs.is_some(), "the last attempt's log is kept");
    assert!(store.get_user("default", "user_f").await.unwrap().is_none(), "the sync was rolled back with the handler");
    assert!(store.get_user("default", "user_g").await.unwrap().is_some());
    assert_eq!(event(&store, &other).await.status, "done");

    // Once the refused event is dead, its user's later events proceed.
    settle(&store).await;
    assert_eq!(event(&store, &later).await.status, "done");
    // Only successful attempts left writes: the refused event's `seen` documents are gone.
    let seen: Vec<String> =
        documents(&store, "seen").await.iter().map(|d| d["event"].as_str().unwrap().to_string()).collect();
    assert!(!seen.contains(&refused), "{seen:?}");
    assert!(seen.contains(&other) && seen.contains(&later), "{seen:?}");

    // `events show` explains it.
    let (ok, out, err) = cli(&db, &["events", "show", &refused]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["status"], "dead");
    assert_eq!(shown["attempts"], 3);
    assert!(shown["last_error"].as_str().unwrap().contains("refusing user"));
    assert!(shown["logs"].is_array());
}

async fn a_dead_event_can_be_retried_once_the_cause_is_fixed(db: TestDb) {
    let server = TestServer::start_with(&db, with_handler(&db, "hostile", 1, "")).await;
    let store = db.store().await;
    let id = server.send("test.fail_unless_flagged", json!({"id": "x"}), T1).await;
    eventually("the event to be dead", Duration::from_secs(30), || async {
        (event(&store, &id).await.status == "dead").then_some(())
    })
    .await;
    assert!(event(&store, &id).await.last_error.unwrap().contains("no flag yet"));

    // Retrying an event that is not dead is refused.
    let (ok, _, err) = cli(&db, &["events", "retry", "event_does_not_exist"]);
    assert!(!ok && err.contains("no event"), "{err}");

    // The operator fixes the cause, then retries.
    with_documents(&store, Indexes::default(), |docs| docs.insert("flags", "{}").unwrap()).await;
    let (ok, out, err) = cli(&db, &["events", "retry", &id]);
    assert!(ok && out.contains("queued again"), "{out}{err}");
    settle(&store).await;
    let e = event(&store, &id).await;
    assert_eq!((e.status.as_str(), e.attempts), ("done", 1), "{e:?}");
    let (ok, _, err) = cli(&db, &["events", "retry", &id]);
    assert!(!ok && err.contains("not dead"), "{err}");
}

async fn hostile_guests_are_contained_and_the_host_keeps_serving(db: TestDb) {
    let config = "event_deadline_ms = 1000\nmemory_limit_mib = 32";
    let server = TestServer::start_with(&db, with_handler(&db, "hostile", 1, config)).await;
    let store = db.store().await;
    // A synced host user, so `users` really exists on the host side.
    server.send("user.created", user("user_h", "h@example.com", "Hana", T1), T1).await;

    let mut cases = Vec::new();
    for (i, kind) in ["loop", "sleep", "bomb", "recurse", "panic", "escape", "big", "flood", "peek"].iter().enumerate()
    {
        let subject = format!("user_{kind}");
        let bad = server.send(&format!("test.{kind}"), json!({"id": format!("x_{i}"), "user_id": subject}), T1).await;
        // A well-behaved event right after each one must still be handled.
        let good = server.send("test.ok", json!({"id": format!("ok_{i}")}), T2).await;
        cases.push((*kind, bad, good));
    }
    settle(&store).await;

    for (kind, bad, good) in &cases {
        assert_eq!(event(&store, good).await.status, "done", "the event after test.{kind}");
        let e = event(&store, bad).await;
        let error = e.last_error.clone().unwrap_or_default();
        match *kind {
            "loop" | "sleep" => assert!(e.status == "dead" && error.contains("deadline of 1000 ms"), "{e:?}"),
            "bomb" => assert!(e.status == "dead" && error.contains("memory limit of 32 MiB"), "{e:?}"),
            "recurse" => assert!(e.status == "dead" && error.contains("stack"), "{e:?}"),
            "panic" => assert!(e.status == "dead" && error.contains("trapped"), "{e:?}"),
            _ => assert_eq!(e.status, "done", "test.{kind}: {e:?}"),
        }
    }
    // The failed calls' writes were rolled back: only the successful ones left `seen` documents.
    let seen: Vec<String> =
        documents(&store, "seen").await.iter().map(|d| d["type"].as_str().unwrap().to_string()).collect();
    for kind in ["loop", "sleep", "bomb", "recurse", "panic"] {
        assert!(!seen.contains(&format!("test.{kind}")), "{seen:?}");
    }
    for kind in ["escape", "big", "flood", "peek", "ok"] {
        assert!(seen.contains(&format!("test.{kind}")), "{seen:?}");
    }

    // Files, directories, sockets, environment, arguments, stdin: nothing.
    let escape = &documents(&store, "escape").await[0];
    for flag in ["file_ok", "dir_ok", "tcp_ok", "udp_ok"] {
        assert_eq!(escape[flag], false, "{flag}: {escape}");
    }
    assert_eq!(escape["env"], json!([]), "{escape}");
    assert_eq!(escape["args"], json!([]), "{escape}");
    assert_eq!(escape["stdin"], "Ok(0)", "stdin is closed: reading it gives nothing");

    // Oversized documents, bad names and the call budget: typed errors.
    let big = &documents(&store, "big_results").await[0];
    assert!(big["insert_huge"].as_str().unwrap().contains("DocumentTooLarge(1048576)"), "{big}");
    assert!(big["bad_table"].as_str().unwrap().contains("InvalidTableName"), "{big}");
    assert!(big["not_object"].as_str().unwrap().contains("InvalidDocument"), "{big}");
    assert!(big["not_indexed"].as_str().unwrap().contains("NotIndexed"), "{big}");
    assert!(documents(&store, "big").await.is_empty());
    let big_event = event(&store, &cases.iter().find(|c| c.0 == "big").unwrap().1).await;
    assert!(big_event.logs.unwrap().contains("TooManyCalls(1000)"));

    // A log flood is cut to the cap, with a count of what was dropped.
    let flood = event(&store, &cases.iter().find(|c| c.0 == "flood").unwrap().1).await;
    let lines: Vec<String> = serde_json::from_str(flood.logs.as_deref().unwrap()).unwrap();
    assert!(lines.len() <= 101, "{} lines kept", lines.len());
    assert!(lines.last().unwrap().contains("more log lines dropped"), "{:?}", lines.last());
    assert!(lines.iter().map(String::len).sum::<usize>() <= 16 * 1024 + 200);

    // The host's own tables are not reachable by any name.
    let peek = &documents(&store, "peek").await[0];
    for found in peek["found"].as_array().unwrap() {
        assert_eq!(found["documents"], 0, "{found}");
    }
    for refused in peek["refused"].as_array().unwrap() {
        assert!(refused.as_str().unwrap().contains("InvalidTableName"), "{refused}");
    }
    assert!(store.get_user("default", "user_h").await.unwrap().is_some(), "the host's users table is intact");

    // And the server still answers.
    assert_eq!(server.get("/healthz").await.status, 200);
}

/// Two host processes on one Postgres database keep each user's events in
/// order: neither takes an event while the other still holds an older one of
/// the same user. (SQLite has one process by design.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_on_postgres_keep_per_user_order() {
    let Some(db) = TestDb::create(Backend::Postgres, "two_processes").await else { return };
    let options = with_handler(&db, "hostile", 20, "");
    let first = TestServer::start_with(&db, options.clone()).await;
    let second = TestServer::start_with(&db, options).await;
    let store = db.store().await;
    let (users, per_user) = (4, 30);
    for n in 0..per_user {
        for u in 0..users {
            let at = format!("2025-01-01T00:00:{:02}.{:03}Z", n / 1000, n % 1000);
            let data = json!({"id": format!("seq_{u}_{n}"), "user_id": format!("user_{u}"), "n": n});
            // Alternate the process that receives each event.
            let server = if (n + u) % 2 == 0 { &first } else { &second };
            server.send("test.seq", data, &at).await;
        }
    }
    settle(&store).await;
    let violations = documents(&store, "violations").await;
    assert!(violations.is_empty(), "events applied out of order: {violations:?}");
    let mut last: Vec<(String, i64)> = documents(&store, "seq")
        .await
        .iter()
        .map(|d| (d["subject"].as_str().unwrap().to_string(), d["last"].as_i64().unwrap()))
        .collect();
    last.sort();
    let expected: Vec<(String, i64)> = (0..users).map(|u| (format!("user_{u}"), per_user - 1)).collect();
    assert_eq!(last, expected);
    // Both processes did part of the work.
    let events = store
        .list_events(&authkit_host::store::inbox::EventFilter { limit: 1000, ..Default::default() })
        .await
        .unwrap();
    assert_eq!(events.iter().filter(|e| e.status == "done").count() as i64, users * per_user);
    drop((first, second));
}

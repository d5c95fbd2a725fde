//! The process as an operator meets it: zero-configuration start, configuration
//! errors, graceful stop with requests in flight, crash and restart, the CLI.

use std::collections::HashSet;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use authkit_host::store::Store;
use authkit_host::store::inbox::EventFilter;
use authkit_host::workos::event::RecordKind;
use authkit_tests::fault::{self, DISK_FULL, Deliveries, FAILED_SYNC, PowerCut, failing_disk};
use authkit_tests::server::{cli, host_binary};
use authkit_tests::workos::user;
use authkit_tests::{Backend, ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::Value;
use sqlx::Connection;

on_both_backends!(
    sigterm_finishes_in_flight_requests_and_loses_nothing_acknowledged,
    a_crash_loses_no_acknowledged_event_and_each_is_applied_exactly_once,
    the_cli_lists_users_and_pages_through_them,
    a_config_file_supplies_the_secret,
    a_host_stops_once_a_newer_version_has_migrated_its_database,
    a_host_deletes_done_events_older_than_it_keeps_them,
);

async fn settle(store: &Store) {
    eventually("the worker to finish", Duration::from_secs(60), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
}

fn user_event(server: &TestServer, i: usize) -> (String, Vec<u8>) {
    let at = "2025-01-01T00:00:00.000Z";
    server.emulator.event("user.created", user(&format!("user_{i:04}"), &format!("u{i}@example.com"), "U", at), at)
}

#[tokio::test]
async fn with_no_configuration_it_starts_on_an_embedded_sqlite_file() {
    let db = TestDb::create(Backend::Sqlite, "zero_config").await.unwrap();
    let server =
        TestServer::start_with(&db, ServerOptions { secret: None, database: false, ..Default::default() }).await;
    let file = db.dir.path().join("authkit.db");
    assert!(file.exists(), "no ./authkit.db in the working directory");
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", file.display())).await.unwrap();
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await.unwrap();
    assert_eq!(mode, "wal");
    conn.close().await.unwrap();

    let (_, body) = user_event(&server, 1);
    let reply = server.deliver(&body).await;
    assert_eq!((reply.status, reply.code()), (503, "webhook_secret_not_configured"));
    assert!(server.log().contains("WORKOS_WEBHOOK_SECRET is not set"));
    // SIGINT stops it cleanly too.
    let mut server = server;
    server.signal("INT");
    let status = server.wait_exit().await;
    assert_eq!(status.code(), Some(0), "{}", server.log());
}

#[tokio::test]
async fn an_invalid_setting_stops_start_up_with_a_clear_message() {
    for (var, value, expect) in [
        ("DATABASE_URL", "mysql://localhost/x", "database_url"),
        ("AUTHKIT_LISTEN", "everywhere", "listen"),
        ("WORKOS_WEBHOOK_SECRET", "", "WORKOS_WEBHOOK_SECRET is set but empty"),
    ] {
        let out = Command::new(host_binary()).env_clear().env(var, value).arg("serve").output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{var}={value}: {stderr}");
        assert!(stderr.contains(expect), "{var}={value}: {stderr}");
    }
}

async fn sigterm_finishes_in_flight_requests_and_loses_nothing_acknowledged(db: TestDb) {
    let mut server = TestServer::start(&db).await;
    let bodies: Vec<_> = (0..400).map(|i| user_event(&server, i)).collect();
    let server_ref = Arc::new(server);
    let acked_count = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for (id, body) in bodies {
        let (server, acked_count) = (server_ref.clone(), acked_count.clone());
        tasks.push(tokio::spawn(async move {
            let reply = server.try_deliver(&body).await;
            match reply {
                Ok(r) if r.status == 200 => {
                    acked_count.fetch_add(1, Ordering::SeqCst);
                    Some(id)
                }
                _ => None,
            }
        }));
    }
    eventually("some acknowledgements", Duration::from_secs(30), || async {
        (acked_count.load(Ordering::SeqCst) >= 20).then_some(())
    })
    .await;
    server_ref.terminate();
    let mut acked = HashSet::new();
    for task in tasks {
        if let Some(id) = task.await.unwrap() {
            acked.insert(id);
        }
    }
    server = Arc::into_inner(server_ref).expect("all requests finished");
    let status = server.wait_exit().await;
    assert_eq!(status.code(), Some(0), "not a clean exit:\n{}", server.log());
    assert!(server.log().contains("shutdown complete"));

    let store = db.store().await;
    let stored: HashSet<String> = store
        .list_events(&EventFilter { limit: 10_000, ..Default::default() })
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.event_id)
        .collect();
    eprintln!("acknowledged {} of 400 before the stop; {} stored", acked.len(), stored.len());
    let lost: Vec<_> = acked.difference(&stored).collect();
    assert!(lost.is_empty(), "{} acknowledged events were lost: {lost:?}", lost.len());

    // A restart applies whatever the stop left pending.
    let _again = TestServer::start(&db).await;
    settle(&store).await;
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap() as usize, stored.len());
}

async fn a_crash_loses_no_acknowledged_event_and_each_is_applied_exactly_once(db: TestDb) {
    let store = db.store().await;
    // 1. Acknowledged, never processed: an ingest-only process, killed.
    let mut server = TestServer::start_with(&db, ServerOptions::default().arg("--no-worker")).await;
    let mut acked = Vec::new();
    for i in 0..50 {
        let (id, body) = user_event(&server, i);
        assert_eq!(server.deliver(&body).await.status, 200);
        acked.push(id);
    }
    assert_eq!(store.count_unfinished().await.unwrap(), 50);
    server.crash();

    // 2. Killed again while the worker may be in the middle of a batch.
    let mut server = TestServer::start(&db).await;
    let more: Vec<_> = (50..300).map(|i| user_event(&server, i)).collect();
    let server_ref = Arc::new(server);
    let mut tasks = Vec::new();
    for (id, body) in more {
        let s = server_ref.clone();
        tasks.push(tokio::spawn(async move { (s.deliver(&body).await.status == 200).then_some(id) }));
    }
    for task in tasks {
        acked.push(task.await.unwrap().expect("acknowledged"));
    }
    server = Arc::into_inner(server_ref).unwrap();
    server.crash();

    // 3. Restart: everything acknowledged is applied, each exactly once.
    let _server = TestServer::start(&db).await;
    settle(&store).await;
    for id in &acked {
        let e = store.get_event("default", id).await.unwrap().unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!((e.status.as_str(), e.attempts), ("done", 1), "{id}");
    }
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap(), 300);
}

async fn the_cli_lists_users_and_pages_through_them(db: TestDb) {
    let server = TestServer::start(&db).await;
    for i in 0..5 {
        let (_, body) = user_event(&server, i);
        assert_eq!(server.deliver(&body).await.status, 200);
    }
    // A name and an event id that would add a row and clear the screen if printed as they are.
    let at = "2025-01-01T00:00:00.000Z";
    let (_, body) =
        server.emulator.event("user.created", user("user_0099", "eve@example.com", "Eve\u{1b}[2J\nuser_fake", at), at);
    let mut forged: Value = serde_json::from_slice(&body).unwrap();
    forged["id"] = "evt_eve\nforged-row".into();
    assert_eq!(server.deliver(&serde_json::to_vec(&forged).unwrap()).await.status, 200);
    settle(&db.store().await).await;
    let (ok, table, _) = cli(&db, &["users", "list"]);
    assert!(ok);
    assert!(table.starts_with("ID"), "{table}");
    assert_eq!(table.lines().count(), 7, "{table}");
    assert!(table.contains("u3@example.com"));
    assert!(!table.contains('\u{1b}') && table.contains("Eve\\u{1b}[2J\\u{a}user_fake"), "{table}");
    let (ok, page, _) = cli(&db, &["users", "list", "--json", "--limit", "2", "--after", "user_0001"]);
    assert!(ok);
    let ids: Vec<String> =
        page.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["user_0002", "user_0003"]);
    let (ok, _, err) = cli(&db, &["users", "get", "user_missing"]);
    assert!(!ok && err.contains("no user with id"), "{err}");
    let (ok, events, _) = cli(&db, &["events", "list", "--status", "done", "--type", "user.created"]);
    assert!(ok);
    assert_eq!(events.lines().count(), 7, "{events}");
    assert!(events.contains("evt_eve\\u{a}forged-row"), "{events}");
    // JSON output keeps the text as it is (JSON escapes it).
    let (ok, page, _) = cli(&db, &["users", "list", "--json", "--after", "user_0004"]);
    assert!(ok);
    let eve: Value = serde_json::from_str(page.lines().next().unwrap()).unwrap();
    assert_eq!(eve["first_name"], "Eve\u{1b}[2J\nuser_fake");
}

async fn a_config_file_supplies_the_secret(db: TestDb) {
    let path = db.dir.path().join("authkit.toml");
    std::fs::write(&path, "[workos]\nwebhook_secret = \"whsec_from_file\"\n").unwrap();
    let options = ServerOptions { secret: None, ..Default::default() }.arg("--config").arg(path.to_str().unwrap());
    let mut server = TestServer::start_with(&db, options).await;
    server.emulator = authkit_tests::Emulator::new("whsec_from_file");
    let (_, body) = user_event(&server, 1);
    assert_eq!(server.deliver(&body).await.status, 200);
}

/// `inbox.keep_done_days` (30 by default): a host deletes done events once
/// they were processed that long ago, when it starts and hourly after; dead
/// and unfinished events stay however old, and the users table is not
/// touched. With 0 nothing is deleted.
async fn a_host_deletes_done_events_older_than_it_keeps_them(db: TestDb) {
    let store = db.store().await;
    let mut server = TestServer::start(&db).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let (id, body) = user_event(&server, i);
        assert_eq!(server.deliver(&body).await.status, 200);
        ids.push((id, body));
    }
    settle(&store).await;
    server.terminate();
    assert!(server.wait_exit().await.success());
    // Events 0-2 were received and processed 31 days ago; 3 too, and went dead
    // then; 4 was received then and failed (its retry is far off); 5 is recent.
    let day: i64 = 24 * 60 * 60 * 1000;
    let event_ids = |range: std::ops::Range<usize>| {
        ids[range].iter().map(|(id, _)| format!("'{id}'")).collect::<Vec<_>>().join(", ")
    };
    db.execute(&format!(
        "UPDATE inbox SET received_at = received_at - {}, processed_at = processed_at - {} WHERE event_id IN ({})",
        31 * day,
        31 * day,
        event_ids(0..5)
    ))
    .await;
    db.execute(&format!("UPDATE inbox SET status = 'dead' WHERE event_id = '{}'", ids[3].0)).await;
    db.execute(&format!(
        "UPDATE inbox SET status = 'failed', processed_at = NULL, next_attempt_at = next_attempt_at + {} \
         WHERE event_id = '{}'",
        365 * day,
        ids[4].0
    ))
    .await;
    let status = |i: usize| {
        let store = store.clone();
        let id = ids[i].0.clone();
        async move { store.get_event("default", &id).await.unwrap().map(|e| e.status) }
    };

    // Kept for good: the old events are still there once the host serves.
    let mut server =
        TestServer::start_with(&db, ServerOptions::default().env("AUTHKIT_INBOX_KEEP_DONE_DAYS", "0")).await;
    assert!(server.log().contains("done events are kept for good"), "{}", server.log());
    assert_eq!(status(0).await.as_deref(), Some("done"));
    server.terminate();
    assert!(server.wait_exit().await.success());

    // The default: the done ones processed 31 days ago go at start.
    let server = TestServer::start(&db).await;
    eventually("the old done events to be deleted", Duration::from_secs(30), || async {
        status(0).await.is_none().then_some(())
    })
    .await;
    let mut statuses = Vec::new();
    for i in 0..6 {
        statuses.push(status(i).await);
    }
    let expected = [None, None, None, Some("dead"), Some("failed"), Some("done")];
    assert_eq!(statuses, expected.map(|s| s.map(String::from)));
    assert!(server.log().contains("deleted done events older than inbox.keep_done_days"), "{}", server.log());
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap(), 6);
    // A redelivery of a recent event is still told apart; one of a deleted
    // event (WorkOS retries for about 3 days, so it does not send one) is
    // stored again and changes nothing in the users table.
    let again = server.deliver(&ids[5].1).await;
    assert_eq!((again.status, again.body["duplicate"].as_bool()), (200, Some(true)));
    let again = server.deliver(&ids[0].1).await;
    assert_eq!((again.status, again.body["duplicate"].as_bool()), (200, Some(false)));
    eventually("the redelivered event to be applied", Duration::from_secs(30), || async {
        (status(0).await.as_deref() == Some("done")).then_some(())
    })
    .await;
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap(), 6);
}

/// What a newer authkit-host records when it migrates the database (one more
/// migration than this build knows), while this one runs.
async fn migrate_as_a_newer_version(db: &TestDb) {
    let checksum = match db.backend {
        Backend::Sqlite => "X'00'",
        Backend::Postgres => "decode('00', 'hex')",
    };
    db.execute(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990001, 'a newer host', TRUE, {checksum}, 1)"
    ))
    .await;
}

async fn a_host_stops_once_a_newer_version_has_migrated_its_database(db: TestDb) {
    let mut server = TestServer::start(&db).await;
    let (first, body) = user_event(&server, 1);
    assert_eq!(server.deliver(&body).await.status, 200);
    let store = db.store().await;
    settle(&store).await;
    // Its own schema is no reason to stop: it serves through several checks.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let (_, body) = user_event(&server, 2);
    assert_eq!(server.deliver(&body).await.status, 200, "{}", server.log());

    migrate_as_a_newer_version(&db).await;
    let status = server.wait_exit().await;
    assert!(!status.success(), "an outdated host must not exit as if asked to stop: {status}");
    let log = server.log();
    assert!(log.contains("migrated by a newer authkit-host (schema version 99990001"), "{log}");
    // What it had acknowledged is still there.
    assert!(store.get_event("default", &first).await.unwrap().is_some());

    // Started again, this build refuses the database at once and says why.
    let (ok, _, err) = cli(&db, &["users", "list"]);
    assert!(!ok, "{err}");
    assert!(err.contains("migrated by a newer authkit-host") && err.contains("same version"), "{err}");
}

/// SQLite: once syncing the database's log fails (a disk error, made here by
/// a shim loaded with `LD_PRELOAD`, see `tests/fault/`), nothing more is
/// acknowledged, not even after the disk works again (the pages a failed
/// sync could not write are marked written, so a later sync can succeed
/// without them), and the host stops with an error saying why. Started again
/// on a sound disk, it has everything it acknowledged, and the events it
/// refused are stored once when WorkOS sends them again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_of_the_log_stops_the_host_and_nothing_after_it_is_acknowledged() {
    let Some(db) = TestDb::create(Backend::Sqlite, "failed_sync").await else { return };
    let (options, marker) = (failing_disk(&db, ServerOptions::default()), db.dir.path().join(FAILED_SYNC));
    let mut server = TestServer::start_with(&db, options).await;
    let mut acknowledged = Vec::new();
    for i in 0..5 {
        let (id, body) = user_event(&server, i);
        assert_eq!(server.deliver(&body).await.status, 200, "{}", server.log());
        acknowledged.push(id);
    }

    std::fs::write(&marker, b"").unwrap();
    let (_, failed) = user_event(&server, 5);
    let reply = server.deliver(&failed).await;
    assert_eq!((reply.status, reply.code()), (503, "storage_unavailable"), "{reply:?}");
    // The disk works again; the host still acknowledges nothing.
    std::fs::remove_file(&marker).unwrap();
    let (_, after) = user_event(&server, 6);
    match server.try_deliver(&after).await {
        Ok(reply) => assert_eq!(reply.status, 503, "acknowledged after a failed sync: {reply:?}"),
        Err(e) => assert!(e.is_connect() || e.is_request(), "{e}"),
    }
    let status = server.wait_exit().await;
    assert!(!status.success(), "a host whose log failed must not exit as if asked to stop: {status}");
    let log = server.log();
    assert!(log.contains("syncing the SQLite database's log failed"), "{log}");
    assert!(log.contains("Input/output error"), "the disk's error is logged: {log}");

    // On a sound disk: what was acknowledged is there; WorkOS sends the rest again.
    let server = TestServer::start(&db).await;
    for body in [&failed, &after] {
        assert_eq!(server.deliver(body).await.status, 200, "{}", server.log());
    }
    let store = db.store().await;
    settle(&store).await;
    for id in &acknowledged {
        assert!(store.get_event("default", id).await.unwrap().is_some(), "{id} was acknowledged and is gone");
    }
    let users = store.list_users("default", None, 100).await.unwrap();
    assert_eq!(users.len(), 7, "{users:?}");
}

/// SQLite: while the disk is full (writes to the log fail with ENOSPC, made by
/// the shim in `tests/fault/`), webhooks get 503 and nothing is acknowledged;
/// the host keeps serving, and once there is room again it acknowledges and
/// applies events as before, the refused ones included when sent again.
/// (Unlike a failed sync, a failed write leaves nothing behind that a later
/// sync could pass over: SQLite rolls the transaction back.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_webhooks_until_there_is_room_and_loses_nothing() {
    let Some(db) = TestDb::create(Backend::Sqlite, "disk_full").await else { return };
    let full = db.dir.path().join(DISK_FULL);
    let server = TestServer::start_with(&db, failing_disk(&db, ServerOptions::default())).await;
    let deliver = |i: usize| {
        let (id, body) = user_event(&server, i);
        let server = &server;
        async move { (id, body.clone(), server.deliver(&body).await) }
    };
    let mut acknowledged = Vec::new();
    for i in 0..3 {
        let (id, _, reply) = deliver(i).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        acknowledged.push(id);
    }
    std::fs::write(&full, b"").unwrap();
    let mut refused = Vec::new();
    for i in 3..6 {
        let (id, body, reply) = deliver(i).await;
        assert_eq!((reply.status, reply.code()), (503, "storage_unavailable"), "{reply:?}");
        refused.push((id, body));
    }
    std::fs::remove_file(&full).unwrap();
    for i in 6..9 {
        let (id, _, reply) = deliver(i).await;
        assert_eq!(reply.status, 200, "once there is room again: {reply:?}\n{}", server.log());
        acknowledged.push(id);
    }
    // WorkOS sends the refused ones again.
    for (id, body) in &refused {
        assert_eq!(server.deliver(body).await.status, 200);
        acknowledged.push(id.clone());
    }
    let store = db.store().await;
    settle(&store).await;
    for id in &acknowledged {
        assert!(store.get_event("default", id).await.unwrap().is_some(), "{id} was acknowledged and is gone");
    }
    assert_eq!(store.list_users("default", None, 100).await.unwrap().len(), 9);
    assert!(
        server.log().contains("No space left on device") || server.log().contains("database or disk is full"),
        "the cause is logged: {}",
        server.log()
    );
}

/// SQLite: a power cut loses no acknowledged webhook. The host runs over a
/// disk that keeps only what was synced (the shim `tests/fault/power_cut.c`
/// journals every write to the database's files; after the process is
/// killed, every write since its file's last sync is undone), while 16
/// senders deliver webhooks and the worker applies them, at different times
/// after the start, so that the cut may fall in the checkpointer's copy of the
/// log into the database file. Three times (`AUTHKIT_TEST_POWER_CUTS`): cut,
/// start again over the same disk. Then, on a sound disk: every acknowledged
/// event is in the inbox and applied, and the database is intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_acknowledged_webhook() {
    let Some(db) = TestDb::create(Backend::Sqlite, "power_cut").await else { return };
    let disk = PowerCut::new(&db);
    let deliveries = Deliveries::default();
    let mut undone = Vec::new();
    for cut in 0..fault::cuts() {
        let server = Arc::new(TestServer::start_with(&db, disk.under(ServerOptions::default())).await);
        let before = deliveries.acknowledged_count();
        let senders = deliveries.start(&server, 16);
        eventually("100 more acknowledgements", Duration::from_secs(60), || async {
            (deliveries.acknowledged_count() >= before + 100).then_some(())
        })
        .await;
        // Then 0, 450 or 900 ms more, so that cuts fall before, during and
        // after the checkpointer's first copy of the log (1 s after start).
        tokio::time::sleep(Duration::from_millis(450 * (cut as u64 % 3))).await;
        undone.push(disk.kill_and_cut(server, senders).await);
    }
    eprintln!("undone at each cut: {undone:?}");
    assert!(undone.iter().any(|cut| cut.writes() > 0), "no cut found unsynced writes to undo: {undone:?}");

    let _server = TestServer::start(&db).await;
    let store = db.store().await;
    settle(&store).await;
    let acknowledged = deliveries.acknowledged();
    let mut lost = Vec::new();
    for id in &acknowledged {
        let event = store.get_event("default", id).await.unwrap();
        if event.as_ref().map(|e| e.status.as_str()) != Some("done") {
            lost.push((id, event.map(|e| e.status)));
        }
    }
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged events lost or not applied: {lost:?}",
        lost.len(),
        acknowledged.len()
    );
    let users = store.count_records(RecordKind::User, "default").await.unwrap() as usize;
    assert!(
        (acknowledged.len()..=deliveries.sent()).contains(&users),
        "{users} users from {} acknowledged of {} sent",
        acknowledged.len(),
        deliveries.sent()
    );
    let mut conn = sqlx::SqliteConnection::connect(&db.url).await.unwrap();
    let check: String = sqlx::query_scalar("PRAGMA integrity_check").fetch_one(&mut conn).await.unwrap();
    assert_eq!(check, "ok");
}

//! The worker keeps the directory tables right whatever the delivery order:
//! stale updates skipped, updates before creates inserted, deletes tombstoned,
//! the same for organizations and memberships, failures retried in order.

use std::time::Duration;

use authkit_host::store::Store;
use authkit_host::store::inbox::{EventFilter, InboxEvent, Status};
use authkit_host::workos::event::RecordKind;
use authkit_tests::server::cli;
use authkit_tests::workos::{membership, organization, user};
use authkit_tests::{Backend, ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(
    a_created_user_is_stored_with_every_documented_field,
    an_update_older_than_the_stored_one_is_skipped,
    an_update_before_its_create_inserts_and_the_late_create_is_skipped,
    a_deleted_user_stays_deleted_whatever_arrives_later,
    a_delete_before_the_create_keeps_the_user_out,
    events_stored_together_are_applied_oldest_first,
    organizations_follow_the_same_rules,
    a_record_without_timestamps_applies_as_the_first_of_its_kind,
    memberships_follow_the_same_rules,
    other_event_types_are_kept_and_marked_handled,
    a_failing_event_is_retried_with_backoff_and_later_events_of_its_user_wait,
    an_event_out_of_attempts_is_dead_lettered_and_listed,
);

const T1: &str = "2025-01-01T00:00:01.000Z";
const T2: &str = "2025-01-01T00:00:02.000Z";
const T3: &str = "2025-01-01T00:00:03.000Z";

/// Waits until the inbox has nothing pending. If it never empties, the
/// failure names each unfinished event with its attempts and last error.
async fn settle(store: &Store) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while store.count_unfinished().await.unwrap() > 0 {
        if tokio::time::Instant::now() > deadline {
            let events = store.list_events(&EventFilter::default()).await.unwrap();
            let stuck: Vec<String> = events
                .iter()
                .filter(|e| e.status != "done" && e.status != "dead")
                .map(|e| {
                    format!(
                        "{} {} {} attempts={} next_attempt_at={} error={:?}",
                        e.event_id, e.event_type, e.status, e.attempts, e.next_attempt_at, e.last_error
                    )
                })
                .collect();
            panic!("timed out after 30s waiting for the worker to finish; unfinished:\n{}", stuck.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn event(store: &Store, id: &str) -> InboxEvent {
    store.get_event("default", id).await.unwrap().expect("event in inbox")
}

fn user_json(db: &TestDb, id: &str) -> Option<Value> {
    let (ok, out, _) = cli(db, &["users", "get", id]);
    ok.then(|| serde_json::from_str(&out).expect("users get prints JSON"))
}

async fn a_created_user_is_stored_with_every_documented_field(db: TestDb) {
    let server = TestServer::start(&db).await;
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/user.json")).unwrap();
    let id = server.send("user.created", fixture.clone(), "2023-07-18T02:07:19.911Z").await;
    settle(&db.store().await).await;
    let stored = user_json(&db, "user_01H5JQDV7R7ATEYZDEG0W5PRYS").expect("user stored");
    for field in [
        "object",
        "id",
        "email",
        "email_verified",
        "first_name",
        "last_name",
        "name",
        "profile_picture_url",
        "last_sign_in_at",
        "locale",
        "metadata",
        "created_at",
        "updated_at",
    ] {
        assert_eq!(stored[field], fixture[field], "field {field}");
    }
    assert_eq!(stored["external_id"], Value::Null);
    assert_eq!(stored["last_event_id"], json!(id));
    assert_eq!(event(&db.store().await, &id).await.outcome.as_deref(), Some("applied"));
}

async fn an_update_older_than_the_stored_one_is_skipped(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    server.send("user.created", user("user_s", "s1@example.com", "One", T1), T1).await;
    server.send("user.updated", user("user_s", "s3@example.com", "Three", T3), T3).await;
    settle(&store).await;
    let stale = server.send("user.updated", user("user_s", "s2@example.com", "Two", T2), T2).await;
    settle(&store).await;
    assert_eq!(event(&store, &stale).await.outcome.as_deref(), Some("skipped"));
    let stored = user_json(&db, "user_s").unwrap();
    assert_eq!((stored["email"].as_str(), stored["updated_at"].as_str()), (Some("s3@example.com"), Some(T3)));
    // The same version again is harmless; a newer one wins.
    server.send("user.updated", user("user_s", "s4@example.com", "Four", "2025-01-01T00:00:04.000Z"), T3).await;
    settle(&store).await;
    assert_eq!(user_json(&db, "user_s").unwrap()["first_name"], "Four");
}

async fn an_update_before_its_create_inserts_and_the_late_create_is_skipped(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    server.send("user.updated", user("user_u", "new@example.com", "New", T2), T2).await;
    settle(&store).await;
    assert_eq!(user_json(&db, "user_u").expect("inserted by the update")["email"], "new@example.com");
    let late = server.send("user.created", user("user_u", "old@example.com", "Old", T1), T1).await;
    settle(&store).await;
    assert_eq!(event(&store, &late).await.outcome.as_deref(), Some("skipped"));
    assert_eq!(user_json(&db, "user_u").unwrap()["email"], "new@example.com");
}

async fn a_deleted_user_stays_deleted_whatever_arrives_later(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    server.send("user.created", user("user_d", "d@example.com", "Dee", T1), T1).await;
    settle(&store).await;
    assert!(user_json(&db, "user_d").is_some());
    // A trimmed payload: only the id.
    let deleted = server.send("user.deleted", json!({"id": "user_d"}), T2).await;
    settle(&store).await;
    assert_eq!(event(&store, &deleted).await.outcome.as_deref(), Some("deleted"));
    assert!(user_json(&db, "user_d").is_none());
    assert!(store.is_tombstoned(RecordKind::User, "default", "user_d").await.unwrap());
    // Late or replayed events, even newer-looking ones, never bring it back.
    for (kind, at) in [("user.created", T1), ("user.updated", T3), ("user.updated", "2030-01-01T00:00:00.000Z")] {
        let id = server.send(kind, user("user_d", "back@example.com", "Back", at), at).await;
        settle(&store).await;
        assert_eq!(event(&store, &id).await.outcome.as_deref(), Some("skipped"), "{kind} at {at}");
    }
    assert!(user_json(&db, "user_d").is_none());
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap(), 0);
}

async fn a_delete_before_the_create_keeps_the_user_out(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    server.send("user.deleted", user("user_x", "x@example.com", "Ex", T2), T2).await;
    settle(&store).await;
    server.send("user.created", user("user_x", "x@example.com", "Ex", T1), T1).await;
    settle(&store).await;
    assert!(user_json(&db, "user_x").is_none());
}

async fn events_stored_together_are_applied_oldest_first(db: TestDb) {
    // Stored while no worker runs, in the wrong order; applied after a restart.
    let server = TestServer::start_with(&db, ServerOptions::default().arg("--no-worker")).await;
    let store = db.store().await;
    let newest = server.send("user.updated", user("user_o", "3@example.com", "Three", T3), T3).await;
    let oldest = server.send("user.created", user("user_o", "1@example.com", "One", T1), T1).await;
    let middle = server.send("user.updated", user("user_o", "2@example.com", "Two", T2), T2).await;
    assert_eq!(store.count_unfinished().await.unwrap(), 3);
    drop(server);
    let _server = TestServer::start(&db).await;
    settle(&store).await;
    // Oldest first: each one applies on top of the previous, none is skipped.
    for id in [&oldest, &middle, &newest] {
        assert_eq!(event(&store, id).await.outcome.as_deref(), Some("applied"), "{id}");
    }
    assert_eq!(user_json(&db, "user_o").unwrap()["email"], "3@example.com");
}

async fn organizations_follow_the_same_rules(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    server.send("organization.updated", organization("org_1", "Two", T2), T2).await;
    settle(&store).await;
    let stale = server.send("organization.created", organization("org_1", "One", T1), T1).await;
    settle(&store).await;
    assert_eq!(event(&store, &stale).await.outcome.as_deref(), Some("skipped"));
    assert_eq!(store.count_records(RecordKind::Organization, "default").await.unwrap(), 1);
    // The fixture has no timestamps at all: versioned by the event's time.
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/get-organization.json")).unwrap();
    let fx = server.send("organization.created", fixture, T1).await;
    settle(&store).await;
    assert_eq!(event(&store, &fx).await.outcome.as_deref(), Some("applied"));
    assert_eq!(store.count_records(RecordKind::Organization, "default").await.unwrap(), 2);
    server.send("organization.deleted", json!({"id": "org_1"}), T3).await;
    server.send("organization.updated", organization("org_1", "Back", "2030-01-01T00:00:00.000Z"), T3).await;
    settle(&store).await;
    assert_eq!(store.count_records(RecordKind::Organization, "default").await.unwrap(), 1);
    assert!(store.is_tombstoned(RecordKind::Organization, "default", "org_1").await.unwrap());
}

/// The first organization a fresh server stores has no timestamps (empty
/// BIGINT fields): the statement's first run on its connection must not give
/// them a type their columns refuse (Postgres fixes parameter types then).
async fn a_record_without_timestamps_applies_as_the_first_of_its_kind(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/get-organization.json")).unwrap();
    assert!(fixture.get("created_at").is_none_or(Value::is_null), "the fixture has no created_at");
    let first = server.send("organization.created", fixture, T1).await;
    settle(&store).await;
    let applied = event(&store, &first).await;
    assert_eq!(applied.outcome.as_deref(), Some("applied"), "{:?}", applied.last_error);
    assert_eq!(applied.attempts, 1, "applied at the first attempt: {:?}", applied.last_error);
    assert_eq!(store.count_records(RecordKind::Organization, "default").await.unwrap(), 1);
    // A later one with timestamps, on whatever connection, applies too.
    server.send("organization.created", organization("org_2", "Two", T2), T2).await;
    settle(&store).await;
    assert_eq!(store.count_records(RecordKind::Organization, "default").await.unwrap(), 2);
}

async fn memberships_follow_the_same_rules(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    let fixture: Value = serde_json::from_str(include_str!("../fixtures/organization-membership.json")).unwrap();
    server.send("organization_membership.created", fixture, "2023-07-18T02:07:19.911Z").await;
    server.send("organization_membership.updated", membership("om_2", "user_m", "org_1", "admin", T2), T2).await;
    settle(&store).await;
    let stale =
        server.send("organization_membership.created", membership("om_2", "user_m", "org_1", "member", T1), T1).await;
    settle(&store).await;
    assert_eq!(event(&store, &stale).await.outcome.as_deref(), Some("skipped"));
    assert_eq!(store.count_records(RecordKind::Membership, "default").await.unwrap(), 2);
    server.send("organization_membership.deleted", membership("om_2", "user_m", "org_1", "admin", T3), T3).await;
    settle(&store).await;
    server
        .send(
            "organization_membership.updated",
            membership("om_2", "user_m", "org_1", "owner", "2030-01-01T00:00:00.000Z"),
            T3,
        )
        .await;
    settle(&store).await;
    assert_eq!(store.count_records(RecordKind::Membership, "default").await.unwrap(), 1);
}

async fn other_event_types_are_kept_and_marked_handled(db: TestDb) {
    let server = TestServer::start(&db).await;
    let store = db.store().await;
    let fixture = include_bytes!("../fixtures/webhook.json");
    assert_eq!(server.deliver(fixture).await.status, 200);
    let session = server.send("session.created", json!({"id": "session_1", "user_id": "user_1"}), T1).await;
    settle(&store).await;
    for id in ["wh_123", session.as_str()] {
        let e = event(&store, id).await;
        assert_eq!((e.status.as_str(), e.outcome.as_deref()), ("done", Some("recorded")), "{id}");
    }
    let dsync = event(&store, "wh_123").await;
    assert_eq!(dsync.event_type, "dsync.user.created");
    assert_eq!(store.count_records(RecordKind::User, "default").await.unwrap(), 0);
    let (ok, out, _) = cli(&db, &["events", "list", "--type", "dsync.user.created", "--json"]);
    assert!(ok);
    let listed: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["event_id"], "wh_123");
    assert_eq!(listed[0]["status"], "done");
}

/// Makes every write of a user with this email fail inside the database.
async fn inject_failure(db: &TestDb, email: &str) {
    let sql = match db.backend {
        Backend::Sqlite => format!(
            "CREATE TRIGGER fail_insert BEFORE INSERT ON users WHEN NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;
             CREATE TRIGGER fail_update BEFORE UPDATE ON users WHEN NEW.email = '{email}' BEGIN SELECT RAISE(ABORT, 'injected failure'); END;"
        ),
        Backend::Postgres => format!(
            "CREATE FUNCTION fail_user() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN IF NEW.email = '{email}' THEN RAISE EXCEPTION 'injected failure'; END IF; RETURN NEW; END $$;
             CREATE TRIGGER fail_user BEFORE INSERT OR UPDATE ON users FOR EACH ROW EXECUTE FUNCTION fail_user();"
        ),
    };
    db.execute(&sql).await;
}

async fn heal(db: &TestDb) {
    let sql = match db.backend {
        Backend::Sqlite => "DROP TRIGGER fail_insert; DROP TRIGGER fail_update;",
        Backend::Postgres => "DROP TRIGGER fail_user ON users; DROP FUNCTION fail_user();",
    };
    db.execute(sql).await;
}

fn fast_retries(db: &TestDb, max_attempts: u32) -> ServerOptions {
    let path = db.dir.path().join("authkit.toml");
    std::fs::write(
        &path,
        format!(
            "[worker]\nretry_base_ms = 100\nretry_max_ms = 400\npoll_interval_ms = 50\nmax_attempts = {max_attempts}\n"
        ),
    )
    .unwrap();
    ServerOptions::default().arg("--config").arg(path.to_str().unwrap())
}

async fn a_failing_event_is_retried_with_backoff_and_later_events_of_its_user_wait(db: TestDb) {
    // Schema first (the server migrates), then the fault, then the traffic.
    let server = TestServer::start_with(&db, fast_retries(&db, 1000)).await;
    let store = db.store().await;
    inject_failure(&db, "fail@example.com").await;
    let failing = server.send("user.created", user("user_f", "fail@example.com", "F", T1), T1).await;
    let waiting = server.send("user.updated", user("user_f", "ok@example.com", "F", T2), T2).await;
    let other = server.send("user.created", user("user_g", "g@example.com", "G", T1), T1).await;

    let failed = eventually("a few retries", Duration::from_secs(30), || async {
        let e = event(&store, &failing).await;
        (e.attempts >= 3).then_some(e)
    })
    .await;
    assert_eq!(failed.status, "failed");
    assert!(failed.last_error.as_deref().unwrap_or("").contains("injected failure"), "{failed:?}");
    assert!(failed.processed_at.is_none());
    // The other user is unaffected; this user's newer event waits its turn.
    assert_eq!(event(&store, &other).await.status, "done");
    let w = event(&store, &waiting).await;
    assert_eq!((w.status.as_str(), w.attempts), ("pending", 0));
    assert!(user_json(&db, "user_f").is_none(), "a failed event left a partial write");

    heal(&db).await;
    settle(&store).await;
    let (first, second) = (event(&store, &failing).await, event(&store, &waiting).await);
    assert_eq!((first.status.as_str(), first.outcome.as_deref()), ("done", Some("applied")));
    assert_eq!((second.status.as_str(), second.outcome.as_deref()), ("done", Some("applied")));
    assert!(first.processed_at <= second.processed_at);
    assert_eq!(user_json(&db, "user_f").unwrap()["email"], "ok@example.com");
}

async fn an_event_out_of_attempts_is_dead_lettered_and_listed(db: TestDb) {
    let server = TestServer::start_with(&db, fast_retries(&db, 2)).await;
    let store = db.store().await;
    inject_failure(&db, "dead@example.com").await;
    let doomed = server.send("user.created", user("user_z", "dead@example.com", "Z", T1), T1).await;
    let after = server.send("user.updated", user("user_z", "alive@example.com", "Z", T2), T2).await;
    settle(&store).await;
    let dead = event(&store, &doomed).await;
    assert_eq!((dead.status.as_str(), dead.attempts), ("dead", 2));
    assert!(dead.last_error.unwrap().contains("injected failure"));
    // A dead event no longer holds up its subject.
    assert_eq!(event(&store, &after).await.status, "done");

    let listed =
        store.list_events(&EventFilter { status: Some(Status::Dead), limit: 10, ..Default::default() }).await.unwrap();
    assert_eq!(listed.len(), 1);
    let (ok, out, _) = cli(&db, &["events", "list", "--status", "dead"]);
    assert!(ok && out.contains(&doomed) && out.contains("injected failure"), "{out}");
    let (ok, out, _) = cli(&db, &["events", "list", "--status", "pending"]);
    assert!(ok && !out.contains(&doomed), "{out}");
    let (ok, _, err) = cli(&db, &["events", "list", "--status", "sideways"]);
    assert!(!ok && err.contains("unknown status"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_postgres_goes_away_webhooks_get_503_the_worker_backs_off_and_all_recovers() {
    let Some(db) = TestDb::create(Backend::Postgres, "postgres_goes_away").await else { return };
    let server = TestServer::start_with(&db, fast_retries(&db, 1000)).await;
    server.send("user.created", user("user_a", "a@example.com", "A", T1), T1).await;
    settle(&db.store().await).await;

    db.set_postgres_available(false).await;
    let (_, body) = server.emulator.event("user.created", user("user_b", "b@example.com", "B", T1), T1);
    let reply = server.deliver(&body).await;
    assert_eq!((reply.status, reply.code()), (503, "storage_unavailable"), "{reply:?}");
    eventually("the worker to report the outage", Duration::from_secs(20), || async {
        server.log().contains("worker could not process events; will retry").then_some(())
    })
    .await;
    // Nor does the check for a newer schema take an outage for a reason to stop.
    eventually("the schema watch to meet the outage", Duration::from_secs(20), || async {
        server.log().contains("could not check the database's schema version").then_some(())
    })
    .await;

    db.set_postgres_available(true).await;
    // WorkOS redelivers the refused webhook; the host serves it as if nothing happened.
    let reply = eventually("the host to store webhooks again", Duration::from_secs(30), || async {
        Some(server.deliver(&body).await).filter(|r| r.status == 200)
    })
    .await;
    assert_eq!(reply.body["duplicate"], json!(false));
    let store = db.store().await;
    settle(&store).await;
    assert!(user_json(&db, "user_a").is_some() && user_json(&db, "user_b").is_some());
}

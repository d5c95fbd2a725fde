//! Many tenants in one host: routes, secrets, tokens and data kept apart,
//! per-tenant handler versions and verdicts, deletion of everything a tenant
//! has, and a noisy neighbour that does not hold up another tenant's events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use authkit_host::store::Store;
use authkit_host::store::inbox::NewEvent;
use authkit_host::store::spill::Spill;
use authkit_host::store::tenants::TenantRow;
use authkit_tests::db::bare_tenant;
use authkit_tests::documents::tenant_documents;
use authkit_tests::fault::{self, DISK_FULL, Deliveries, PowerCut, SPILL_SYNC_FAILS, failing_disk};
use authkit_tests::guests::rust_guest;
use authkit_tests::server::{TEST_SECRET, cli};
use authkit_tests::workos::{Emulator, authentication_action, now_ms, user, verify_action_response};
use authkit_tests::{Backend, ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(
    tenants_are_kept_apart_in_routes_secrets_tokens_and_data,
    the_cli_manages_tenants_and_reads_one_tenant_at_a_time,
    a_tenant_token_cannot_raise_its_tenants_limits,
    a_tenant_tokens_versions_follow_their_tenants_lowered_limits,
    deleting_a_tenant_removes_everything_it_has,
    an_actions_handler_that_writes_after_its_tenant_is_deleted_leaves_nothing,
    a_token_is_not_stored_for_a_tenant_that_is_gone,
    a_slug_created_again_gets_none_of_the_deleted_tenants_events,
    a_noisy_neighbour_does_not_hold_up_another_tenant,
    a_timing_out_neighbour_does_not_hold_back_another_tenants_finished_events,
    a_slow_handler_does_not_hold_up_another_tenants_webhooks,
    another_process_on_the_same_database_follows_tenant_changes,
    one_tenant_cannot_take_every_actions_call,
    one_tenant_cannot_take_every_query_slot,
    a_tenant_cannot_store_more_documents_than_its_quota,
    an_actions_call_made_ready_ahead_follows_changed_limits,
    the_instance_pool_is_sized_for_the_tenants_stored_at_start,
    only_a_bounded_number_of_tenants_stay_loaded,
    loaded_tenants_hold_a_bounded_amount_of_compiled_code,
    a_busy_tenant_stays_loaded_while_others_come_and_go,
    a_closed_tenant_opens_again_with_its_indexes,
);

const ROOT: &str = "root-admin-token-for-tenant-tests";

/// `(slug, webhook secret, action secret)` of the tenants these tests create.
const TENANTS: [(&str, &str, &str); 3] = [
    ("acme", "whsec_acme_0001", "sk_action_acme"),
    ("globex", "whsec_globex_002", "sk_action_globex"),
    ("initech", "whsec_initech_03", "sk_action_initech"),
];

fn options(db: &TestDb) -> ServerOptions {
    options_with(db, "poll_interval_ms = 50\nretry_base_ms = 50\nretry_max_ms = 200\nmax_attempts = 3\n")
}

/// The root token, and a config file whose `[worker]` section is `worker`.
fn options_with(db: &TestDb, worker: &str) -> ServerOptions {
    let path = db.dir.path().join("authkit.toml");
    std::fs::write(&path, format!("[worker]\n{worker}")).unwrap();
    ServerOptions::default().env("AUTHKIT_ADMIN_TOKEN", ROOT).arg("--config").arg(path.to_str().unwrap())
}

fn body(value: Value) -> Option<Vec<u8>> {
    Some(value.to_string().into_bytes())
}

/// The `hostile` fixture stamped with version `n` (see `modules.rs`).
fn stamped(n: u32) -> Vec<u8> {
    let bytes = std::fs::read(rust_guest("hostile")).unwrap();
    let (from, to) = (b"authkit-test-version:000".as_slice(), format!("authkit-test-version:{n:03}"));
    let at = bytes.windows(from.len()).position(|w| w == from).expect("the version stamp");
    let mut out = bytes.clone();
    out[at..at + from.len()].copy_from_slice(to.as_bytes());
    out
}

async fn create(server: &TestServer, slug: &str, webhook: &str, action: &str, options: Value) {
    let new = json!({ "slug": slug, "webhook_secret": webhook, "action_secret": action, "options": options });
    let reply = server.admin("POST", "/admin/tenants", Some(ROOT), body(new)).await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

async fn deploy(server: &TestServer, slug: &str, bytes: Vec<u8>) {
    let reply = server.admin("POST", &format!("/t/{slug}/admin/modules?activate=true"), Some(ROOT), Some(bytes)).await;
    assert_eq!(reply.status, 201, "{reply:?}");
}

/// Sends an event to `path`'s tenant signed with `secret`; returns the event id and the status.
async fn deliver(server: &TestServer, path: &str, secret: &str, event_type: &str, data: Value) -> (String, u16) {
    let emulator = Emulator::new(secret);
    let (id, event) = emulator.event(event_type, data, "2025-01-01T00:00:01.000Z");
    let signature = emulator.signature(now_ms(), &event);
    let (status, _, _) = server.post_raw(path, event, &[("WorkOS-Signature", signature)]).await;
    (id, status)
}

fn webhook_path(slug: &str) -> String {
    if slug == "default" { "/workos/webhook".into() } else { format!("/t/{slug}/workos/webhook") }
}

/// An authentication request for a user named `first_name`, signed with `secret`:
/// the status, and the payload verified with `verify_with`.
async fn act(
    server: &TestServer,
    slug: &str,
    secret: &str,
    first_name: &str,
    verify_with: &str,
) -> (u16, Result<Value, String>) {
    let body = authentication_action(
        &format!("act_{}", now_ms()),
        user("user_1", "someone@example.com", first_name, "2025-01-01T00:00:01.000Z"),
    );
    let signature = Emulator::new(secret).signature(now_ms(), &body);
    let path = format!("/t/{slug}/workos/action");
    let (status, reply, _) = server.post_raw(&path, body, &[("WorkOS-Signature", signature)]).await;
    (status, verify_action_response(verify_with, &reply, "authentication_action_response"))
}

async fn tenants_are_kept_apart_in_routes_secrets_tokens_and_data(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    for (slug, webhook, action) in TENANTS {
        let options = if slug == "initech" {
            json!({ "no_handler": { "verdict": "deny", "message": "initech is closed" } })
        } else {
            json!({})
        };
        create(&server, slug, webhook, action, options).await;
    }
    // Refusals change nothing.
    let dup = server.admin("POST", "/admin/tenants", Some(ROOT), body(json!({ "slug": "acme" }))).await;
    assert_eq!((dup.status, dup.code()), (409, "tenant_exists"), "{dup:?}");
    let default = server.admin("POST", "/admin/tenants", Some(ROOT), body(json!({ "slug": "default" }))).await;
    assert_eq!((default.status, default.code()), (409, "tenant_exists"), "{default:?}");
    for bad in [json!({ "slug": "Not A Slug" }), json!({ "slug": "x", "options": { "max_calls": 0 } }), json!({})] {
        let reply = server.admin("POST", "/admin/tenants", Some(ROOT), body(bad.clone())).await;
        assert_eq!(reply.status, 400, "{bad}: {reply:?}");
    }
    let listed = server.admin("GET", "/admin/tenants", Some(ROOT), None).await;
    let slugs: Vec<&str> =
        listed.body["tenants"].as_array().unwrap().iter().map(|t| t["slug"].as_str().unwrap()).collect();
    assert_eq!(slugs, ["default", "acme", "globex", "initech"]);
    for (_, webhook, action) in TENANTS {
        let text = listed.body.to_string();
        assert!(!text.contains(webhook) && !text.contains(action), "no secret is ever returned: {text}");
    }
    assert_eq!(listed.body["tenants"][1]["webhook_secret_set"], true);

    deploy(&server, "acme", stamped(1)).await;
    deploy(&server, "globex", stamped(2)).await;

    // Routes × secrets: a tenant's route accepts only its own secret.
    let unknown = deliver(&server, "/t/nope/workos/webhook", TENANTS[0].1, "user.created", json!({})).await;
    assert_eq!(unknown.1, 404, "an unknown tenant is a 404 before any verification");
    let secrets: Vec<&str> = TENANTS.iter().map(|t| t.1).chain([TEST_SECRET]).collect();
    for slug in ["default", "acme", "globex", "initech"] {
        let own = if slug == "default" { TEST_SECRET } else { TENANTS.iter().find(|t| t.0 == slug).unwrap().1 };
        for secret in &secrets {
            let data = user(&format!("user_{slug}"), &format!("{slug}@example.com"), slug, "2025-01-01T00:00:01.000Z");
            let (_, status) = deliver(&server, &webhook_path(slug), secret, "user.created", data).await;
            let expected = if *secret == own { 200 } else { 401 };
            assert_eq!(status, expected, "{slug}'s route with the secret {secret}");
        }
    }

    // Actions: each tenant's own secret, its own handler version or verdicts.
    for (slug, _, action) in TENANTS {
        for (_, _, other) in TENANTS.iter().filter(|t| t.0 != slug) {
            let (status, _) = act(&server, slug, other, "Version", action).await;
            assert_eq!(status, 401, "{slug}'s Actions route with another tenant's secret");
        }
        let (status, payload) = act(&server, slug, action, "Version", action).await;
        assert_eq!(status, 200, "{slug}");
        let message = payload.unwrap()["error_message"].clone();
        let expected = match slug {
            "acme" => "version 1",
            "globex" => "version 2",
            _ => "initech is closed",
        };
        assert_eq!(message, expected, "{slug}'s verdict");
    }
    let no_secret = server.post_raw("/workos/action", b"{}".to_vec(), &[]).await;
    assert_eq!(no_secret.0, 503, "the default tenant has no action secret in this test");

    // Data: each tenant's users table holds only its own user.
    let store = db.store().await;
    eventually("every tenant's events applied", Duration::from_secs(60), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    for owner in ["default", "acme", "globex", "initech"] {
        for slug in ["default", "acme", "globex", "initech"] {
            let found = store.get_user(slug, &format!("user_{owner}")).await.unwrap().is_some();
            assert_eq!(found, owner == slug, "user_{owner} in {slug}'s table");
        }
    }

    // A handler sees only its own tenant's documents, whatever the table name.
    for i in 0..3 {
        let (_, status) =
            deliver(&server, "/t/acme/workos/webhook", TENANTS[0].1, "test.other", json!({ "i": i })).await;
        assert_eq!(status, 200);
    }
    let (census_id, status) =
        deliver(&server, "/t/globex/workos/webhook", TENANTS[1].1, "test.census", json!({})).await;
    assert_eq!(status, 200);
    eventually("the census", Duration::from_secs(30), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    let acme_seen = tenant_documents(&store, "acme", "seen").await;
    let globex_seen = tenant_documents(&store, "globex", "seen").await;
    assert_eq!((acme_seen.len(), globex_seen.len()), (4, 2), "one `seen` per event each handler ran");
    assert!(globex_seen.iter().any(|(_, d)| d["event"] == census_id.as_str()));
    assert!(acme_seen.iter().all(|(_, d)| d["event"] != census_id.as_str()), "globex's event never reached acme");
    let census = tenant_documents(&store, "globex", "census").await;
    assert_eq!(
        census[0].1,
        json!({ "seen": 2, "stamps": 0, "census": 0 }),
        "globex's handler saw only globex's documents"
    );
    assert!(tenant_documents(&store, "default", "seen").await.is_empty());

    // Tokens: a tenant token manages its own tenant only; everything else is a 404.
    let created = server.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await;
    assert_eq!(created.status, 201, "{created:?}");
    let token = created.body["token"].as_str().unwrap().to_string();
    let token_id = created.body["id"].as_str().unwrap().to_string();
    let own = server.admin("GET", "/t/acme/admin/modules", Some(&token), None).await;
    assert_eq!(own.status, 200, "{own:?}");
    assert_eq!(own.body["versions"].as_array().unwrap().len(), 1);
    for (method, path) in [
        ("GET", "/t/globex/admin/modules"),
        ("POST", "/t/globex/admin/modules/1/activate"),
        ("GET", "/t/nope/admin/modules"),
        ("GET", "/admin/modules"),
        ("GET", "/admin/status"),
        ("GET", "/admin/tenants"),
        ("GET", "/admin/tenants/acme"),
        ("POST", "/admin/tenants/acme/tokens"),
        ("DELETE", "/admin/tenants/globex"),
    ] {
        let reply = server.admin(method, path, Some(&token), None).await;
        assert_eq!(reply.status, 404, "{method} {path} with acme's token: {reply:?}");
    }
    // Its own users and events, and nobody else's.
    let users = server.admin("GET", "/t/acme/admin/users", Some(&token), None).await;
    let ids: Vec<&str> = users.body["users"].as_array().unwrap().iter().map(|u| u["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["user_acme"], "{users:?}");
    let user = server.admin("GET", "/t/acme/admin/users/user_acme", Some(&token), None).await;
    assert_eq!(user.body["email"], "acme@example.com", "{user:?}");
    let missing = server.admin("GET", "/t/acme/admin/users/user_globex", Some(&token), None).await;
    assert_eq!((missing.status, missing.code()), (404, "user_not_found"));
    let events = server.admin("GET", "/t/acme/admin/events?type=test.other", Some(&token), None).await;
    assert_eq!(events.body["events"].as_array().unwrap().len(), 3, "{events:?}");
    let census = server.admin("GET", &format!("/t/acme/admin/events/{census_id}"), Some(&token), None).await;
    assert_eq!((census.status, census.code()), (404, "event_not_found"), "globex's event is not acme's");
    let theirs = server.admin("GET", &format!("/t/globex/admin/events/{census_id}"), Some(&token), None).await;
    assert_eq!((theirs.status, theirs.code()), (404, "tenant_not_found"));
    let shown = server.admin("GET", &format!("/t/globex/admin/events/{census_id}"), Some(ROOT), None).await;
    assert_eq!(shown.body["status"], "done", "{shown:?}");
    for (method, path) in [("GET", "/t/globex/admin/users"), ("GET", "/t/globex/admin/events"), ("GET", "/admin/users")]
    {
        let reply = server.admin(method, path, Some(&token), None).await;
        assert_eq!(reply.status, 404, "{method} {path} with acme's token: {reply:?}");
    }

    let upload = server.admin("POST", "/t/globex/admin/modules", Some(&token), Some(stamped(9))).await;
    assert_eq!(upload.status, 404, "{upload:?}");
    let change = json!({ "options": { "fallback": { "verdict": "allow" } } });
    let patched = server.admin("PATCH", "/t/acme/admin/tenant", Some(&token), body(change)).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    assert_eq!(patched.body["effective"]["fallback"], json!({ "verdict": "allow" }));
    let listed = server.admin("GET", "/admin/tenants/acme/tokens", Some(ROOT), None).await;
    assert!(!listed.body.to_string().contains(&token), "a token is shown once, at creation");
    let revoked = server.admin("DELETE", &format!("/admin/tenants/acme/tokens/{token_id}"), Some(ROOT), None).await;
    assert_eq!(revoked.status, 204, "{revoked:?}");
    let after = server.admin("GET", "/t/acme/admin/modules", Some(&token), None).await;
    assert_eq!((after.status, after.code()), (401, "admin_token_invalid"));

    // Globex's version is untouched by everything acme did.
    let globex = server.admin("GET", "/t/globex/admin/status", Some(ROOT), None).await;
    assert_eq!(globex.body["active_version"], 1, "{globex:?}");

    let log = server.log();
    for (_, webhook, action) in TENANTS {
        assert!(!log.contains(webhook) && !log.contains(action), "a secret reached the log");
    }
    assert!(!log.contains(&token) && !log.contains(ROOT), "a token reached the log");
}

/// A tenant token changes its tenant's secrets, client id and verdicts, not
/// the limits the operator set with the root token: `PATCH /admin/tenant`
/// keeps the limits a change leaves out and refuses one that sets a limit to
/// another value (403, nothing changed), and an upload may ask for less than
/// the tenant's limits, not more. The root token may do both.
async fn a_tenant_token_cannot_raise_its_tenants_limits(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let limits = json!({ "event_deadline_ms": 300, "max_documents": 10, "max_worker_processes": 1 });
    create(&server, "acme", "whsec_acme", "sk_acme", limits.clone()).await;
    let created = server.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await;
    let token = created.body["token"].as_str().unwrap().to_string();

    let change = json!({ "options": { "fallback": { "verdict": "allow" } } });
    let patched = server.admin("PATCH", "/t/acme/admin/tenant", Some(&token), body(change)).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let mut kept = limits.clone();
    kept["fallback"] = json!({ "verdict": "allow" });
    assert_eq!(patched.body["options"], kept, "the limits it left out stay");
    let same = json!({ "options": { "max_documents": 10, "no_handler": { "verdict": "deny" } } });
    let patched = server.admin("PATCH", "/t/acme/admin/tenant", Some(&token), body(same)).await;
    assert_eq!(patched.status, 200, "a limit given as it is: {patched:?}");
    let stored = patched.body["options"].clone();
    assert_eq!(stored["max_documents"], 10);
    assert_eq!(stored["event_deadline_ms"], 300);

    for (key, value) in [
        ("max_documents", json!(1_000_000)),
        ("event_deadline_ms", json!(100)),
        ("action_deadline_ms", json!(30_000)),
        ("memory_limit_bytes", json!(512 * 1024 * 1024)),
        ("max_calls", json!(1_000_000)),
        ("max_concurrent_actions", json!(1024)),
        ("max_concurrent_queries", json!(1024)),
        ("max_worker_processes", json!(64)),
    ] {
        let change = json!({ "options": { key: value } });
        let refused = server.admin("PATCH", "/t/acme/admin/tenant", Some(&token), body(change)).await;
        assert_eq!((refused.status, refused.code()), (403, "limit_set_by_operator"), "{key}: {refused:?}");
        assert!(refused.body.to_string().contains(&format!("options.{key}")), "{refused:?}");
    }
    let shown = server.admin("GET", "/t/acme/admin/tenant", Some(&token), None).await;
    assert_eq!(shown.body["options"], stored, "nothing changed");

    // Uploads: a version may ask for less than the tenant's limits, not more.
    let upload = |who: &str, query: &str, n: u32| {
        let (server, who, path) = (&server, who.to_string(), format!("/t/acme/admin/modules?{query}"));
        async move { server.admin("POST", &path, Some(&who), Some(stamped(n))).await }
    };
    for query in ["event_deadline_ms=5000", "memory_limit_mib=128", "action_deadline_ms=5000", "query_deadline_ms=5000"]
    {
        let refused = upload(&token, query, 1).await;
        assert_eq!((refused.status, refused.code()), (403, "limit_set_by_operator"), "{query}: {refused:?}");
    }
    let versions = server.admin("GET", "/t/acme/admin/modules", Some(&token), None).await;
    assert_eq!(versions.body["versions"].as_array().unwrap().len(), 0, "no refused upload was stored");
    assert_eq!(upload(&token, "event_deadline_ms=200&memory_limit_mib=32", 1).await.status, 201);
    assert_eq!(upload(ROOT, "event_deadline_ms=5000&memory_limit_mib=128", 2).await.status, 201);
    let raised = json!({ "options": { "max_documents": 1_000_000 } });
    let patched = server.admin("PATCH", "/t/acme/admin/tenant", Some(ROOT), body(raised)).await;
    assert_eq!((patched.status, &patched.body["effective"]["max_documents"]), (200, &json!(1_000_000)));
}

/// A version the tenant's own token uploaded is held to its tenant's limits
/// whenever it runs, not only at upload: after the operator lowers the
/// tenant's memory cap it gets the lower one. A version the root token
/// uploaded keeps the limits the operator gave it.
async fn a_tenant_tokens_versions_follow_their_tenants_lowered_limits(db: TestDb) {
    const MIB: usize = 1024 * 1024;
    let server = TestServer::start_with(&db, options(&db)).await;
    create(&server, "acme", "whsec_acme", "sk_acme", json!({ "memory_limit_bytes": 64 * MIB })).await;
    let created = server.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await;
    let token = created.body["token"].as_str().unwrap().to_string();
    let upload = |who: &str, n: u32| {
        let (server, who) = (&server, who.to_string());
        async move {
            let path = "/t/acme/admin/modules?activate=true&memory_limit_mib=64";
            server.admin("POST", path, Some(&who), Some(stamped(n))).await
        }
    };
    // Needs 40 MiB: fits 64, not 16.
    let hold = || async {
        let args = json!({ "mib": 40 }).to_string().into_bytes();
        let (status, body, _) = server.authorized("POST", "/t/acme/query/hold", None, Some(args)).await;
        (status, body)
    };
    let lower = |mib: usize| {
        let server = &server;
        async move {
            let change = json!({ "options": { "memory_limit_bytes": mib * MIB } });
            let patched = server.admin("PATCH", "/admin/tenants/acme", Some(ROOT), body(change)).await;
            assert_eq!(patched.status, 200, "{patched:?}");
        }
    };

    let own = upload(&token, 1).await;
    assert_eq!(own.status, 201, "{own:?}");
    assert_eq!(own.body["limits"], json!({ "memory_limit_bytes": 64 * MIB, "held_to_tenant": true }));
    assert_eq!(hold().await, (200, json!({ "held": 40 })));
    lower(16).await;
    let (status, body) = hold().await;
    assert_eq!((status, body["error"]["code"].as_str()), (500, Some("query_failed")), "held to 16 MiB: {body}");

    // The operator's version of the same bytes keeps its 64 MiB.
    let operators = upload(ROOT, 1).await;
    assert_eq!((operators.status, &operators.body["version"]), (201, &json!(2)), "{operators:?}");
    assert_eq!(operators.body["limits"], json!({ "memory_limit_bytes": 64 * MIB }));
    assert_eq!(hold().await, (200, json!({ "held": 40 })));

    // The tenant's own version, activated again, is still held; raised again, it has its 64 MiB.
    let activated = server.admin("POST", "/t/acme/admin/modules/1/activate", Some(&token), None).await;
    assert_eq!(activated.status, 200, "{activated:?}");
    assert_eq!(hold().await.0, 500);
    lower(64).await;
    assert_eq!(hold().await, (200, json!({ "held": 40 })));
}

async fn the_cli_manages_tenants_and_reads_one_tenant_at_a_time(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let url = server.url("");
    let remote = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--url", url.as_str(), "--token", ROOT]);
        cli(&db, &all)
    };
    let (ok, out, err) = remote(&[
        "tenants",
        "create",
        "acme",
        "--webhook-secret",
        "whsec_cli_acme",
        "--action-secret",
        "sk_cli_acme",
        "--event-deadline-ms",
        "750",
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains("/t/acme/workos/webhook"), "{out}");
    let (ok, out, err) = remote(&["tenants", "create", "acme"]);
    assert!(!ok && err.contains("tenant_exists"), "{out}{err}");
    // A client id that would retitle the root operator's terminal if printed as it is.
    let (ok, out, err) = remote(&[
        "tenants",
        "update",
        "acme",
        "--fallback",
        "allow",
        "--max-calls",
        "50",
        "--max-concurrent-actions",
        "4",
        "--max-concurrent-queries",
        "3",
        "--max-worker-processes",
        "1",
        "--client-id",
        "client_\u{1b}]0;owned\u{7}",
    ]);
    assert!(ok, "{out}{err}");
    let (ok, out, _) = remote(&["tenants", "show", "acme", "--json"]);
    assert!(ok);
    let shown: Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(
        shown["options"],
        json!({
            "event_deadline_ms": 750,
            "max_calls": 50,
            "max_concurrent_actions": 4,
            "max_concurrent_queries": 3,
            "max_worker_processes": 1,
            "fallback": { "verdict": "allow" }
        })
    );
    assert_eq!(shown["effective"]["event_deadline_ms"], 750, "an update keeps what it does not name");
    let effective = &shown["effective"];
    assert_eq!(
        (
            &effective["max_concurrent_actions"],
            &effective["max_concurrent_queries"],
            &effective["max_worker_processes"]
        ),
        (&json!(4), &json!(3), &json!(1))
    );
    let (ok, out, err) = remote(&["tenants", "update", "acme", "--max-worker-processes", "0"]);
    assert!(!ok && err.contains("options.max_worker_processes"), "{out}{err}");
    assert!(!out.contains("whsec_cli_acme"), "{out}");
    let (ok, out, _) = remote(&["tenants", "list"]);
    assert!(ok && out.contains("default") && out.contains("acme"), "{out}");
    assert!(out.contains("LOADED") && out.contains("of at most 2000 tenants loaded"), "{out}");
    assert!(out.contains("that found their tenant loaded: ") && out.contains("(hit rate "), "{out}");
    assert!(!out.contains('\u{1b}') && out.contains("client_\\u{1b}]0;owned\\u{7}"), "{out}");

    // Deploy to the tenant, and read its data from the database.
    let handler = rust_guest("hostile");
    let (ok, out, err) = remote(&["deploy", handler.to_str().unwrap(), "--tenant", "acme"]);
    assert!(ok, "{out}{err}");
    let data = user("user_cli", "cli@example.com", "Cli", "2025-01-01T00:00:01.000Z");
    assert_eq!(deliver(&server, "/t/acme/workos/webhook", "whsec_cli_acme", "user.created", data).await.1, 200);
    let store = db.store().await;
    eventually("the event applied", Duration::from_secs(30), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    let (ok, out, _) = cli(&db, &["users", "list", "--tenant", "acme", "--json"]);
    assert!(ok && out.contains("user_cli"), "{out}");
    let (ok, out, _) = cli(&db, &["users", "list", "--json"]);
    assert!(ok && !out.contains("user_cli"), "the default tenant's users: {out}");
    let (ok, out, _) = cli(&db, &["events", "list", "--tenant", "acme"]);
    assert!(ok && out.contains("user.created"), "{out}");
    let (ok, out, _) = remote(&["modules", "list", "--tenant", "acme"]);
    assert!(ok && out.contains('*'), "{out}");
    let (ok, out, _) = remote(&["modules", "list"]);
    assert!(ok && !out.contains('*'), "the default tenant has no version: {out}");

    let (ok, out, err) = remote(&["tenants", "token", "acme"]);
    assert!(ok, "{out}{err}");
    let token = out.lines().last().unwrap().trim().to_string();
    assert!(token.starts_with("akt_"), "{out}");
    let own = cli(&db, &["modules", "list", "--url", url.as_str(), "--token", &token, "--tenant", "acme"]);
    assert!(own.0, "{own:?}");
    let other = cli(&db, &["modules", "list", "--url", url.as_str(), "--token", &token]);
    assert!(!other.0 && other.2.contains("tenant_not_found"), "{other:?}");

    let (ok, out, err) = remote(&["tenants", "delete", "acme"]);
    assert!(ok && out.contains("deleted"), "{out}{err}");
    let (ok, out, _) = cli(&db, &["users", "list", "--tenant", "acme", "--json"]);
    assert!(ok && out.trim().is_empty(), "{out}");
}

async fn deleting_a_tenant_removes_everything_it_has(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let store = db.store().await;
    for (slug, webhook, action) in &TENANTS[..2] {
        create(&server, slug, webhook, action, json!({})).await;
        deploy(&server, slug, stamped(1)).await;
        let data = user(&format!("user_{slug}"), "x@example.com", "X", "2025-01-01T00:00:01.000Z");
        assert_eq!(deliver(&server, &webhook_path(slug), webhook, "user.created", data).await.1, 200);
        assert_eq!(
            deliver(&server, &webhook_path(slug), webhook, "user.deleted", json!({ "id": "user_gone" })).await.1,
            200
        );
        let (status, _) = act(&server, slug, action, "Someone", action).await;
        assert_eq!(status, 200);
    }
    // Acme's own second version: its compiled code is acme's alone.
    deploy(&server, "acme", stamped(2)).await;
    let (shared, own) = (compiled_code(&db, &stamped(1)), compiled_code(&db, &stamped(2)));
    assert!(shared.exists() && own.exists(), "both versions' compiled code is cached");
    let token = server.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    // Both tenants' decisions: they are recorded in batches, a moment after
    // the answer, and globex's must not land between the two counts below.
    eventually("the events applied and the decisions recorded", Duration::from_secs(60), || async {
        let mut recorded = true;
        for slug in ["acme", "globex"] {
            let counts = store.count_tenant_rows(slug).await.unwrap();
            recorded &= counts.iter().find(|(t, _)| *t == "action_decisions").unwrap().1 > 0;
        }
        (recorded && store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    let before_globex = store.count_tenant_rows("globex").await.unwrap();
    let before: Vec<&str> =
        store.count_tenant_rows("acme").await.unwrap().into_iter().filter(|(_, n)| *n > 0).map(|(t, _)| t).collect();
    for table in ["inbox", "users", "tombstones", "documents", "modules", "module_activations", "action_decisions"] {
        assert!(before.contains(&table), "acme has rows in {table} before: {before:?}");
    }

    let deleted = server.admin("DELETE", "/admin/tenants/acme", Some(ROOT), None).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let left: Vec<(&str, i64)> =
        store.count_tenant_rows("acme").await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "rows left after deletion: {left:?}");
    assert!(store.get_tenant("acme").await.unwrap().is_none());
    assert_eq!(store.count_tenant_rows("globex").await.unwrap(), before_globex, "another tenant keeps everything");
    assert!(!own.exists(), "the compiled code only acme used went with it");
    assert!(shared.exists(), "globex still has the same bytes: their compiled code stays");

    let (_, status) = deliver(&server, "/t/acme/workos/webhook", TENANTS[0].1, "user.created", json!({})).await;
    assert_eq!(status, 404);
    let stale = server.admin("GET", "/t/acme/admin/modules", Some(&token), None).await;
    assert_eq!(stale.status, 401, "the tenant's tokens went with it: {stale:?}");
    let again = server.admin("DELETE", "/admin/tenants/acme", Some(ROOT), None).await;
    assert_eq!((again.status, again.code()), (404, "tenant_not_found"));
    let fixed = server.admin("DELETE", "/admin/tenants/default", Some(ROOT), None).await;
    assert_eq!((fixed.status, fixed.code()), (409, "default_tenant_fixed"));

    // The slug can be used again, from nothing.
    create(&server, "acme", "whsec_new", "sk_new", json!({})).await;
    let versions = server.admin("GET", "/t/acme/admin/modules", Some(ROOT), None).await;
    assert_eq!(versions.body["versions"], json!([]), "{versions:?}");
    let (status, payload) = act(&server, "acme", "sk_new", "Version", "sk_new").await;
    assert_eq!((status, payload.unwrap()["verdict"].clone()), (200, json!("Allow")), "no handler any more");

    // Deletion survives a restart: nothing comes back.
    drop(server);
    let server = TestServer::start_with(&db, options(&db)).await;
    let listed = server.admin("GET", "/admin/tenants", Some(ROOT), None).await;
    assert_eq!(listed.body["tenants"].as_array().unwrap().len(), 3, "default, acme (new), globex");
    assert!(store.get_user("acme", "user_acme").await.unwrap().is_none());

    // Deleting the last version with some bytes deletes their compiled code too.
    deploy(&server, "globex", stamped(3)).await;
    let removed = server.admin("DELETE", "/t/globex/admin/modules/1", Some(ROOT), None).await;
    assert_eq!(removed.status, 204, "{removed:?}");
    assert!(!shared.exists(), "no stored version has those bytes any more");
    assert!(compiled_code(&db, &stamped(3)).exists(), "the live version's code stays");
}

/// The compiled-code cache's file for the component `bytes` (the servers
/// here keep it in `authkit-cache` in their working directory).
fn compiled_code(db: &TestDb, bytes: &[u8]) -> std::path::PathBuf {
    use sha2::Digest;
    let hash: String = sha2::Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect();
    let dir = db.dir.path().join("authkit-cache");
    let mut found: Vec<_> =
        std::fs::read_dir(&dir).map(|entries| entries.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    found.retain(|p: &std::path::PathBuf| {
        p.file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with(&format!("{hash}-")) && n.ends_with(".cwasm"))
    });
    found.pop().unwrap_or_else(|| dir.join(format!("{hash}-missing.cwasm")))
}

/// A token stored for a tenant that is gone by then (deleted meanwhile, or
/// through another process this one has not heard from) would open a later
/// tenant of the same slug: it is refused instead. Likewise a settings change
/// read from the first tenant does not reach the later one.
async fn a_token_is_not_stored_for_a_tenant_that_is_gone(db: TestDb) {
    let store = db.store().await;
    let mut row = bare_tenant("acme");
    assert!(store.insert_tenant(&mut row).await.unwrap());
    assert!(store.insert_token("tok_1", "acme", "hash_1", now_ms()).await.unwrap());
    assert!(store.insert_token("tok_d", "default", "hash_d", now_ms()).await.unwrap(), "default has no row");
    assert!(store.delete_tenant("acme").await.unwrap().is_some());
    assert!(!store.insert_token("tok_2", "acme", "hash_2", now_ms()).await.unwrap(), "acme is gone");
    let left: Vec<(&str, i64)> =
        store.count_tenant_rows("acme").await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "{left:?}");
    // In the same millisecond as the first (or with a clock set back), the
    // new acme still gets a `created_at` of its own: that is all that tells
    // the two apart.
    let mut again = TenantRow { created_at: row.created_at, ..bare_tenant("acme") };
    assert!(store.insert_tenant(&mut again).await.unwrap());
    assert!(again.created_at > row.created_at, "{} after {}", again.created_at, row.created_at);
    assert_eq!(store.get_tenant("acme").await.unwrap().unwrap().created_at, again.created_at);
    assert!(!store.insert_tenant(&mut bare_tenant("acme")).await.unwrap(), "the slug is taken");
    assert!(store.list_tokens("acme").await.unwrap().is_empty(), "a new acme starts without tokens");
    let stale = TenantRow { webhook_secret: Some("whsec_of_the_first".into()), ..row };
    assert!(!store.update_tenant(&stale).await.unwrap(), "the first acme's change");
    assert_eq!(store.get_tenant("acme").await.unwrap().unwrap().webhook_secret, None);
    assert!(store.update_tenant(&TenantRow { webhook_secret: Some("whsec_own".into()), ..again }).await.unwrap());
}

/// An event accepted for a tenant that is then deleted (in flight during the
/// deletion, or spilled then) is never applied to a tenant created later
/// under the same slug: the worker deletes it instead. Such an event cannot be
/// timed through HTTP, so the test stores it as the ingest would have, with
/// the first tenant's `created_at`: in the inbox, and on SQLite in the spill
/// file (moved into the inbox at the next start). Deleting the tenant also
/// deletes what the spill file holds of it.
async fn a_slug_created_again_gets_none_of_the_deleted_tenants_events(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let store = db.store().await;
    create(&server, "acme", "whsec_first", "sk_first", json!({})).await;
    let first = store.get_tenant("acme").await.unwrap().unwrap().created_at;
    let emulator = Emulator::new("whsec_first");
    let event = |name: &str, tenant_created_at: i64| {
        let at = "2025-01-01T00:00:01.000Z";
        let (event_id, payload) =
            emulator.event("user.created", user(&format!("user_{name}"), "x@example.com", name, at), at);
        NewEvent {
            tenant_id: "acme".into(),
            event_id,
            event_type: "user.created".into(),
            subject: format!("user:user_{name}"),
            occurred_at: 1_735_689_601_000,
            received_at: now_ms(),
            payload: String::from_utf8(payload).unwrap(),
            tenant_created_at: Some(tenant_created_at),
        }
    };
    let file = db.dir.path().join("authkit.db");
    let sqlite = db.backend == Backend::Sqlite;
    if sqlite {
        Spill::open(&file).unwrap().put(&[event("spilled_before", first)]).unwrap();
        assert_eq!(store.count_unfinished_of("acme").await.unwrap(), 1);
    }

    let deleted = server.admin("DELETE", "/admin/tenants/acme", Some(ROOT), None).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    let left: Vec<(&str, i64)> =
        store.count_tenant_rows("acme").await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "rows left after deletion: {left:?}");

    create(&server, "acme", "whsec_second", "sk_second", json!({})).await;
    let second = store.get_tenant("acme").await.unwrap().unwrap().created_at;
    assert_ne!(first, second);
    let new = event("new", second);
    store.insert_events(&[event("in_flight", first), new.clone()]).await.unwrap();
    if sqlite {
        Spill::open(&file).unwrap().put(&[event("spilled_after", first)]).unwrap();
    }
    drop(server);
    let server = TestServer::start_with(&db, options(&db)).await;
    let at = "2025-01-01T00:00:02.000Z";
    let (live, status) = deliver(
        &server,
        "/t/acme/workos/webhook",
        "whsec_second",
        "user.created",
        user("user_live", "l@example.com", "Live", at),
    )
    .await;
    assert_eq!(status, 200);
    eventually("acme's events settled", Duration::from_secs(60), || async {
        let live = store.get_user("acme", "user_live").await.unwrap();
        (live.is_some() && store.count_unfinished_of("acme").await.unwrap() == 0).then_some(())
    })
    .await;
    assert!(store.get_user("acme", "user_new").await.unwrap().is_some(), "the second acme's own event");
    for old in ["user_spilled_before", "user_in_flight", "user_spilled_after"] {
        assert!(store.get_user("acme", old).await.unwrap().is_none(), "{old} of the first acme was applied");
    }
    let (ok, out, err) = cli(&db, &["events", "--tenant", "acme", "list", "--json"]);
    assert!(ok, "{err}");
    let mut ids: Vec<String> = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap()["event_id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected = vec![new.event_id, live];
    expected.sort();
    assert_eq!(ids, expected, "only the second acme's events are left");
    drop(server);
}

/// An Actions handler is still running when its tenant is deleted and a new
/// tenant is created under the same slug, and only then writes: its write must
/// not outlive the tenant nor reach the new one. The request gets the fallback
/// verdict, and the slug has no rows anywhere (its decision is not recorded
/// either). Globex's call, the same handler with no deletion, shows the write
/// is real.
async fn an_actions_handler_that_writes_after_its_tenant_is_deleted_leaves_nothing(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let store = db.store().await;
    for (slug, webhook, action) in &TENANTS[..2] {
        create(
            &server,
            slug,
            webhook,
            action,
            json!({ "action_deadline_ms": 5000, "fallback": { "verdict": "deny", "message": "no verdict" } }),
        )
        .await;
        deploy(&server, slug, stamped(1)).await;
    }
    let (acme, globex) = (TENANTS[0], TENANTS[1]);
    let (status, payload) = act(&server, globex.0, globex.2, "Linger", globex.2).await;
    let payload = payload.unwrap();
    assert_eq!(
        (status, &payload["verdict"]),
        (200, &json!("Allow")),
        "the handler's own verdict: {payload}\n{}",
        server.log()
    );
    let written = store.count_tenant_rows(globex.0).await.unwrap();
    assert!(written.iter().any(|(t, n)| *t == "documents" && *n == 1), "the lingering handler wrote: {written:?}");

    let ((status, payload), deleted) = tokio::join!(act(&server, acme.0, acme.2, "Linger", acme.2), async {
        // The handler is asleep, before its write.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let deleted = server.admin("DELETE", &format!("/admin/tenants/{}", acme.0), Some(ROOT), None).await;
        // A new tenant of the same slug, before the handler writes: it must get nothing of the old one's.
        create(&server, acme.0, "whsec_second_acme", "sk_second_acme", json!({})).await;
        deleted
    });
    assert_eq!(deleted.status, 204, "{deleted:?}");
    // Decisions are recorded in the background, a moment after the answer.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let left: Vec<(&str, i64)> =
        store.count_tenant_rows(acme.0).await.unwrap().into_iter().filter(|(_, n)| *n > 0).collect();
    assert!(left.is_empty(), "rows left by the handler of a deleted tenant, in the new acme: {left:?}");
    let payload = payload.unwrap();
    assert_eq!((status, &payload["verdict"]), (200, &json!("Deny")), "the fallback, not the handler: {payload}");
}

/// Tenant `noisy` has a backlog of 10,000 events and a handler that loops on
/// one in 11 of them until its deadline; tenant `quiet`'s events are still applied
/// within the stated bound: one turn of every other tenant with due events
/// (the worker's 500 ms turn budget plus one event, here at most noisy's
/// 200 ms deadline) plus quiet's own turn. The test allows 4 s for it on a
/// loaded machine; served oldest-first across tenants, quiet would wait for
/// noisy's whole backlog (well over 10 s here).
async fn a_noisy_neighbour_does_not_hold_up_another_tenant(db: TestDb) {
    // The backlog goes in while no worker runs (on SQLite a worker's turn holds
    // the write lock, so a running worker would drain it as fast as it arrives).
    {
        let server = Arc::new(TestServer::start_with(&db, options(&db).arg("--no-worker")).await);
        create(&server, "noisy", "whsec_noisy", "sk_noisy", json!({ "event_deadline_ms": 200 })).await;
        create(&server, "quiet", "whsec_quiet", "sk_quiet", json!({})).await;
        deploy(&server, "noisy", stamped(1)).await;
        deploy(&server, "quiet", stamped(2)).await;
        // A backlog of 10,000 events: one in 11 loops until its deadline
        // (each tried 3 times), the others are quick.
        let mut senders = Vec::new();
        for s in 0..16 {
            let server = server.clone();
            senders.push(tokio::spawn(async move {
                for i in 0..10_000 / 16 {
                    let kind = if i % 11 == 0 { "test.loop" } else { "test.other" };
                    let data = json!({ "s": s, "i": i });
                    let (_, status) = deliver(&server, "/t/noisy/workos/webhook", "whsec_noisy", kind, data).await;
                    assert_eq!(status, 200);
                }
            }));
        }
        for s in senders {
            s.await.unwrap();
        }
    }
    let server = TestServer::start_with(&db, options(&db)).await;
    let (latencies, worst) = quiet_latencies(&db, &[&server]).await;
    assert!(worst < Duration::from_secs(4), "quiet waited {worst:?} behind noisy: {latencies:?}");
}

/// Tenant `slow`'s handler always runs to its 2 s deadline. `quiet`'s event
/// comes while one of slow's turns runs, and another event of slow's comes
/// right after it, so the next round gives quiet its turn, then slow. Quiet's
/// finished event must be visible before slow's next turn ends: it must not
/// wait in the worker's transaction for that turn's commit. The check is of
/// order, not time: when quiet's user is first seen, slow's second event must
/// not have been tried yet (without the commit before slow's turn, the two
/// become visible in one commit).
async fn a_timing_out_neighbour_does_not_hold_back_another_tenants_finished_events(db: TestDb) {
    // One attempt each: a retry of slow's first event must not take its second's turn.
    let server = TestServer::start_with(&db, options_with(&db, "poll_interval_ms = 50\nmax_attempts = 1\n")).await;
    create(&server, "slow", "whsec_slow", "sk_slow", json!({ "event_deadline_ms": 2000 })).await;
    create(&server, "quiet", "whsec_quiet", "sk_quiet", json!({})).await;
    deploy(&server, "slow", stamped(1)).await;
    let store = db.store().await;
    let (first, status) = deliver(&server, "/t/slow/workos/webhook", "whsec_slow", "test.loop", json!({})).await;
    assert_eq!(status, 200);
    tokio::time::sleep(Duration::from_millis(300)).await; // the worker is in slow's handler
    let id = "user_quiet_0";
    let data = user(id, "q@example.com", "Quiet", "2025-01-01T00:00:01.000Z");
    let (_, status) = deliver(&server, "/t/quiet/workos/webhook", "whsec_quiet", "user.created", data).await;
    assert_eq!(status, 200);
    let (next, status) = deliver(&server, "/t/slow/workos/webhook", "whsec_slow", "test.loop", json!({})).await;
    assert_eq!(status, 200);
    eventually("quiet's event applied", Duration::from_secs(30), || async {
        store.get_user("quiet", id).await.unwrap().map(drop)
    })
    .await;
    // Read after quiet's user: had both come in one commit, this sees it.
    let next = store.get_event("slow", &next).await.unwrap().expect("slow's second event");
    assert_eq!(
        (next.status.as_str(), next.attempts),
        ("pending", 0),
        "quiet's event became visible only with slow's next turn: {next:?}"
    );
    // Both of slow's events run to their deadline and are dead-lettered.
    for event in [first, next.event_id] {
        eventually("slow's event tried", Duration::from_secs(30), || async {
            store.get_event("slow", &event).await.unwrap().filter(|e| e.status == "dead").map(drop)
        })
        .await;
    }
}

/// Tenant `noisy`'s handler loops on its events until its 10 s deadline. On
/// SQLite the worker's transaction holds the database's one write lock while a
/// handler runs, and `quiet`'s webhooks used to wait for it (about 2.7 s each
/// with a 3 s deadline); now a batch that has waited 100 ms for it is stored in
/// the spill file and acknowledged from there. Each acknowledgement must come
/// well within the loop's 10 s; a redelivery is still told apart, nothing is
/// lost when the process is killed with events spilled, and every one of them
/// is applied.
async fn a_slow_handler_does_not_hold_up_another_tenants_webhooks(db: TestDb) {
    let mut server = TestServer::start_with(&db, options(&db)).await;
    let sent = quiet_behind_noisy(&server).await;
    // A redelivery, while noisy's handler still loops, is known as one.
    let emulator = Emulator::new("whsec_quiet");
    let (_, event) = &sent[0];
    let signature = emulator.signature(now_ms(), event);
    let (status, body, took) =
        server.post_raw("/t/quiet/workos/webhook", event.clone(), &[("WorkOS-Signature", signature)]).await;
    let body: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((status, &body["duplicate"]), (200, &json!(true)), "{body}");
    assert!(took < Duration::from_millis(2000), "the redelivery waited {took:?}");
    // On SQLite they are all in the spill file still: noisy's handler has held
    // the write lock since before they came.
    if db.backend == Backend::Sqlite {
        assert_eq!(spilled(&db, "quiet").await, 5, "quiet's webhooks in the spill file");
    }
    // Counted as unfinished, and listed and shown as pending, wherever they
    // are (the worker is still in noisy's handler).
    let store = db.store().await;
    assert_eq!(store.count_unfinished_of("quiet").await.unwrap(), 5);
    let (ok, out, err) = cli(&db, &["events", "--tenant", "quiet", "list", "--json"]);
    assert!(ok, "{err}");
    let listed: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let mut ids: Vec<&str> = listed.iter().map(|e| e["event_id"].as_str().unwrap()).collect();
    let mut expected: Vec<&str> = sent.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    expected.sort();
    assert_eq!(ids, expected, "{out}");
    assert!(listed.iter().all(|e| e["status"] == "pending"), "{out}");
    let (ok, out, err) = cli(&db, &["events", "--tenant", "quiet", "list", "--status", "done", "--json"]);
    assert!(ok && out.trim().is_empty(), "{out}{err}");
    let (ok, out, err) = cli(&db, &["events", "--tenant", "quiet", "show", &sent[4].0]);
    assert!(ok, "{err}");
    let shown: Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&shown["event_id"], &shown["status"]), (&json!(sent[4].0), &json!("pending")), "{out}");
    // A crash now loses none of what was acknowledged.
    server.crash();
    let server = TestServer::start_with(&db, options(&db)).await;
    quiet_applied_once(&db, &sent).await;
    drop(server);
}

/// SQLite: a graceful stop while webhooks wait in the spill file (a handler
/// holds the write lock past the writer's last 2 s wait for it) exits 0 and
/// leaves them there; the next start moves them into the inbox and applies
/// each once. (Postgres has no spill file; its graceful stop is in lifecycle.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_keeps_spilled_webhooks_for_the_next_start() {
    let Some(db) = TestDb::create(Backend::Sqlite, "graceful_spill").await else { return };
    let mut server = TestServer::start_with(&db, options(&db)).await;
    let sent = quiet_behind_noisy(&server).await;
    server.terminate();
    let status = server.wait_exit().await;
    assert!(status.success(), "{status}; log:\n{}", server.log());
    assert!(server.log().contains("spilled webhooks stay in the spill file"), "{}", server.log());
    assert_eq!(spilled(&db, "quiet").await, 5, "quiet's webhooks wait in the spill file");
    let server = TestServer::start_with(&db, options(&db)).await;
    quiet_applied_once(&db, &sent).await;
    drop(server);
}

/// SQLite: a power cut while webhooks wait in the spill file loses none of
/// them: each was synced in the spill file before it was acknowledged. The
/// host runs over a disk that keeps only what was synced (the shim
/// `tests/fault/power_cut.c`); once it is killed, every write since its
/// file's last sync is undone, and the next start moves and applies each
/// spilled webhook once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_power_cut_loses_no_spilled_webhook() {
    let Some(db) = TestDb::create(Backend::Sqlite, "power_cut_spill").await else { return };
    let disk = PowerCut::new(&db);
    let server = TestServer::start_with(&db, disk.under(options(&db))).await;
    let sent = quiet_behind_noisy(&server).await;
    assert_eq!(spilled(&db, "quiet").await, 5, "quiet's webhooks in the spill file");
    let cut = disk.kill_and_cut(Arc::new(server), Vec::new()).await;
    eprintln!("undone: {cut:?}");
    assert_eq!(spilled(&db, "quiet").await, 5, "quiet's acknowledged webhooks after the cut");
    let server = TestServer::start_with(&db, options(&db)).await;
    quiet_applied_once(&db, &sent).await;
    drop(server);
}

/// SQLite: while the disk is full (every write to the database's files fails
/// with ENOSPC: the shim `tests/fault/fail_log_sync.c`), a webhook that goes
/// to the spill file (noisy's handler holds the write lock) gets 503 and
/// nothing is acknowledged; once there is room, webhooks are spilled and
/// acknowledged again, and every acknowledged one, the refused one sent again
/// included, is applied once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_refuses_webhooks_it_would_spill_until_there_is_room() {
    refuses_what_it_would_spill_while(DISK_FULL, &["No space left on device", "disk is full"]).await;
}

/// SQLite: the same while syncing the spill file fails with EIO (the webhook's
/// commit to the spill file fails; nothing of it is acknowledged), and the
/// host goes on serving: unlike the inbox's log, whose commits are visible
/// before they are synced, a spill commit counts only once it is synced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_sync_of_the_spill_file_refuses_webhooks_it_would_spill_until_the_disk_recovers() {
    refuses_what_it_would_spill_while(SPILL_SYNC_FAILS, &["disk I/O error", "Input/output error"]).await;
}

/// The two tests above: while `marker` exists, the webhook that would be
/// spilled gets 503; then two more, that one again among them, are spilled
/// and acknowledged; all of quiet's are applied once; `cause` (one of) is logged.
async fn refuses_what_it_would_spill_while(marker: &str, cause: &[&str]) {
    let Some(db) = TestDb::create(Backend::Sqlite, "failing_spill").await else { return };
    let marker = db.dir.path().join(marker);
    let server = TestServer::start_with(&db, failing_disk(&db, options(&db))).await;
    let mut sent = quiet_behind_noisy(&server).await;
    let emulator = Emulator::new("whsec_quiet");
    let post = |event: &Vec<u8>| {
        let (server, event) = (&server, event.clone());
        let signature = emulator.signature(now_ms(), &event);
        async move { server.post_raw("/t/quiet/workos/webhook", event, &[("WorkOS-Signature", signature)]).await }
    };
    let at = "2025-01-01T00:00:01.000Z";
    let (refused, after) = (
        emulator.event("user.created", user("user_quiet_5", "q@example.com", "Quiet", at), at),
        emulator.event("user.created", user("user_quiet_6", "q@example.com", "Quiet", at), at),
    );
    std::fs::write(&marker, b"").unwrap();
    let (status, body, _) = post(&refused.1).await;
    assert_eq!((status, String::from_utf8_lossy(&body).contains("storage_unavailable")), (503, true));
    std::fs::remove_file(&marker).unwrap();
    for event in [&after.1, &refused.1] {
        let (status, body, took) = post(event).await;
        assert_eq!(status, 200, "once the disk works: {}", String::from_utf8_lossy(&body));
        assert!(took < Duration::from_millis(2000), "spilled, not waiting for noisy: {took:?}");
    }
    assert_eq!(spilled(&db, "quiet").await, 7, "all of quiet's webhooks in the spill file");
    sent.extend([refused, after]);
    quiet_applied_once(&db, &sent).await;
    let log = server.log();
    assert!(cause.iter().any(|c| log.contains(c)), "the cause is logged: {log}");
}

/// SQLite: power cuts while webhooks go into the spill file and are moved
/// out of it lose nothing acknowledged. `noisy`'s handler loops until its
/// 300 ms deadline on a new event every 200 ms, so the worker holds the write
/// lock most of the time, and `default`'s webhooks, sent by 8 senders all
/// along, are spilled and moved into the inbox again and again. The power is
/// cut (as in lifecycle.rs's `a_power_cut_loses_no_acknowledged_webhook`)
/// after every 40 acknowledgements, `AUTHKIT_TEST_POWER_CUTS` times (3 by
/// default; more for a soak). Then, on a sound disk: noisy and its version
/// (created through the admin API before the first cut) are there, every
/// acknowledged event is applied, and the spill file is empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn power_cuts_while_webhooks_are_spilled_and_moved_lose_nothing() {
    let Some(db) = TestDb::create(Backend::Sqlite, "power_cuts_spill").await else { return };
    let disk = PowerCut::new(&db);
    let deliveries = Deliveries::default();
    let mut undone = Vec::new();
    for cut in 0..fault::cuts() {
        let server = Arc::new(TestServer::start_with(&db, disk.under(options(&db))).await);
        if cut == 0 {
            create(&server, "noisy", "whsec_noisy", "sk_noisy", json!({ "event_deadline_ms": 300 })).await;
            deploy(&server, "noisy", stamped(1)).await;
        }
        let before = deliveries.acknowledged_count();
        let noisy = server.clone();
        let mut tasks = vec![tokio::spawn(async move {
            let emulator = Emulator::new("whsec_noisy");
            loop {
                let (_, event) = emulator.event("test.loop", json!({}), "2025-01-01T00:00:01.000Z");
                let signature = emulator.signature(now_ms(), &event);
                let headers = [("WorkOS-Signature", signature)];
                if noisy.try_post("/t/noisy/workos/webhook", event, &headers).await.is_err() {
                    return; // the power is off
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })];
        tasks.extend(deliveries.start(&server, 8));
        // Cut once this run has moved spilled webhooks at least twice (so
        // that the cut falls anywhere in the cycle of spilling and moving).
        eventually("40 more acknowledgements and two moves", Duration::from_secs(60), || async {
            let moves = server.log().matches("spilled webhooks moved into the inbox").count();
            (deliveries.acknowledged_count() >= before + 40 && moves >= 2).then_some(())
        })
        .await;
        undone.push(disk.kill_and_cut(server, tasks).await.writes());
    }
    eprintln!("writes undone at each cut: {undone:?}");

    let server = TestServer::start_with(&db, options(&db)).await;
    // What the admin API answered before the first cut is there too.
    let versions = server.admin("GET", "/t/noisy/admin/modules", Some(ROOT), None).await;
    assert_eq!((versions.status, versions.body["versions"].as_array().map(Vec::len)), (200, Some(1)), "{versions:?}");
    let store = db.store().await;
    let acknowledged = deliveries.acknowledged();
    eventually("every acknowledged event applied", Duration::from_secs(120), || async {
        for id in &acknowledged {
            let event = store.get_event("default", id).await.unwrap();
            assert!(event.is_some(), "{id} was acknowledged and is gone");
            if event.unwrap().status != "done" {
                return None;
            }
        }
        Some(())
    })
    .await;
    assert_eq!(spilled(&db, "default").await, 0);
    let users = store.list_users("default", None, 100_000).await.unwrap().len();
    assert!((acknowledged.len()..=deliveries.sent()).contains(&users), "{users} users");
}

/// SQLite: how many of `tenant`'s events the spill file beside the database
/// holds, read straight from the file.
async fn spilled(db: &TestDb, tenant: &str) -> i64 {
    let spill = sqlx::SqlitePool::connect(&format!("{}-spill", db.url)).await.unwrap();
    let n = sqlx::query_scalar("SELECT count(*) FROM spilled WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(&spill)
        .await
        .unwrap();
    spill.close().await;
    n
}

/// Creates `noisy`, whose handler loops until its 10 s deadline, and `quiet`;
/// once the worker is in noisy's handler, sends quiet five user.created
/// events, each of which must be acknowledged within 2 s. Returns their ids
/// and bodies.
async fn quiet_behind_noisy(server: &TestServer) -> Vec<(String, Vec<u8>)> {
    create(server, "noisy", "whsec_noisy", "sk_noisy", json!({ "event_deadline_ms": 10_000 })).await;
    create(server, "quiet", "whsec_quiet", "sk_quiet", json!({})).await;
    deploy(server, "noisy", stamped(1)).await;
    for i in 0..2 {
        let (_, status) =
            deliver(server, "/t/noisy/workos/webhook", "whsec_noisy", "test.loop", json!({ "i": i })).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // the worker is in noisy's handler
    let emulator = Emulator::new("whsec_quiet");
    let mut sent = Vec::new();
    for i in 0..5 {
        let data = user(&format!("user_quiet_{i}"), "q@example.com", "Quiet", "2025-01-01T00:00:01.000Z");
        let (id, event) = emulator.event("user.created", data, "2025-01-01T00:00:01.000Z");
        let signature = emulator.signature(now_ms(), &event);
        let (status, body, took) =
            server.post_raw("/t/quiet/workos/webhook", event.clone(), &[("WorkOS-Signature", signature)]).await;
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!((status, &body["duplicate"]), (200, &json!(false)), "{body}");
        println!("quiet's webhook {i} acknowledged in {took:?}");
        assert!(took < Duration::from_millis(2000), "quiet's webhook waited {took:?} for noisy's handler");
        sent.push((id, event));
    }
    sent
}

/// Waits until each of `sent` (from [`quiet_behind_noisy`]) is applied, and
/// checks that quiet's inbox holds each exactly once.
async fn quiet_applied_once(db: &TestDb, sent: &[(String, Vec<u8>)]) {
    let store = db.store().await;
    for (i, (id, _)) in sent.iter().enumerate() {
        eventually(&format!("quiet's event {id} applied"), Duration::from_secs(60), || async {
            store.get_user("quiet", &format!("user_quiet_{i}")).await.unwrap().map(drop)
        })
        .await;
    }
    let (ok, out, err) = cli(db, &["events", "--tenant", "quiet", "list", "--json"]);
    assert!(ok, "{err}");
    let quiet: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(quiet.len(), sent.len(), "each of quiet's events once: {quiet:#?}");
}

/// Sends `quiet` eight user.created events, one at a time and in turn to each
/// of `servers`, and times each from its delivery to the user's row; checks
/// that `noisy` still had events to apply all along. Returns the times and
/// the longest.
async fn quiet_latencies(db: &TestDb, servers: &[&TestServer]) -> (Vec<Duration>, Duration) {
    let store = db.store().await;
    let mut latencies = Vec::new();
    for i in 0..8 {
        let id = format!("user_quiet_{i}");
        let data = user(&id, "q@example.com", "Quiet", "2025-01-01T00:00:01.000Z");
        let started = Instant::now();
        let server = servers[i % servers.len()];
        let (_, status) = deliver(server, "/t/quiet/workos/webhook", "whsec_quiet", "user.created", data).await;
        assert_eq!(status, 200);
        eventually("quiet's event applied", Duration::from_secs(30), || async {
            store.get_user("quiet", &id).await.unwrap().map(drop)
        })
        .await;
        latencies.push(started.elapsed());
    }
    let noisy_left = store.count_unfinished_of("noisy").await.unwrap();
    println!("quiet's latencies {latencies:?}; noisy still had {noisy_left} unfinished events");
    assert!(noisy_left > 0, "the neighbour was still busy while quiet's events were applied");
    let worst = *latencies.iter().max().unwrap();
    (latencies, worst)
}

/// Two host processes on one Postgres database. Process `b` has acme's
/// handler (version stamp 1) loaded when, through process `a`, acme is
/// deleted and created again with another handler (stamp 2); `b` polls for
/// tenant changes only every ten minutes, so it still holds the first one.
/// `b`'s worker must not run that handler on the new acme's events: they
/// wait, and a process that knows the new acme applies them with its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_has_not_heard_of_a_new_tenant_does_not_run_the_old_ones_handler() {
    let Some(db) = TestDb::create(Backend::Postgres, "stale_deployment").await else { return };
    let store = db.store().await;
    let slow_poll = db.dir.path().join("slow-poll.toml");
    std::fs::write(&slow_poll, "[worker]\npoll_interval_ms = 50\n[modules]\npoll_interval_ms = 600000\n").unwrap();
    let b = TestServer::start_with(
        &db,
        ServerOptions::default().env("AUTHKIT_ADMIN_TOKEN", ROOT).arg("--config").arg(slow_poll.to_str().unwrap()),
    )
    .await;
    create(&b, "acme", "whsec_first", "sk_first", json!({})).await;
    deploy(&b, "acme", stamped(1)).await;
    assert_eq!(deliver(&b, "/t/acme/workos/webhook", "whsec_first", "test.version", json!({})).await.1, 200);
    let versions = |store: Store| async move {
        let stamps = tenant_documents(&store, "acme", "stamps").await;
        stamps.iter().map(|(_, s)| s["version"].as_u64().unwrap()).collect::<Vec<_>>()
    };
    eventually("b applied the first acme's event", Duration::from_secs(30), || async {
        (versions(store.clone()).await == [1, 1]).then_some(())
    })
    .await;

    let a = TestServer::start_with(&db, options(&db).arg("--no-worker")).await;
    let deleted = a.admin("DELETE", "/admin/tenants/acme", Some(ROOT), None).await;
    assert_eq!(deleted.status, 204, "{deleted:?}");
    create(&a, "acme", "whsec_second", "sk_second", json!({})).await;
    deploy(&a, "acme", stamped(2)).await;
    for _ in 0..3 {
        assert_eq!(deliver(&a, "/t/acme/workos/webhook", "whsec_second", "test.version", json!({})).await.1, 200);
    }
    // b's worker polls every 50 ms: plenty of turns to take them.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(versions(store.clone()).await, Vec::<u64>::new(), "b ran the deleted acme's handler:\n{}", b.log());
    assert_eq!(store.count_unfinished_of("acme").await.unwrap(), 3, "they wait");

    drop(b);
    let _c = TestServer::start_with(&db, options(&db)).await;
    eventually("the new acme's events applied by its own handler", Duration::from_secs(30), || async {
        (versions(store.clone()).await == [2; 6]).then_some(())
    })
    .await;
    drop(a);
}

/// Two host processes on one Postgres database, each with its worker. Tenant
/// `noisy` may have its turn in one process at a time (`max_worker_processes`)
/// and its handler loops on every event until its 3 s deadline, so one process
/// is always in its handler; the other applies `quiet`'s events at once.
/// Without the cap both processes would be in noisy's handler most of the
/// time, and each of quiet's events would wait for one of them to come out
/// (up to 3 s). SQLite has one worker process by design.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_capped_at_one_worker_process_leaves_the_other_process_free() {
    let Some(db) = TestDb::create(Backend::Postgres, "capped_tenant").await else { return };
    let first = TestServer::start_with(&db, options(&db)).await;
    let capped = json!({ "event_deadline_ms": 3000, "max_worker_processes": 1 });
    create(&first, "noisy", "whsec_noisy", "sk_noisy", capped).await;
    create(&first, "quiet", "whsec_quiet", "sk_quiet", json!({})).await;
    deploy(&first, "noisy", stamped(1)).await;
    deploy(&first, "quiet", stamped(2)).await;
    // Started once the tenants exist, so it serves them from the start.
    let second = TestServer::start_with(&db, options(&db)).await;
    let servers = [&first, &second];
    // Enough to keep noisy in its handler in both processes for the whole test, were that allowed.
    for i in 0..12 {
        let data = json!({ "i": i });
        let (_, status) = deliver(servers[i % 2], "/t/noisy/workos/webhook", "whsec_noisy", "test.loop", data).await;
        assert_eq!(status, 200);
    }
    tokio::time::sleep(Duration::from_millis(500)).await; // both workers have seen noisy's events
    let (latencies, worst) = quiet_latencies(&db, &servers).await;
    assert!(worst < Duration::from_millis(1500), "quiet waited {worst:?} for a worker: {latencies:?}");
}

/// Two host processes on one database: a tenant created, deployed to or
/// deleted through one is served, run or refused by the other after its next
/// poll (`modules.poll_interval_ms`, 1 s by default), and a tenant token works
/// on both.
async fn another_process_on_the_same_database_follows_tenant_changes(db: TestDb) {
    let a = TestServer::start_with(&db, options(&db)).await;
    // One worker for both (two SQLite processes must not both apply events).
    let b = TestServer::start_with(&db, options(&db).arg("--no-worker")).await;
    create(&a, "acme", "whsec_two", "sk_two", json!({})).await;
    let (_, status) = deliver(&b, "/t/acme/workos/webhook", "whsec_two", "user.created", json!({})).await;
    assert_eq!(status, 404, "b has not polled yet");
    eventually("b serves acme", Duration::from_secs(10), || async {
        let data = user("user_two", "two@example.com", "Two", "2025-01-01T00:00:01.000Z");
        (deliver(&b, "/t/acme/workos/webhook", "whsec_two", "user.created", data).await.1 == 200).then_some(())
    })
    .await;
    let store = db.store().await;
    eventually("a's worker applies what b accepted", Duration::from_secs(30), || async {
        store.get_user("acme", "user_two").await.unwrap().map(drop)
    })
    .await;

    let token = a.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await.body["token"]
        .as_str()
        .unwrap()
        .to_string();
    let reply = b.admin("POST", "/t/acme/admin/modules?activate=true", Some(&token), Some(stamped(4))).await;
    assert_eq!(reply.status, 201, "a token made through a works on b: {reply:?}");
    eventually("a runs the version activated through b", Duration::from_secs(10), || async {
        let (status, payload) = act(&a, "acme", "sk_two", "Version", "sk_two").await;
        (status == 200 && payload.ok()?["error_message"] == "version 4").then_some(())
    })
    .await;

    let deleted = a.admin("DELETE", "/admin/tenants/acme", Some(ROOT), None).await;
    assert_eq!(deleted.status, 204);
    // Until its next poll b may still know acme, but a token made through it
    // now would outlive acme (and open a later acme): refused either way.
    let late = b.admin("POST", "/admin/tenants/acme/tokens", Some(ROOT), None).await;
    assert_eq!((late.status, late.code()), (404, "tenant_not_found"), "{late:?}");
    // Until its next poll b may still decide acme's sign-ins; none of it is kept.
    let (status, _) = act(&b, "acme", "sk_two", "Version", "sk_two").await;
    assert!(status == 200 || status == 404, "{status}");
    eventually("b stops serving acme", Duration::from_secs(10), || async {
        (deliver(&b, "/t/acme/workos/webhook", "whsec_two", "user.created", json!({})).await.1 == 404).then_some(())
    })
    .await;
    eventually("nothing of acme is left, whatever b accepted meanwhile", Duration::from_secs(10), || async {
        store.count_tenant_rows("acme").await.unwrap().iter().all(|(_, n)| *n == 0).then_some(())
    })
    .await;
}

/// A tenant whose action handler hangs gets the fallback for every call past
/// its `max_concurrent_actions` at once, while another tenant's sign-ins are
/// still decided by its own handler.
async fn one_tenant_cannot_take_every_actions_call(db: TestDb) {
    let server = Arc::new(TestServer::start_with(&db, options(&db)).await);
    let slow = json!({ "max_concurrent_actions": 2, "action_deadline_ms": 800 });
    create(&server, "slow", "whsec_slow", "sk_slow", slow).await;
    create(&server, "fast", "whsec_fast", "sk_fast", json!({})).await;
    deploy(&server, "slow", stamped(1)).await;
    deploy(&server, "fast", stamped(2)).await;

    let mut burst = Vec::new();
    for _ in 0..12 {
        let server = server.clone();
        burst.push(tokio::spawn(async move { act(&server, "slow", "sk_slow", "Sleep", "sk_slow").await }));
    }
    // While slow's handler calls hang, fast is decided by its own handler.
    for _ in 0..3 {
        let (status, payload) = act(&server, "fast", "sk_fast", "Version", "sk_fast").await;
        assert_eq!((status, payload.unwrap()["error_message"].clone()), (200, json!("version 2")));
    }
    for call in burst {
        let (status, payload) = call.await.unwrap();
        assert_eq!(status, 200);
        assert!(payload.unwrap()["error_message"].as_str().unwrap().contains("temporarily unavailable"));
    }
    let store = db.store().await;
    let decisions = eventually("slow's decisions recorded", Duration::from_secs(10), || async {
        let d = store.list_decisions("slow", 100).await.unwrap();
        (d.len() == 12).then_some(d)
    })
    .await;
    let capped =
        decisions.iter().filter(|d| d.error.as_deref().unwrap_or("").contains("max_concurrent_actions")).count();
    let ran = decisions.iter().filter(|d| d.error.as_deref().unwrap_or("").contains("no verdict within")).count();
    assert!(decisions.iter().all(|d| d.source == "fallback"), "{decisions:?}");
    assert_eq!(capped + ran, 12, "{decisions:?}");
    assert!((1..=4).contains(&ran), "at most the cap ran at a time ({ran} ran, {capped} refused at once)");
}

/// A tenant capped at one query at a time answers 503 `queries_busy` while
/// its one query runs, and another tenant's queries still run (the host's
/// `queries.max_concurrent`, 32, would have let the capped one run them too).
async fn one_tenant_cannot_take_every_query_slot(db: TestDb) {
    let server = Arc::new(TestServer::start_with(&db, options(&db)).await);
    let capped = json!({ "max_concurrent_queries": 1, "query_deadline_ms": 1500 });
    create(&server, "slow", "whsec_slow", "sk_slow", capped).await;
    create(&server, "fast", "whsec_fast", "sk_fast", json!({ "query_deadline_ms": 1500 })).await;
    deploy(&server, "slow", stamped(1)).await;
    deploy(&server, "fast", stamped(2)).await;
    let query = {
        let server = server.clone();
        move |slug: &'static str, name: &'static str| {
            let server = server.clone();
            async move { server.authorized("POST", &format!("/t/{slug}/query/{name}"), None, None).await }
        }
    };

    // Slow's one query loops until its deadline, holding the tenant's one
    // permit (sent again while it finds the permit taken by an echo below;
    // with a pause, so that its tries do not all fall within one slow echo).
    let looping = tokio::spawn({
        let query = query.clone();
        async move {
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                let reply = query("slow", "loop").await;
                if reply.0 != 503 {
                    return reply;
                }
                assert!(Instant::now() < give_up, "the looping query never found slow's permit free");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    let (status, busy, _) = eventually("slow's second query to find it busy", Duration::from_secs(5), || async {
        let reply = query("slow", "echo").await;
        (reply.0 == 503).then_some(reply)
    })
    .await;
    assert_eq!(busy["error"]["code"], "queries_busy", "{status}: {busy}");
    assert!(busy["error"]["message"].as_str().unwrap().contains("max_concurrent_queries"), "{busy}");
    // Meanwhile fast's queries run, several at once.
    let (a, b) = tokio::join!(query("fast", "echo"), query("fast", "echo"));
    assert_eq!((a.0, b.0), (200, 200), "{a:?} {b:?}");
    assert_eq!(looping.await.unwrap().0, 504, "the loop is stopped at its deadline");
    assert_eq!(query("slow", "echo").await.0, 200, "its permit is free again");
}

/// The User data example writes two documents per new user (its `users` row
/// and a `todoLists` document). With a quota of 3, the second user's event
/// stops at its second insert: nothing of it is kept, it is retried and
/// dead-lettered with the reason, and a tenant without a quota is untouched.
/// Once a deletion frees room, the retried event goes through.
async fn a_tenant_cannot_store_more_documents_than_its_quota(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    let store = db.store().await;
    let ((acme, acme_hook, acme_act), (globex, globex_hook, globex_act)) = (TENANTS[0], TENANTS[1]);
    let invalid =
        json!({ "slug": "zero", "webhook_secret": "w", "action_secret": "a", "options": { "max_documents": 0 } });
    let refused = server.admin("POST", "/admin/tenants", Some(ROOT), body(invalid)).await;
    assert_eq!((refused.status, refused.code()), (400, "invalid_tenant"), "{refused:?}");
    create(&server, acme, acme_hook, acme_act, json!({ "max_documents": 3 })).await;
    create(&server, globex, globex_hook, globex_act, json!({})).await;
    let shown = server.admin("GET", &format!("/admin/tenants/{acme}"), Some(ROOT), None).await;
    assert_eq!(shown.body["effective"]["max_documents"], json!(3), "{shown:?}");
    let example = std::fs::read(rust_guest("user_data")).unwrap();
    for slug in [acme, globex] {
        deploy(&server, slug, example.clone()).await;
    }
    let new_user = |id: &str| user(id, &format!("{id}@example.com"), id, "2025-01-01T00:00:01.000Z");

    let (first, _) = deliver(&server, &webhook_path(acme), acme_hook, "user.created", new_user("user_a")).await;
    let (second, _) = deliver(&server, &webhook_path(acme), acme_hook, "user.created", new_user("user_b")).await;
    for id in ["user_a", "user_b"] {
        assert_eq!(deliver(&server, &webhook_path(globex), globex_hook, "user.created", new_user(id)).await.1, 200);
    }
    let dead = eventually("the second user's event dead-lettered", Duration::from_secs(60), || async {
        store.get_event(acme, &second).await.unwrap().filter(|e| e.status == "dead")
    })
    .await;
    assert_eq!(dead.attempts, 3, "retried before it was dead-lettered: {dead:?}");
    let error = dead.last_error.unwrap_or_default();
    assert!(error.contains("document quota of 3"), "the reason is named: {error}");
    assert_eq!(store.get_event(acme, &first).await.unwrap().unwrap().status, "done");
    let users = tenant_documents(&store, acme, "users").await;
    let names: Vec<&str> = users.iter().map(|(_, d)| d["authId"].as_str().unwrap()).collect();
    assert_eq!(names, ["user_a"], "nothing of the refused event is kept");
    assert_eq!(tenant_documents(&store, acme, "todoLists").await.len(), 1);
    assert!(store.get_user(acme, "user_b").await.unwrap().is_none(), "its sync rolled back too");
    eventually("the tenant without a quota applied both", Duration::from_secs(60), || async {
        (tenant_documents(&store, globex, "users").await.len() == 2).then_some(())
    })
    .await;

    // Deleting user_a's app row frees one place: the retried event fits (2 + 2 - 1 = 3).
    let (gone, _) = deliver(&server, &webhook_path(acme), acme_hook, "user.deleted", json!({ "id": "user_a" })).await;
    eventually("the deletion applied", Duration::from_secs(60), || async {
        store.get_event(acme, &gone).await.unwrap().filter(|e| e.status == "done")
    })
    .await;
    let retried = server.admin("POST", &format!("/t/{acme}/admin/events/{second}/retry"), Some(ROOT), None).await;
    assert!(retried.status < 300, "{retried:?}");
    eventually("the retried event applied within the quota", Duration::from_secs(60), || async {
        store.get_event(acme, &second).await.unwrap().filter(|e| e.status == "done")
    })
    .await;
    let users = tenant_documents(&store, acme, "users").await;
    assert_eq!(users.iter().map(|(_, d)| d["authId"].as_str().unwrap()).collect::<Vec<_>>(), ["user_b"]);
    assert_eq!(tenant_documents(&store, acme, "todoLists").await.len(), 2);
}

/// After an Actions call the host makes the next call's instance ahead, under
/// the tenant's limits of that moment. Once the limits change (here the
/// document quota), that instance must not serve: the next call runs under
/// the new limits. The hostile fixture's `Write` sign-in inserts one document.
async fn an_actions_call_made_ready_ahead_follows_changed_limits(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db)).await;
    create(&server, "acme", "whsec_acme", "sk_acme", json!({ "max_documents": 10 })).await;
    deploy(&server, "acme", stamped(1)).await;
    for _ in 0..2 {
        let (status, payload) = act(&server, "acme", "sk_acme", "Write", "sk_acme").await;
        assert_eq!((status, payload.unwrap()["verdict"].clone()), (200, json!("Allow")), "within the quota");
    }
    let change = json!({ "options": { "max_documents": 2 } });
    let patched = server.admin("PATCH", "/admin/tenants/acme", Some(ROOT), body(change)).await;
    assert_eq!(patched.status, 200, "{patched:?}");
    let (status, payload) = act(&server, "acme", "sk_acme", "Write", "sk_acme").await;
    let payload = payload.unwrap();
    assert_eq!((status, payload["verdict"].clone()), (200, json!("Deny")), "the new quota applies: {payload}");
    // Room again: the call after runs, under the limits of now.
    let change = json!({ "options": { "max_documents": 3 } });
    assert_eq!(server.admin("PATCH", "/admin/tenants/acme", Some(ROOT), body(change)).await.status, 200);
    let (_, payload) = act(&server, "acme", "sk_acme", "Write", "sk_acme").await;
    assert_eq!(payload.unwrap()["verdict"], "Allow");
    let store = db.store().await;
    let decisions = eventually("acme's decisions recorded", Duration::from_secs(10), || async {
        let d = store.list_decisions("acme", 100).await.unwrap();
        (d.len() == 4).then_some(d)
    })
    .await;
    let quota = decisions.iter().filter(|d| d.error.as_deref().unwrap_or("").contains("document quota of 2")).count();
    assert_eq!(quota, 1, "one call was stopped by the lowered quota: {decisions:?}");
}

/// Without `handler.instance_slots`, a host sizes its instance pool at two
/// slots per tenant stored when it starts in each of the pool's parts (one
/// per CPU, at most 16; at least 1000 slots, at most 10000); the setting wins.
async fn the_instance_pool_is_sized_for_the_tenants_stored_at_start(db: TestDb) {
    let status = |server: TestServer| async move {
        let reply = server.admin("GET", "/admin/status", Some(ROOT), None).await;
        assert_eq!(reply.status, 200, "{reply:?}");
        let number = |key: &str| reply.body[key].as_u64().unwrap();
        (number("instance_slots"), number("instance_pool_parts"))
    };
    // The same machine, so the same rule as wasmtime's: one part per CPU, at most 16.
    let cpus = std::thread::available_parallelism().unwrap().get().min(16) as u64;
    assert_eq!(status(TestServer::start_with(&db, options(&db)).await).await, (1000, cpus));
    let store = db.store().await;
    for i in 0..700 {
        assert!(store.insert_tenant(&mut bare_tenant(&format!("tenant{i:03}"))).await.unwrap());
    }
    let expected = (1400 * cpus).clamp(1000, 10_000);
    assert_eq!(status(TestServer::start_with(&db, options(&db)).await).await, (expected, cpus));
    let set = options(&db).env("AUTHKIT_INSTANCE_SLOTS", "64");
    assert_eq!(status(TestServer::start_with(&db, set).await).await.0, 64);
}

/// `GET /admin/tenants`: every tenant, and the figures of the loaded ones.
async fn listed(server: &TestServer) -> Value {
    let reply = server.admin("GET", "/admin/tenants", Some(ROOT), None).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    reply.body
}

/// `modules.max_loaded_tenants`: with room for two, four tenants (`default`
/// included) taking turns close each other's idle deployments, and a
/// closed tenant comes back on its next use with its active version, an
/// activation made while it was closed included, and its events applied.
async fn only_a_bounded_number_of_tenants_stay_loaded(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db).env("AUTHKIT_MAX_LOADED_TENANTS", "2")).await;
    assert_eq!(listed(&server).await["loaded"]["max"], 2);
    for (n, (slug, webhook, action)) in TENANTS.into_iter().enumerate() {
        create(&server, slug, webhook, action, json!({})).await;
        deploy(&server, slug, stamped(n as u32 + 1)).await;
    }
    let version_of = |slug: &str| match slug {
        "acme" => 1,
        "globex" => 2,
        _ => 3,
    };
    let mut sent = std::collections::HashMap::new();
    for round in 0..3 {
        for (slug, webhook, action) in TENANTS {
            let (status, payload) = act(&server, slug, action, "Version", action).await;
            assert_eq!(status, 200, "{slug}, round {round}");
            let expected = format!("version {}", version_of(slug));
            assert_eq!(payload.unwrap()["error_message"], expected.as_str(), "{slug}'s own version, round {round}");
            let (_, status) =
                deliver(&server, &webhook_path(slug), webhook, "test.other", json!({ "round": round })).await;
            assert_eq!(status, 200);
            *sent.entry(slug).or_insert(0) += 1;
        }
    }
    let store = db.store().await;
    eventually("every tenant's events applied", Duration::from_secs(60), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    for (slug, count) in &sent {
        let seen = tenant_documents(&store, slug, "seen").await;
        assert_eq!(seen.len(), *count, "{slug}'s handler ran once per event, loaded or not");
    }

    // Activated through the admin API, then closed again by the others' turns.
    let upload = server.admin("POST", "/t/acme/admin/modules?activate=true", Some(ROOT), Some(stamped(7))).await;
    assert_eq!(upload.status, 201, "{upload:?}");
    eventually("acme closed by the others' turns", Duration::from_secs(20), || async {
        for (slug, _, action) in &TENANTS[1..] {
            assert_eq!(act(&server, slug, action, "Version", action).await.0, 200);
        }
        let all = listed(&server).await;
        let acme = all["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == "acme").cloned().unwrap();
        (acme["loaded"] == false).then_some(())
    })
    .await;
    let (_, payload) = act(&server, "acme", "sk_action_acme", "Version", "sk_action_acme").await;
    assert_eq!(payload.unwrap()["error_message"], "version 7", "acme opened again on its active version");

    // Once idle, the next opening brings the count back within the bound (a
    // deployment in use when another opens, by the version check for one, is
    // kept until then), and tenants taking turns have closed each other.
    eventually("at most two tenants loaded", Duration::from_secs(20), || async {
        // Three tenants in turn: with room for two, at least one opens.
        for (slug, _, action) in TENANTS {
            assert_eq!(act(&server, slug, action, "Version", action).await.0, 200);
        }
        let stats = listed(&server).await["loaded"].clone();
        (stats["open"].as_u64() <= Some(2) && stats["evicted"].as_u64() >= Some(3)).then_some(())
    })
    .await;
}

/// A tenant closed by the bound on loaded tenants opens again with the
/// indexes its stored versions declare, read back from the database: the
/// hostile fixture's `test.seq` handler finds its user's document through the
/// `seq.subject` index (which the tenant's upload added) and updates it, or
/// inserts one if it finds none. After each opening, finds reach the documents
/// written before the tenant closed and those written since; a lost index
/// would fail the event ("not indexed"), a stale one would insert a second
/// document for the user.
async fn a_closed_tenant_opens_again_with_its_indexes(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db).env("AUTHKIT_MAX_LOADED_TENANTS", "1")).await;
    for (n, (slug, webhook, action)) in TENANTS[..2].iter().enumerate() {
        create(&server, slug, webhook, action, json!({})).await;
        deploy(&server, slug, stamped(n as u32 + 1)).await;
    }
    let store = db.store().await;
    let (acme, acme_hook, _) = TENANTS[0];
    let (globex, _, globex_act) = TENANTS[1];
    let apply = |user: &'static str, n: i64| {
        let (server, store) = (&server, &store);
        async move {
            let data = json!({ "user_id": user, "n": n });
            assert_eq!(deliver(server, &webhook_path(acme), acme_hook, "test.seq", data).await.1, 200);
            eventually("acme's event applied", Duration::from_secs(30), || async {
                (store.count_unfinished_of(acme).await.unwrap() == 0).then_some(())
            })
            .await;
        }
    };
    let close_acme = || async {
        eventually("acme closed by globex's calls", Duration::from_secs(20), || async {
            assert_eq!(act(&server, globex, globex_act, "Version", globex_act).await.0, 200);
            let all = listed(&server).await;
            let entry = all["tenants"].as_array().unwrap().iter().find(|t| t["slug"] == acme).cloned().unwrap();
            (entry["loaded"] == false).then_some(())
        })
        .await;
    };
    apply("user_1", 0).await;
    close_acme().await;
    apply("user_1", 1).await; // found through the index read back
    apply("user_2", 0).await; // inserted after the opening
    close_acme().await;
    apply("user_2", 1).await;
    apply("user_1", 2).await;

    let filter = authkit_host::store::inbox::EventFilter { tenant: acme.into(), limit: 100, ..Default::default() };
    let events = store.list_events(&filter).await.unwrap();
    assert_eq!(events.len(), 5);
    for e in &events {
        assert_eq!(e.status, "done", "{e:?}");
    }
    let mut last: Vec<(String, i64)> = tenant_documents(&store, acme, "seq")
        .await
        .into_iter()
        .map(|(_, d)| (d["subject"].as_str().unwrap().to_string(), d["last"].as_i64().unwrap()))
        .collect();
    last.sort();
    assert_eq!(last, [("user_1".to_string(), 2), ("user_2".to_string(), 1)], "one document per user, found each time");
    assert!(tenant_documents(&store, acme, "violations").await.is_empty());
    assert!(listed(&server).await["loaded"]["evicted"].as_u64() >= Some(2));
}

/// `modules.max_loaded_code_mib`: three tenants, each with its own version of
/// about 0.8 MiB of compiled code, and room for 2 MiB: at most two stay
/// loaded, and each still runs its own version.
async fn loaded_tenants_hold_a_bounded_amount_of_compiled_code(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db).env("AUTHKIT_MAX_LOADED_CODE_MIB", "2")).await;
    for (n, (slug, webhook, action)) in TENANTS.into_iter().enumerate() {
        create(&server, slug, webhook, action, json!({})).await;
        deploy(&server, slug, stamped(n as u32 + 1)).await;
        if n == 0 {
            let one = listed(&server).await["loaded"]["code_bytes"].as_u64().unwrap();
            assert!((600_000..1_048_576).contains(&one), "the test's premise: one version's code is {one} bytes");
        }
    }
    for round in 0..2 {
        for (n, (slug, _, action)) in TENANTS.into_iter().enumerate() {
            let (status, payload) = act(&server, slug, action, "Version", action).await;
            assert_eq!(status, 200, "{slug}, round {round}");
            let expected = format!("version {}", n + 1);
            assert_eq!(payload.unwrap()["error_message"], expected.as_str(), "{slug}'s own version, round {round}");
        }
    }
    let stats = eventually("at most 2 MiB of code loaded", Duration::from_secs(20), || async {
        for (slug, _, action) in TENANTS {
            assert_eq!(act(&server, slug, action, "Version", action).await.0, 200);
        }
        // The bound holds once the check after the last upload ran (or an
        // opening since), and from then on the tenants taking turns close
        // each other.
        let stats = listed(&server).await["loaded"].clone();
        let within = stats["code_bytes"].as_u64() <= stats["max_code_bytes"].as_u64();
        (within && stats["evicted"].as_u64() >= Some(3)).then_some(stats)
    })
    .await;
    assert_eq!(stats["max_code_bytes"], 2 << 20);
    assert!(stats["open"].as_u64().unwrap() <= 3, "two tenants' code at most, and `default` has none: {stats}");
}

/// The cache keeps what is used often: with room for three, a tenant in
/// steady use stays loaded while four others are used once each (closing
/// the least recently used would have closed it on the second of them).
async fn a_busy_tenant_stays_loaded_while_others_come_and_go(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db).env("AUTHKIT_MAX_LOADED_TENANTS", "3")).await;
    let others = [("hooli", "whsec_hooli_0004", "sk_action_hooli"), ("umbrella", "whsec_umbrella_5", "sk_action_umb")];
    let all: Vec<(&str, &str, &str)> = TENANTS.into_iter().chain(others).collect();
    for (n, (slug, webhook, action)) in all.iter().enumerate() {
        create(&server, slug, webhook, action, json!({})).await;
        deploy(&server, slug, stamped(n as u32 + 1)).await;
    }
    let (busy, _, busy_secret) = all[0];
    for _ in 0..10 {
        assert_eq!(act(&server, busy, busy_secret, "Version", busy_secret).await.0, 200);
    }
    let evicted_before = listed(&server).await["loaded"]["evicted"].as_u64().unwrap();
    for (n, (slug, _, action)) in all.iter().enumerate().skip(1) {
        let (status, payload) = act(&server, slug, action, "Version", action).await;
        assert_eq!(status, 200, "{slug}");
        let expected = format!("version {}", n + 1);
        assert_eq!(payload.unwrap()["error_message"], expected.as_str(), "{slug} runs its own version");
    }
    let before = listed(&server).await;
    assert!(before["loaded"]["open"].as_u64() <= Some(3), "{before}");
    assert!(
        before["loaded"]["evicted"].as_u64().unwrap() >= evicted_before + 2,
        "the others closed each other: {before}"
    );
    let loaded: Vec<(String, bool)> = before["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| (t["slug"].as_str().unwrap().to_string(), t["loaded"] == true))
        .collect();
    assert!(loaded.contains(&(busy.to_string(), true)), "the busy tenant is still loaded: {loaded:?}");
    let (_, payload) = act(&server, busy, busy_secret, "Version", busy_secret).await;
    assert_eq!(payload.unwrap()["error_message"], "version 1");
    // The operator sees it as a hit, not a load.
    let after = listed(&server).await;
    let count = |v: &Value, k: &str| v["loaded"][k].as_u64().unwrap();
    assert_eq!(count(&after, "loads"), count(&before, "loads"), "{after}");
    assert!(count(&after, "hits") > count(&before, "hits"), "{after}");
}

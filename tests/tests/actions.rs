//! WorkOS Actions over real HTTP with real components: verdicts from the
//! example handler, the signed fallback when a handler fails or is slow, the
//! no-handler verdict, and every rejection. Each response is checked by a
//! verifier written here, independently of the host's signer.

use std::time::Duration;

use authkit_host::store::documents::Indexes;
use authkit_tests::documents::{documents, with_documents};
use authkit_tests::guests::rust_guest;
use authkit_tests::server::cli;
use authkit_tests::workos::{
    Emulator, authentication_action, now_ms, registration_action, user, verify_action_response,
};
use authkit_tests::{Backend, ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(
    the_example_allows_and_denies_with_signed_verdicts,
    a_failing_or_slow_handler_gets_the_signed_fallback_in_time,
    requests_that_are_not_genuine_are_refused_and_change_nothing,
);

const ACTION_SECRET: &str = "sk_action_integration_test";
const AUTH_RESPONSE: &str = "authentication_action_response";
const REG_RESPONSE: &str = "user_registration_action_response";
const DEFAULT_FALLBACK: &str = "Sign-in is temporarily unavailable. Please try again in a moment.";

fn options(db: &TestDb, guest: Option<&str>, config: &str) -> ServerOptions {
    let path = db.dir.path().join("authkit.toml");
    std::fs::write(&path, format!("[worker]\npoll_interval_ms = 50\n\n[actions]\n{config}\n")).unwrap();
    let mut options =
        ServerOptions::default().env("WORKOS_ACTION_SECRET", ACTION_SECRET).arg("--config").arg(path.to_str().unwrap());
    if let Some(guest) = guest {
        options = options.arg("--handler").arg(rust_guest(guest).to_str().unwrap());
    }
    options
}

/// Sends an Actions request signed as WorkOS does; returns the verified payload
/// and how long the round trip took.
async fn act(server: &TestServer, body: Vec<u8>, response_object: &str) -> (Value, Duration) {
    let signature = Emulator::new(ACTION_SECRET).signature(now_ms(), &body);
    let (status, reply, elapsed) = server.post_raw("/workos/action", body, &[("WorkOS-Signature", signature)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let payload = verify_action_response(ACTION_SECRET, &reply, response_object)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&reply)));
    let age = now_ms() - payload["timestamp"].as_i64().unwrap();
    assert!((0..5000).contains(&age), "the timestamp is the response time: {age} ms old");
    (payload, elapsed)
}

fn authenticate(id: &str, user_id: &str, first_name: &str) -> Vec<u8> {
    authentication_action(id, user(user_id, &format!("{user_id}@example.com"), first_name, "2025-01-01T00:00:01.000Z"))
}

/// `actions list --json`, once `n` decisions are recorded (they are written after the response).
async fn decisions(db: &TestDb, n: usize) -> Vec<Value> {
    eventually("the decisions to be recorded", Duration::from_secs(20), || async {
        let (ok, out, err) = cli(db, &["actions", "list", "--json"]);
        assert!(ok, "{err}");
        let rows: Vec<Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        (rows.len() >= n).then_some(rows)
    })
    .await
}

async fn the_example_allows_and_denies_with_signed_verdicts(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db, Some("user_data"), "")).await;
    let store = db.store().await;

    let (gmail, _) = act(&server, registration_action("act_1", "jane@gmail.com", "Jane"), REG_RESPONSE).await;
    assert_eq!(
        gmail,
        json!({"timestamp": gmail["timestamp"], "verdict": "Deny", "error_message": "Gmail accounts are not allowed"})
    );
    let (work, _) = act(&server, registration_action("act_2", "jane@foocorp.com", "Jane"), REG_RESPONSE).await;
    assert_eq!(work["verdict"], "Allow");
    assert!(work.get("error_message").is_none());

    // A user the app knows, then bans: sign-in is denied from the app's own table.
    server
        .send(
            "user.created",
            user("user_b", "b@example.com", "Bea", "2025-01-01T00:00:01.000Z"),
            "2025-01-01T00:00:01.000Z",
        )
        .await;
    let (allowed, _) = act(&server, authenticate("act_3", "user_b", "Bea"), AUTH_RESPONSE).await;
    assert_eq!(allowed["verdict"], "Allow");
    let app_user = eventually("the app user", Duration::from_secs(20), || async {
        documents(&store, "users").await.into_iter().find(|(_, d)| d["authId"] == "user_b")
    })
    .await;
    let indexes = Indexes::new([("users".to_string(), "authId".to_string())]).unwrap();
    with_documents(&store, indexes.clone(), move |docs| {
        docs.patch("users", &app_user.0, r#"{"banned": true}"#).unwrap()
    })
    .await;
    let (banned, _) = act(&server, authenticate("act_4", "user_b", "Bea"), AUTH_RESPONSE).await;
    assert_eq!(banned["verdict"], "Deny");
    assert_eq!(banned["error_message"], "This account has been suspended.");
    let (stranger, _) = act(&server, authenticate("act_5", "user_z", "Zed"), AUTH_RESPONSE).await;
    assert_eq!(stranger["verdict"], "Allow");
    // A document the app wrote itself, with nothing but the id and the flag,
    // is decided by the handler too (not by the fallback, which also denies).
    with_documents(&store, indexes, |docs| docs.insert("users", r#"{"authId": "user_y", "banned": true}"#).unwrap())
        .await;
    let (flagged, _) = act(&server, authenticate("act_6", "user_y", "Yan"), AUTH_RESPONSE).await;
    assert_eq!(flagged["error_message"], "This account has been suspended.");

    let recorded = decisions(&db, 6).await;
    assert!(recorded.iter().all(|d| d["source"] == "handler"), "{recorded:?}");
    let act_1 = recorded.iter().find(|d| d["action_id"] == "act_1").unwrap();
    assert_eq!((act_1["kind"].as_str(), act_1["verdict"].as_str()), (Some("user_registration"), Some("Deny")));
    assert_eq!(act_1["message"], "Gmail accounts are not allowed");
}

async fn a_failing_or_slow_handler_gets_the_signed_fallback_in_time(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db, Some("hostile"), "deadline_ms = 300")).await;
    let store = db.store().await;
    let deadline = Duration::from_millis(300);
    // Generous for a loaded CI machine, and still far below a timeout WorkOS would apply.
    let margin = Duration::from_millis(400);

    for (i, name) in ["Panic", "Loop", "Sleep"].iter().enumerate() {
        let (verdict, elapsed) =
            act(&server, authenticate(&format!("act_fail_{i}"), "user_x", name), AUTH_RESPONSE).await;
        assert_eq!(verdict["verdict"], "Deny", "{name}");
        assert_eq!(verdict["error_message"], DEFAULT_FALLBACK, "{name}");
        assert!(elapsed < deadline + margin, "{name}: the fallback took {elapsed:?}");
    }
    // A handler's own Deny: a long non-ASCII message, cut to 500 characters.
    let (denied, _) = act(&server, registration_action("act_deny", "d@example.com", "Deny"), REG_RESPONSE).await;
    let message = denied["error_message"].as_str().unwrap();
    assert_eq!(message.chars().count(), 500);
    assert!(message.starts_with("Zugriff verweigert — üü"));
    let (allowed, _) = act(&server, registration_action("act_ok", "w@example.com", "Write"), REG_RESPONSE).await;
    assert_eq!(allowed["verdict"], "Allow");

    // Only the calls whose verdict was sent kept their writes.
    eventually("the failed calls to end", Duration::from_secs(20), || async {
        let recorded = decisions(&db, 5).await;
        let names: Vec<Value> =
            documents(&store, "decisions").await.into_iter().map(|(_, d)| d["name"].clone()).collect();
        (names == vec![json!("Deny"), json!("Write")]).then_some(recorded)
    })
    .await;
    let recorded = decisions(&db, 5).await;
    for i in 0..3 {
        let d = recorded.iter().find(|d| d["action_id"] == format!("act_fail_{i}")).unwrap();
        assert_eq!(d["source"], "fallback", "{d}");
        assert!(d["error"].as_str().is_some_and(|e| !e.is_empty()), "{d}");
    }
    let panicked = recorded.iter().find(|d| d["action_id"] == "act_fail_0").unwrap();
    assert!(panicked["error"].as_str().unwrap().contains("trapped"), "{panicked}");
    let looped = recorded.iter().find(|d| d["action_id"] == "act_fail_1").unwrap();
    assert!(looped["error"].as_str().unwrap().contains("300 ms"), "{looped}");
    assert_eq!(recorded.iter().find(|d| d["action_id"] == "act_ok").unwrap()["source"], "handler");
}

async fn requests_that_are_not_genuine_are_refused_and_change_nothing(db: TestDb) {
    let server = TestServer::start_with(&db, options(&db, Some("hostile"), "")).await;
    let body = registration_action("act_r", "r@example.com", "Write");
    let genuine = Emulator::new(ACTION_SECRET);
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no signature", body.clone(), vec![], 401, "signature_missing"),
        ("malformed", body.clone(), vec![("WorkOS-Signature", "t=1, v1=zz".into())], 401, "signature_malformed"),
        (
            "signed with the webhook secret",
            body.clone(),
            vec![("WorkOS-Signature", server.emulator.signature(now_ms(), &body))],
            401,
            "signature_mismatch",
        ),
        (
            "31 s old",
            body.clone(),
            vec![("WorkOS-Signature", genuine.signature(now_ms() - 31_000, &body))],
            401,
            "signature_expired",
        ),
        (
            "31 s ahead",
            body.clone(),
            vec![("WorkOS-Signature", genuine.signature(now_ms() + 31_000, &body))],
            401,
            "signature_from_future",
        ),
    ];
    for (name, body, headers, status, code) in cases {
        let (got, reply, _) = server.post_raw("/workos/action", body, &headers).await;
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!((got, reply["error"]["code"].as_str()), (status, Some(code)), "{name}: {reply}");
    }
    for (name, body, code) in [
        ("not JSON", b"{not json".to_vec(), "invalid_json"),
        ("JSON, but an array", b"[]".to_vec(), "invalid_action"),
        ("JSON, but a string", br#""authentication_action_context""#.to_vec(), "invalid_action"),
        (
            "an event, not an action",
            br#"{"object":"event","id":"e","event":"user.created","data":{}}"#.to_vec(),
            "invalid_action",
        ),
        (
            "a registration without user_data",
            br#"{"object":"user_registration_action_context","id":"a"}"#.to_vec(),
            "invalid_action",
        ),
    ] {
        let signature = genuine.signature(now_ms(), &body);
        let (got, reply, _) = server.post_raw("/workos/action", body, &[("WorkOS-Signature", signature)]).await;
        let reply: Value = serde_json::from_slice(&reply).unwrap();
        assert_eq!((got, reply["error"]["code"].as_str()), (400, Some(code)), "{name}: {reply}");
    }
    // Nothing was decided, recorded or written.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, out, _) = cli(&db, &["actions", "list", "--json"]);
    assert!(ok && out.trim().is_empty(), "{out}");
    assert!(documents(&db.store().await, "decisions").await.is_empty());
    assert_eq!(server.get("/healthz").await.status, 200);
}

/// Without an actions handler the configured no-handler verdict is sent (allow
/// by default); without the secret the route says which variable to set.
#[tokio::test]
async fn no_handler_verdicts_and_a_missing_secret() {
    let db = TestDb::create(Backend::Sqlite, "no_handler").await.unwrap();
    let server = TestServer::start_with(&db, options(&db, None, "")).await;
    let (verdict, _) = act(&server, authenticate("act_n1", "user_n", "Nan"), AUTH_RESPONSE).await;
    assert_eq!(verdict["verdict"], "Allow");
    assert_eq!(decisions(&db, 1).await[0]["source"], "no_handler");
    drop(server);

    let db = TestDb::create(Backend::Sqlite, "no_handler_deny").await.unwrap();
    let config = "no_handler = \"deny\"\nno_handler_message = \"Actions are not set up yet\"";
    let server = TestServer::start_with(&db, options(&db, None, config)).await;
    let (verdict, _) = act(&server, registration_action("act_n2", "n@example.com", "Nan"), REG_RESPONSE).await;
    assert_eq!(
        (verdict["verdict"].as_str(), verdict["error_message"].as_str()),
        (Some("Deny"), Some("Actions are not set up yet"))
    );
    drop(server);

    let db = TestDb::create(Backend::Sqlite, "no_secret").await.unwrap();
    let server = TestServer::start(&db).await;
    let body = registration_action("act_n3", "n@example.com", "Nan");
    let signature = Emulator::new(ACTION_SECRET).signature(now_ms(), &body);
    let (status, reply, _) = server.post_raw("/workos/action", body, &[("WorkOS-Signature", signature)]).await;
    let reply: Value = serde_json::from_slice(&reply).unwrap();
    assert_eq!((status, reply["error"]["code"].as_str()), (503, Some("action_secret_not_configured")));
    assert!(reply["error"]["message"].as_str().unwrap().contains("WORKOS_ACTION_SECRET"));
}

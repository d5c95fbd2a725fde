//! One conformance scenario, run against the reference handler in every
//! language it is written in (Rust, JavaScript, Python): the same webhooks, Actions
//! requests and queries, each language's component deployed to a tenant of
//! its own on one host. The resulting documents, verdicts and query answers
//! must be the expected ones, and identical across languages.

use std::time::Duration;

use authkit_host::store::documents::Indexes;
use authkit_host::store::inbox::EventFilter;
use authkit_tests::authkit::AuthKit;
use authkit_tests::documents::{tenant_documents, with_tenant_documents};
use authkit_tests::guests::{js_guest, python_guest, rust_guest};
use authkit_tests::workos::{
    Emulator, authentication_action, now_ms, registration_action, user, verify_action_response,
};
use authkit_tests::{ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(every_language_s_reference_handler_gives_the_same_results);

const CLIENT: &str = "client_01CONFORMANCE";
const ROOT: &str = "root-token-for-conformance";

/// What a language's handler produced, ids and times left out.
#[derive(Debug, PartialEq)]
struct Outcome {
    users: Vec<Value>,
    todo_lists: Vec<Value>,
    verdicts: Vec<Value>,
    answers: Vec<(u16, Value)>,
}

async fn deliver(server: &TestServer, tenant: &str, kind: &str, data: Value, at: &str) {
    let emulator = Emulator::new(&format!("whsec_{tenant}"));
    let (_, body) = emulator.event(kind, data, at);
    let signature = emulator.signature(now_ms(), &body);
    let (status, reply, _) =
        server.post_raw(&format!("/t/{tenant}/workos/webhook"), body, &[("WorkOS-Signature", signature)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
}

async fn act(server: &TestServer, tenant: &str, body: Vec<u8>, object: &str) -> Value {
    let secret = format!("sk_{tenant}");
    let signature = Emulator::new(&secret).signature(now_ms(), &body);
    let (status, reply, _) =
        server.post_raw(&format!("/t/{tenant}/workos/action"), body, &[("WorkOS-Signature", signature)]).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&reply));
    let payload = verify_action_response(&secret, &reply, object).unwrap();
    json!({ "verdict": payload["verdict"], "error_message": payload["error_message"] })
}

/// A body without the host-assigned `id`.
fn without_id(mut v: Value) -> Value {
    if let Some(o) = v.as_object_mut() {
        o.remove("id");
    }
    v
}

fn sorted(mut v: Vec<Value>) -> Vec<Value> {
    v.sort_by_key(|a| a.to_string());
    v
}

async fn scenario(server: &TestServer, db: &TestDb, authkit: &AuthKit, tenant: &str) -> Outcome {
    let t = |s: u32| format!("2025-01-01T00:00:{s:02}.000Z");
    deliver(server, tenant, "user.created", user("user_01MIA", "mia@example.com", "Mia", &t(1)), &t(1)).await;
    deliver(server, tenant, "user.created", user("user_01BOB", "bob@example.com", "Bob", &t(2)), &t(2)).await;
    deliver(server, tenant, "user.updated", user("user_01MIA", "mira@example.com", "Mira", &t(3)), &t(3)).await;
    deliver(server, tenant, "user.created", user("user_01EVE", "eve@example.com", "Eve", &t(4)), &t(4)).await;
    deliver(server, tenant, "user.deleted", user("user_01EVE", "eve@example.com", "Eve", &t(5)), &t(5)).await;
    // An update of a user the app never saw: the handler warns, nothing changes.
    deliver(server, tenant, "user.updated", user("user_01ZED", "zed@example.com", "Zed", &t(6)), &t(6)).await;
    let store = db.store().await;
    eventually("every event to be applied", Duration::from_secs(60), || async {
        (store.count_unfinished_of(tenant).await.unwrap() == 0).then_some(())
    })
    .await;
    let events = store.list_events(&EventFilter { tenant: tenant.into(), ..Default::default() }).await.unwrap();
    assert!(events.iter().all(|e| e.status == "done"), "{tenant}: {events:?}");

    // The app bans Bob (an operator edit of its users table).
    let indexes = Indexes::new([("users".to_string(), "authId".to_string())]).unwrap();
    with_tenant_documents(&store, tenant, indexes, |docs| {
        let page = docs.find("users", "authId", "\"user_01BOB\"", 1, None).unwrap();
        docs.patch("users", &page.documents[0].id, r#"{"banned": true}"#).unwrap();
    })
    .await;

    let mia = user("user_01MIA", "mira@example.com", "Mira", &t(3));
    let bob = user("user_01BOB", "bob@example.com", "Bob", &t(2));
    let (auth, reg) = ("authentication_action_response", "user_registration_action_response");
    let verdicts = vec![
        act(server, tenant, authentication_action("act_1", mia), auth).await,
        act(server, tenant, authentication_action("act_2", bob), auth).await,
        act(server, tenant, registration_action("act_3", "new@gmail.com", "Gil"), reg).await,
        act(server, tenant, registration_action("act_4", "new@example.com", "Ned"), reg).await,
    ];

    let mut answers = Vec::new();
    for (path, token) in [
        ("my-todo-lists", Some(authkit.token(CLIENT, "user_01MIA"))),
        ("my-todo-lists", Some(authkit.token(CLIENT, "user_01BOB"))),
        ("my-todo-lists", None),
        ("who-knows", None),
    ] {
        let (status, mut body, _) = server
            .authorized("POST", &format!("/t/{tenant}/query/{path}"), token.map(|t| format!("Bearer {t}")), None)
            .await;
        if let Some(lists) = body.get_mut("lists").and_then(Value::as_array_mut) {
            for list in lists.iter_mut() {
                assert!(list["id"].is_string(), "{tenant}: every list has its id: {list}");
                *list = without_id(list.take());
            }
        }
        answers.push((status, body));
    }

    let bodies = |docs: Vec<(String, Value)>| sorted(docs.into_iter().map(|(_, b)| b).collect());
    Outcome {
        users: bodies(tenant_documents(&store, tenant, "users").await),
        todo_lists: bodies(tenant_documents(&store, tenant, "todoLists").await),
        verdicts,
        answers,
    }
}

async fn every_language_s_reference_handler_gives_the_same_results(db: TestDb) {
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let path = db.dir.path().join("authkit.toml");
    std::fs::write(&path, "[worker]\npoll_interval_ms = 50\n").unwrap();
    let options = ServerOptions::default()
        .env("WORKOS_API_BASE_URL", &authkit.base_url())
        .env("AUTHKIT_ADMIN_TOKEN", ROOT)
        .arg("--config")
        .arg(path.to_str().unwrap());
    let server = TestServer::start_with(&db, options).await;

    let languages = [("rust", rust_guest("user_data")), ("js", js_guest()), ("python", python_guest())];
    let mut outcomes = Vec::new();
    for (tenant, component) in &languages {
        let new = json!({
            "slug": tenant, "webhook_secret": format!("whsec_{tenant}"), "action_secret": format!("sk_{tenant}"),
            "client_id": CLIENT,
        });
        let reply = server.admin("POST", "/admin/tenants", Some(ROOT), Some(new.to_string().into_bytes())).await;
        assert_eq!(reply.status, 201, "{reply:?}");
        let bytes = std::fs::read(component).unwrap();
        let path = format!("/t/{tenant}/admin/modules?activate=true");
        let reply = server.admin("POST", &path, Some(ROOT), Some(bytes)).await;
        assert_eq!(reply.status, 201, "{tenant}'s component: {reply:?}");
        assert_eq!(reply.body["exports"], json!(["events", "actions", "queries", "schema"]), "{tenant}");
        outcomes.push((tenant, scenario(&server, &db, &authkit, tenant).await));
    }

    // What the reference handler must do, in any language.
    let (_, rust) = &outcomes[0];
    assert_eq!(
        rust.users,
        sorted(vec![
            json!({ "authId": "user_01MIA", "email": "mira@example.com", "name": "Mira Tester" }),
            json!({ "authId": "user_01BOB", "email": "bob@example.com", "name": "Bob Tester", "banned": true }),
        ]),
        "Eve was deleted; Zed was never the app's"
    );
    assert_eq!(
        rust.todo_lists,
        sorted(vec![
            json!({ "name": "Mia's Todo List", "userId": "user_01MIA" }),
            json!({ "name": "Bob's Todo List", "userId": "user_01BOB" }),
            json!({ "name": "Eve's Todo List", "userId": "user_01EVE" }),
        ])
    );
    assert_eq!(
        rust.verdicts,
        vec![
            json!({ "verdict": "Allow", "error_message": null }),
            json!({ "verdict": "Deny", "error_message": "This account has been suspended." }),
            json!({ "verdict": "Deny", "error_message": "Gmail accounts are not allowed" }),
            json!({ "verdict": "Allow", "error_message": null }),
        ]
    );
    let mia_lists = json!({ "lists": [{ "name": "Mia's Todo List", "userId": "user_01MIA" }] });
    assert_eq!(rust.answers[0], (200, mia_lists));
    assert_eq!(rust.answers[1].0, 200);
    assert_eq!(rust.answers[2].1["error"]["message"], "sign in to see your todo lists");
    assert_eq!(rust.answers[3].0, 400);

    for (tenant, outcome) in &outcomes[1..] {
        assert_eq!(outcome, rust, "{tenant} differs from rust");
    }
}

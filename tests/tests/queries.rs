//! `POST /query/{name}` over real HTTP with real components: the example's
//! `my-todo-lists` for a signed-in caller (tokens from the emulator's JWKS),
//! and the hostile fixture's misbehaving queries contained: read-only
//! database, deadline, traps, bad answers, the per-tenant cap.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use authkit_host::store::documents::Indexes;
use authkit_tests::authkit::{AuthKit, assert_refused};
use authkit_tests::documents::{documents, with_documents};
use authkit_tests::guests::rust_guest;
use authkit_tests::workos::user;
use authkit_tests::{ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(my_todo_lists_answers_the_signed_in_caller_only, a_query_cannot_write_and_its_failures_are_contained,);

const CLIENT: &str = "client_01QUERIESTEST";
const ROOT: &str = "root-token-for-query-tests";

fn options(db: &TestDb, authkit: &AuthKit, guest: &str, queries: &str) -> ServerOptions {
    let config = format!("[worker]\npoll_interval_ms = 50\n\n[queries]\n{queries}\n");
    authkit.host_options(db, CLIENT, ROOT, &config).arg("--handler").arg(rust_guest(guest).to_str().unwrap())
}

/// `POST path` with `token` (if any) and `body`.
async fn query(server: &TestServer, path: &str, token: Option<&str>, body: &str) -> (u16, Value, Option<String>) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    server.authorized("POST", path, authorization, Some(body.as_bytes().to_vec())).await
}

fn code(reply: &(u16, Value, Option<String>)) -> (u16, &str) {
    (reply.0, reply.1["error"]["code"].as_str().unwrap_or_default())
}

async fn sync_user(server: &TestServer, db: &TestDb, id: &str, first_name: &str) {
    let at = "2025-01-01T00:00:01.000Z";
    server.send("user.created", user(id, &format!("{id}@example.com"), first_name, at), at).await;
    let store = db.store().await;
    eventually("the user's todo list to be made", Duration::from_secs(20), || async {
        let lists = documents(&store, "todoLists").await;
        lists.iter().any(|(_, l)| l["userId"] == id).then_some(())
    })
    .await;
}

async fn my_todo_lists_answers_the_signed_in_caller_only(db: TestDb) {
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let server = TestServer::start_with(&db, options(&db, &authkit, "user_data", "")).await;
    sync_user(&server, &db, "user_01MIA", "Mia").await;
    sync_user(&server, &db, "user_01BOB", "Bob").await;
    // A second list of Mia's, written as the app would have.
    let store = db.store().await;
    let indexes = Indexes::new([("todoLists".to_string(), "userId".to_string())]).unwrap();
    with_documents(&store, indexes, |docs| {
        docs.insert("todoLists", &json!({ "name": "Groceries", "userId": "user_01MIA" }).to_string()).unwrap()
    })
    .await;

    let mia = authkit.token(CLIENT, "user_01MIA");
    let (status, body, _) = query(&server, "/query/my-todo-lists", Some(&mia), "").await;
    assert_eq!(status, 200, "{body}");
    let names: Vec<&str> = body["lists"].as_array().unwrap().iter().map(|l| l["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["Mia's Todo List", "Groceries"], "Mia's lists only, oldest first: {body}");
    assert!(body["lists"].as_array().unwrap().iter().all(|l| l["userId"] == "user_01MIA" && l["id"].is_string()));
    let bob = authkit.token(CLIENT, "user_01BOB");
    let (status, body, _) = query(&server, "/query/my-todo-lists", Some(&bob), "{}").await;
    assert_eq!((status, body["lists"].as_array().map(Vec::len)), (200, Some(1)), "{body}");

    // No token: the guest decides, and this query needs a caller.
    let reply = query(&server, "/query/my-todo-lists", None, "").await;
    assert_eq!(code(&reply), (400, "query_error"), "{:?}", reply.1);
    assert_eq!(reply.1["error"]["message"], "sign in to see your todo lists");
    // A token that does not verify never reaches the guest.
    let mut forged = authkit.claims(CLIENT, "user_01MIA");
    forged["exp"] = json!(0);
    let reply = query(&server, "/query/my-todo-lists", Some(&authkit.token_with(CLIENT, forged)), "").await;
    assert_refused(&reply, "token_expired", "an expired token");
    // One character in the middle of the signature: the last one can carry only
    // padding bits, and changing it may leave the signature's bytes as they were.
    let at = mia.rfind('.').unwrap() + 20;
    let other = if &mia[at..=at] == "A" { "B" } else { "A" };
    let tampered = format!("{}{other}{}", &mia[..at], &mia[at + 1..]);
    assert_eq!(query(&server, "/query/my-todo-lists", Some(&tampered), "").await.0, 401);
    // Nor does a valid token of a user not synced yet.
    let stranger = authkit.token(CLIENT, "user_01NOTYET");
    assert_eq!(code(&query(&server, "/query/my-todo-lists", Some(&stranger), "").await), (404, "user_not_synced"));

    let reply = query(&server, "/query/nope", Some(&mia), "").await;
    assert_eq!(code(&reply), (400, "query_error"));
    assert!(reply.1["error"]["message"].as_str().unwrap().contains("\"nope\""), "{:?}", reply.1);
    assert_eq!(code(&query(&server, "/query/my-todo-lists", Some(&mia), "{not json").await), (400, "invalid_json"));
    // Over queries.max_body_bytes (64 KiB) by its declared length: refused before
    // anything is read (so no body is sent, and the connection closes cleanly).
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = "POST /query/my-todo-lists HTTP/1.1\r\nHost: x\r\nContent-Length: 70000\r\nConnection: close\r\n\r\n";
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413") && response.contains("payload_too_large"), "{response}");
    let (status, _, _) = server.authorized("GET", "/query/my-todo-lists", Some(format!("Bearer {mia}")), None).await;
    assert_eq!(status, 405);

    // A tenant without a handler answers no queries; one with its own handler
    // sees only its own users.
    for slug in ["initech", "globex"] {
        let new = json!({ "slug": slug, "webhook_secret": format!("whsec_{slug}"), "client_id": CLIENT });
        let reply = server.admin("POST", "/admin/tenants", Some(ROOT), Some(new.to_string().into_bytes())).await;
        assert_eq!(reply.status, 201, "{reply:?}");
    }
    assert_eq!(code(&query(&server, "/t/initech/query/my-todo-lists", Some(&mia), "").await), (404, "no_queries"));
    let example = std::fs::read(rust_guest("user_data")).unwrap();
    let reply = server.admin("POST", "/t/globex/admin/modules?activate=true", Some(ROOT), Some(example)).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    let reply = query(&server, "/t/globex/query/my-todo-lists", Some(&mia), "").await;
    assert_eq!(code(&reply), (404, "user_not_synced"), "default's user is not globex's: {:?}", reply.1);
}

async fn a_query_cannot_write_and_its_failures_are_contained(db: TestDb) {
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let config = "deadline_ms = 1000\nmax_concurrent = 1";
    let server = TestServer::start_with(&db, options(&db, &authkit, "hostile", config)).await;
    let at = "2025-01-01T00:00:01.000Z";
    server.send("user.created", user("user_01MIA", "mia@example.com", "Mia", at), at).await;
    let store = db.store().await;
    eventually("the user to be synced", Duration::from_secs(20), || async {
        store.get_user("default", "user_01MIA").await.unwrap().map(drop)
    })
    .await;
    let seen_before = documents(&store, "seen").await.len();
    let mia = authkit.token(CLIENT, "user_01MIA");

    // What the guest receives: the arguments and the verified caller.
    let (status, body, _) = query(&server, "/query/echo", Some(&mia), r#"{"page": 2}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["args"], json!({ "page": 2 }));
    assert_eq!(body["caller"]["user"], "user_01MIA");
    assert_eq!(body["caller"]["email"], "mia@example.com");
    assert_eq!(body["caller"]["session"], "session_01HQSXZGF8FHF7A9ZZFCW4387R");
    assert_eq!(body["caller"]["organization"], "org_01HQSXZGF8FHF7A9ZZFCW4387A");
    assert_eq!(body["caller"]["role"], "member");
    assert_eq!(body["caller"]["permissions"], json!(["posts:read", "posts:write"]));
    let (status, body, _) = query(&server, "/query/echo", None, "").await;
    assert_eq!((status, &body["args"], &body["caller"]), (200, &Value::Null, &Value::Null), "{body}");

    // The database is read-only: the write is a typed error, and nothing is kept.
    let reply = query(&server, "/query/write", Some(&mia), "").await;
    assert_eq!(code(&reply), (400, "query_error"));
    assert!(reply.1["error"]["message"].as_str().unwrap().contains("ReadOnly"), "{:?}", reply.1);
    assert_eq!(documents(&store, "seen").await.len(), seen_before, "the query wrote nothing");

    let reply = query(&server, "/query/fail", None, "").await;
    assert_eq!((code(&reply), reply.1["error"]["message"].as_str()), ((400, "query_error"), Some("told to fail")));

    // Traps, memory, bad answers: an opaque 500, the reason in the host's log.
    for name in ["panic", "bomb", "not-json", "big"] {
        let reply = query(&server, &format!("/query/{name}"), None, "").await;
        assert_eq!(code(&reply), (500, "query_failed"), "{name}: {:?}", reply.1);
        let message = reply.1["error"]["message"].as_str().unwrap();
        assert!(!message.contains("panic") && !message.contains("memory"), "opaque: {message}");
    }
    eventually("the causes to be logged", Duration::from_secs(5), || async {
        let log = server.log();
        let logged = ["a query failed", "told to panic", "is not JSON", "queries.max_result_bytes"];
        logged.iter().all(|l| log.contains(l)).then_some(())
    })
    .await;

    // A query that loops is stopped at its deadline.
    let started = Instant::now();
    let reply = query(&server, "/query/loop", None, "").await;
    assert_eq!(code(&reply), (504, "query_timeout"), "{:?}", reply.1);
    assert!(started.elapsed() < Duration::from_secs(5), "stopped at the 1 s deadline: {:?}", started.elapsed());

    // One query at a time for this tenant (max_concurrent = 1): the second waits for nothing.
    // A looping query holds the tenant's one permit for its 1 s (tried again,
    // after a pause, while it finds the permit taken by one of the echoes
    // below: its tries must not all fall within one slow echo).
    let looping = {
        let url = server.url("/query/loop");
        tokio::spawn(async move {
            let give_up = Instant::now() + Duration::from_secs(10);
            loop {
                let status = reqwest::Client::new().post(&url).send().await.unwrap().status().as_u16();
                if status != 503 || Instant::now() > give_up {
                    return status;
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let busy = eventually("a second query to find the tenant busy", Duration::from_secs(5), || async {
        let reply = query(&server, "/query/echo", None, "").await;
        (reply.0 == 503).then_some(reply)
    })
    .await;
    assert_eq!(code(&busy), (503, "queries_busy"));
    assert_eq!(looping.await.unwrap(), 504);

    let (status, body, _) = query(&server, "/query/echo", Some(&mia), "[1]").await;
    assert_eq!((status, &body["args"]), (200, &json!([1])), "the host still serves: {body}");
}

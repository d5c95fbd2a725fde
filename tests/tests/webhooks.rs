//! `POST /workos/webhook` over real HTTP: verification, every rejection with its
//! status and stable code, body limits, redelivery. Both backends.

use std::time::Duration;

use authkit_host::store::inbox::EventFilter;
use authkit_tests::server::TEST_SECRET;
use authkit_tests::workos::{Emulator, now_ms, user};
use authkit_tests::{ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

on_both_backends!(
    the_protocol_page_vector_is_accepted_over_http,
    every_rejection_has_its_status_and_code_and_writes_nothing,
    a_body_over_one_mebibyte_is_rejected_with_413_even_when_chunked,
    a_client_still_sending_a_refused_body_reads_the_413,
    without_a_secret_the_route_answers_503_naming_the_variable,
    a_redelivered_event_is_acknowledged_and_changes_nothing,
    concurrent_deliveries_are_all_stored_once,
);

const VECTOR_BODY: &str = r#"{"id":"evt_01","event":"user.created","data":{},"created_at":"2025-01-01T00:00:00.000Z"}"#;
const VECTOR_HEADER: &str = "t=1735689600000, v1=aa9df12b8a4c4977490bf42eae729a3bd737970483f6b0e9b0091fe2e0fc9dd3";

async fn inbox_len(db: &TestDb) -> usize {
    db.store().await.list_events(&EventFilter { limit: 10_000, ..Default::default() }).await.unwrap().len()
}

async fn the_protocol_page_vector_is_accepted_over_http(db: TestDb) {
    // The vector was signed at 2025-01-01; widen the tolerance to cover it. The
    // body has no user id, so it is refused as a user event *after* the signature
    // verified (400, not 401), which is what this checks; a dsync-typed copy of the
    // same scheme is stored.
    let wide = (now_ms() / 1000).to_string();
    let server = TestServer::start_with(
        &db,
        ServerOptions { secret: Some("whsec_test".into()), ..Default::default() }
            .env("AUTHKIT_WEBHOOK_TOLERANCE_SECS", &wide),
    )
    .await;
    let reply = server.post_webhook_raw(VECTOR_BODY.into(), &[("WorkOS-Signature", VECTOR_HEADER.into())]).await;
    assert_eq!((reply.status, reply.code()), (400, "invalid_event_data"), "{reply:?}");
    let no_space = VECTOR_HEADER.replace(", ", ",");
    let reply = server.post_webhook_raw(VECTOR_BODY.into(), &[("workos-signature", no_space)]).await;
    assert_eq!(reply.status, 400, "{reply:?}");
    // One changed byte in the signed body and the same header is a forgery.
    let forged = VECTOR_BODY.replace("evt_01", "evt_02");
    let reply = server.post_webhook_raw(forged.into(), &[("WorkOS-Signature", VECTOR_HEADER.into())]).await;
    assert_eq!((reply.status, reply.code()), (401, "signature_mismatch"));

    // The same scheme on an event type the host only records: accepted and stored.
    let body = r#"{"id":"evt_vector","event":"dsync.user.created","data":{},"created_at":"2025-01-01T00:00:00.000Z"}"#;
    let header = Emulator::new("whsec_test").signature(1_735_689_600_000, body.as_bytes());
    let reply = server.post_webhook_raw(body.into(), &[("WorkOS-Signature", header)]).await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, json!({"received": true, "duplicate": false}));
    assert_eq!(inbox_len(&db).await, 1);
}

async fn every_rejection_has_its_status_and_code_and_writes_nothing(db: TestDb) {
    let server = TestServer::start(&db).await;
    let emu = Emulator::new(TEST_SECRET);
    let (_, good) = emu.event(
        "user.created",
        user("user_1", "a@example.com", "Ann", "2025-01-01T00:00:00.000Z"),
        "2025-01-01T00:00:00.000Z",
    );
    let now = now_ms();
    let sig = |t: i64, body: &[u8]| emu.signature(t, body);
    let forger = Emulator::new("whsec_not_the_secret");
    let mut tampered = good.clone();
    let at = tampered.iter().position(|&b| b == b'A').unwrap();
    tampered[at] = b'B';
    let pretty = serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(&good).unwrap()).unwrap();

    // (case, body, headers, expected status, expected code)
    type Case<'a> = (&'a str, Vec<u8>, Vec<(&'a str, String)>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("no header", good.clone(), vec![], 401, "signature_missing"),
        ("garbage header", good.clone(), vec![("WorkOS-Signature", "garbage".into())], 401, "signature_malformed"),
        ("no v1", good.clone(), vec![("WorkOS-Signature", format!("t={now}"))], 401, "signature_malformed"),
        (
            "no t",
            good.clone(),
            vec![("WorkOS-Signature", format!("v1={}", "a".repeat(64)))],
            401,
            "signature_malformed",
        ),
        (
            "non-numeric t",
            good.clone(),
            vec![("WorkOS-Signature", format!("t=soon, v1={}", "a".repeat(64)))],
            401,
            "signature_malformed",
        ),
        ("short v1", good.clone(), vec![("WorkOS-Signature", format!("t={now}, v1=abcd"))], 401, "signature_malformed"),
        (
            "wrong secret",
            good.clone(),
            vec![("WorkOS-Signature", forger.signature(now, &good))],
            401,
            "signature_mismatch",
        ),
        ("tampered body", tampered, vec![("WorkOS-Signature", sig(now, &good))], 401, "signature_mismatch"),
        ("re-serialised JSON", pretty, vec![("WorkOS-Signature", sig(now, &good))], 401, "signature_mismatch"),
        ("stale", good.clone(), vec![("WorkOS-Signature", sig(now - 181_000, &good))], 401, "signature_expired"),
        ("future", good.clone(), vec![("WorkOS-Signature", sig(now + 181_000, &good))], 401, "signature_from_future"),
        ("seconds not ms", good.clone(), vec![("WorkOS-Signature", sig(now / 1000, &good))], 401, "signature_expired"),
        ("bad JSON", b"{not json".to_vec(), vec![("WorkOS-Signature", sig(now, b"{not json"))], 400, "invalid_json"),
        ("array", b"[1]".to_vec(), vec![("WorkOS-Signature", sig(now, b"[1]"))], 400, "invalid_event"),
    ];
    for (name, body, headers, status, code) in cases {
        let reply = server.post_webhook_raw(body, &headers).await;
        assert_eq!((reply.status, reply.code()), (status, code), "case {name:?}: {reply:?}");
        assert!(reply.body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()), "case {name:?} has no message");
    }
    for (name, body, code) in [
        ("no id", json!({"event": "user.created", "data": {}}), "invalid_event"),
        ("no event", json!({"id": "evt_x", "data": {}}), "invalid_event"),
        ("no data", json!({"id": "evt_x", "event": "session.created"}), "invalid_event"),
        (
            "user without id",
            json!({"id": "evt_x", "event": "user.updated", "data": {"email": "x@y.z"}}),
            "invalid_event_data",
        ),
        (
            "user with a bad time",
            json!({"id": "evt_x", "event": "user.updated", "data": {"id": "u", "updated_at": "later"}}),
            "invalid_event_data",
        ),
    ] {
        let body = serde_json::to_vec(&body).unwrap();
        let reply = server.deliver(&body).await;
        assert_eq!((reply.status, reply.code()), (400, code), "case {name:?}: {reply:?}");
    }
    // A field given twice or of the wrong type: the message says which and where.
    for (body, says) in [
        (br#"{"id":"evt_a","id":"evt_b","event":"user.created","data":{}}"#.as_slice(), "duplicate field `id`"),
        (br#"{"id":7,"event":"user.created","data":{}}"#.as_slice(), "invalid type: integer `7`, expected"),
    ] {
        let reply = server.deliver(body).await;
        assert_eq!((reply.status, reply.code()), (400, "invalid_event"), "{reply:?}");
        let message = reply.body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(says) && message.contains("column"), "{message:?} should say {says:?} and where");
    }
    let wrong_method = server.get("/workos/webhook").await;
    assert_eq!((wrong_method.status, wrong_method.code()), (405, "method_not_allowed"));
    let unknown = server.get("/workos/elsewhere").await;
    assert_eq!((unknown.status, unknown.code()), (404, "not_found"));

    // Not parseable as HTTP, around a correctly signed event: the HTTP layer
    // answers with a bare status and closes, and no route runs.
    let signature = sig(now_ms(), &good);
    let signed = |extra: &str| {
        let head = format!(
            "POST /workos/webhook HTTP/1.1\r\nHost: x\r\nWorkOS-Signature: {signature}\r\n{extra}Content-Length: {}\r\n\r\n",
            good.len()
        );
        [head.as_bytes(), &good].concat()
    };
    let many: String = (0..150).map(|i| format!("X-Filler-{i}: a\r\n")).collect();
    for (raw, status) in [
        (signed("A header without a colon\r\n"), "HTTP/1.1 400 "),
        (signed(&many), "HTTP/1.1 431 "),
        (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), "HTTP/1.1 400 "),
    ] {
        let response = raw_exchange(&server, &raw).await;
        assert!(response.starts_with(status), "{status}: {response:?}");
        assert!(response.to_ascii_lowercase().contains("content-length: 0"), "{response:?}");
    }

    assert_eq!(inbox_len(&db).await, 0, "a rejected request wrote to the inbox");
    // Still serving: a good delivery goes through.
    assert_eq!(server.deliver(&good).await.status, 200);
    assert_eq!(inbox_len(&db).await, 1);
}

/// Sends `raw` bytes on a new connection and reads until the server closes it.
async fn raw_exchange(server: &TestServer, raw: &[u8]) -> String {
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    stream.write_all(raw).await.unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .expect("the server closes the connection")
        .unwrap();
    String::from_utf8_lossy(&response).into_owned()
}

async fn a_body_over_one_mebibyte_is_rejected_with_413_even_when_chunked(db: TestDb) {
    let server = TestServer::start(&db).await;
    let padding = "x".repeat(1024 * 1024);
    let big =
        serde_json::to_vec(&json!({"id": "evt_big", "event": "session.created", "data": {"pad": padding}})).unwrap();
    let reply = server.deliver(&big).await;
    assert_eq!((reply.status, reply.code()), (413, "payload_too_large"));

    // Without a Content-Length the limit still holds while reading.
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let sig = server.emulator.signature(now_ms(), &big);
    let head = format!(
        "POST /workos/webhook HTTP/1.1\r\nHost: x\r\nWorkOS-Signature: {sig}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    for chunk in big.chunks(64 * 1024) {
        if stream.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).await.is_err() {
            break; // the server may close as soon as it has seen too much
        }
        let _ = stream.write_all(chunk).await;
        let _ = stream.write_all(b"\r\n").await;
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut response = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response)).await;
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 413"), "{response}");
    assert!(response.contains("payload_too_large"), "{response}");

    // Just under the limit is fine.
    let fits = serde_json::to_vec(
        &json!({"id": "evt_fits", "event": "session.created", "data": {"pad": "x".repeat(1000 * 1000)}}),
    )
    .unwrap();
    assert_eq!(server.deliver(&fits).await.status, 200);
    assert_eq!(inbox_len(&db).await, 1);
}

/// The server refuses a body by its declared length at once, but reads the
/// rest before closing, so a client that goes on sending it is not reset and
/// reads the answer.
async fn a_client_still_sending_a_refused_body_reads_the_413(db: TestDb) {
    let server = TestServer::start(&db).await;
    let size = 4 * 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let (mut read, mut write) = stream.into_split();
    let head = format!(
        "POST /workos/webhook HTTP/1.1\r\nHost: x\r\nWorkOS-Signature: t=1, v1=00\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
    );
    write.write_all(head.as_bytes()).await.unwrap();
    let reader = tokio::spawn(async move {
        let mut response = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(20), read.read_to_end(&mut response)).await;
        (read.map(|r| r.map_err(|e| e.to_string())), response)
    });
    let chunk = vec![b'x'; 64 * 1024];
    for _ in 0..size / chunk.len() {
        write.write_all(&chunk).await.expect("the server goes on reading the refused body");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (read, response) = reader.await.unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(matches!(read, Ok(Ok(_))), "the connection ended with {read:?} after {response:?}");
    assert!(response.starts_with("HTTP/1.1 413") && response.contains("payload_too_large"), "{response}");
    assert_eq!(inbox_len(&db).await, 0);
}

async fn without_a_secret_the_route_answers_503_naming_the_variable(db: TestDb) {
    let server = TestServer::start_with(&db, ServerOptions { secret: None, ..Default::default() }).await;
    let (_, body) = server.emulator.event(
        "user.created",
        user("user_1", "a@b.c", "A", "2025-01-01T00:00:00.000Z"),
        "2025-01-01T00:00:00.000Z",
    );
    let reply = server.deliver(&body).await;
    assert_eq!((reply.status, reply.code()), (503, "webhook_secret_not_configured"));
    assert!(reply.body["error"]["message"].as_str().unwrap().contains("WORKOS_WEBHOOK_SECRET"));
    assert!(server.log().contains("WORKOS_WEBHOOK_SECRET is not set"), "no start-up warning:\n{}", server.log());
    assert_eq!(server.get("/healthz").await.status, 200);
    assert_eq!(inbox_len(&db).await, 0);
}

async fn a_redelivered_event_is_acknowledged_and_changes_nothing(db: TestDb) {
    let server = TestServer::start(&db).await;
    let (id, body) = server.emulator.event(
        "user.created",
        user("user_r", "r@example.com", "Rae", "2025-01-01T00:00:00.000Z"),
        "2025-01-01T00:00:00.000Z",
    );
    let first = server.deliver(&body).await;
    assert_eq!((first.status, first.body["duplicate"].clone()), (200, json!(false)));
    let store = db.store().await;
    let done = eventually("the event to be applied", Duration::from_secs(20), || async {
        store.get_event("default", &id).await.unwrap().filter(|e| e.status == "done")
    })
    .await;
    // Redelivered with a fresh signature, as WorkOS retries do.
    for _ in 0..3 {
        let again = server.deliver(&body).await;
        assert_eq!((again.status, again.body["duplicate"].clone()), (200, json!(true)));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = store.get_event("default", &id).await.unwrap().unwrap();
    assert_eq!((after.seq, after.attempts, after.processed_at), (done.seq, 1, done.processed_at));
    assert_eq!(inbox_len(&db).await, 1);
    let user = store.get_user("default", "user_r").await.unwrap().unwrap();
    assert_eq!(user.last_event_id, id);
}

async fn concurrent_deliveries_are_all_stored_once(db: TestDb) {
    let server = std::sync::Arc::new(TestServer::start(&db).await);
    let mut bodies = Vec::new();
    for i in 0..100 {
        let data = user(&format!("user_c{i}"), &format!("c{i}@example.com"), "C", "2025-01-01T00:00:00.000Z");
        bodies.push(server.emulator.event("user.created", data, "2025-01-01T00:00:00.000Z").1);
    }
    // Every event twice, all at once: one copy is new, the other a duplicate.
    let mut tasks = Vec::new();
    for body in bodies.iter().chain(&bodies) {
        let (server, body) = (server.clone(), body.clone());
        tasks.push(tokio::spawn(async move { server.deliver(&body).await }));
    }
    let mut new = 0;
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{reply:?}");
        if reply.body["duplicate"] == json!(false) {
            new += 1;
        }
    }
    assert_eq!(new, 100);
    assert_eq!(inbox_len(&db).await, 100);
    let store = db.store().await;
    eventually("all users applied", Duration::from_secs(30), || async {
        (store.count_unfinished().await.unwrap() == 0).then_some(())
    })
    .await;
    assert_eq!(store.count_records(authkit_host::workos::event::RecordKind::User, "default").await.unwrap(), 100);
}

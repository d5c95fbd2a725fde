//! `GET /me` over real HTTP: AuthKit access tokens minted by the emulator
//! (fresh RSA keys, a JWKS served on loopback) are checked by the host, and
//! every kind of bad token is refused with its own code; key rotation, the key
//! set being unreachable, and tenants with their own client ids.

use std::time::Duration;

use authkit_tests::authkit::{AuthKit, SigningKey, assert_refused, b64url};
use authkit_tests::workos::{hmac_sha256_hex, now_ms, user};
use authkit_tests::{ServerOptions, TestDb, TestServer, eventually, on_both_backends};
use serde_json::{Value, json};

on_both_backends!(
    me_is_the_synced_user_with_the_token_s_session,
    every_bad_token_is_refused_with_its_own_code,
    keys_rotate_and_cached_keys_outlive_an_unreachable_key_set,
);

const CLIENT: &str = "client_01MEINTEGRATIONTEST";
const OTHER_CLIENT: &str = "client_01OTHERTENANT";
const ROOT: &str = "root-token-for-me-tests";

fn options(db: &TestDb, authkit: &AuthKit, auth: &str) -> ServerOptions {
    authkit.host_options(db, CLIENT, ROOT, &format!("[worker]\npoll_interval_ms = 50\n\n[auth]\n{auth}\n"))
}

async fn get(server: &TestServer, path: &str, authorization: Option<String>) -> (u16, Value, Option<String>) {
    server.authorized("GET", path, authorization, None).await
}

async fn me(server: &TestServer, token: &str) -> (u16, Value, Option<String>) {
    get(server, "/me", Some(format!("Bearer {token}"))).await
}

async fn sync_user(server: &TestServer, db: &TestDb, id: &str) {
    let at = "2025-01-01T00:00:01.000Z";
    server.send("user.created", user(id, &format!("{id}@example.com"), "Mia", at), at).await;
    let store = db.store().await;
    eventually("the user to be synced", Duration::from_secs(20), || async {
        store.get_user("default", id).await.unwrap().map(drop)
    })
    .await;
}

async fn me_is_the_synced_user_with_the_token_s_session(db: TestDb) {
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let server = TestServer::start_with(&db, options(&db, &authkit, "")).await;
    sync_user(&server, &db, "user_01MIA").await;

    let (status, body, _) = me(&server, &authkit.token(CLIENT, "user_01MIA")).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], "user_01MIA");
    assert_eq!(body["user"]["email"], "user_01MIA@example.com");
    assert_eq!(body["user"]["first_name"], "Mia");
    assert_eq!(body["user"]["metadata"], json!({"plan": "pro"}));
    assert_eq!(body["sid"], "session_01HQSXZGF8FHF7A9ZZFCW4387R");
    assert_eq!(body["org_id"], "org_01HQSXZGF8FHF7A9ZZFCW4387A");
    assert_eq!(body["role"], "member");
    assert_eq!(body["permissions"], json!(["posts:read", "posts:write"]));

    // The other issuer form WorkOS uses is accepted too.
    let mut claims = authkit.claims(CLIENT, "user_01MIA");
    claims["iss"] = json!(format!("{}/", authkit.base_url()));
    assert_eq!(me(&server, &authkit.token_with(CLIENT, claims)).await.0, 200);

    // A valid token for a user this host has not synced yet.
    let (status, body, _) = me(&server, &authkit.token(CLIENT, "user_01NOTYET")).await;
    assert_eq!((status, body["error"]["code"].as_str()), (404, Some("user_not_synced")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("user_01NOTYET"));

    // No token at all: 401 and a challenge without an error (RFC 6750).
    let (status, body, challenge) = get(&server, "/me", None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (401, Some("token_missing")), "{body}");
    assert_eq!(challenge.as_deref(), Some("Bearer realm=\"authkit-host\""));

    // A tenant with its own client id: its tokens, its users.
    let new = json!({ "slug": "globex", "webhook_secret": "whsec_globex", "client_id": OTHER_CLIENT });
    let reply = server.admin("POST", "/admin/tenants", Some(ROOT), Some(new.to_string().into_bytes())).await;
    assert_eq!(reply.status, 201, "{reply:?}");
    authkit.add_client(OTHER_CLIENT);
    let (status, body, _) =
        get(&server, "/t/globex/me", Some(format!("Bearer {}", authkit.token(OTHER_CLIENT, "user_01MIA")))).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (404, Some("user_not_synced")),
        "default's user is not globex's: {body}"
    );
    let reply = get(&server, "/t/globex/me", Some(format!("Bearer {}", authkit.token(CLIENT, "user_01MIA")))).await;
    assert_refused(&reply, "token_key_unknown", "a default-tenant token on globex");

    // A tenant without a client id cannot check tokens, and says what to set.
    let new = json!({ "slug": "initech", "webhook_secret": "whsec_initech" });
    assert_eq!(
        server.admin("POST", "/admin/tenants", Some(ROOT), Some(new.to_string().into_bytes())).await.status,
        201
    );
    let (status, body, _) =
        get(&server, "/t/initech/me", Some(format!("Bearer {}", authkit.token(CLIENT, "user_01MIA")))).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("client_id_not_configured")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--client-id"), "{body}");

    let (status, _, _) =
        get(&server, "/t/nobody/me", Some(format!("Bearer {}", authkit.token(CLIENT, "user_01MIA")))).await;
    assert_eq!(status, 404);
}

async fn every_bad_token_is_refused_with_its_own_code(db: TestDb) {
    let authkit = AuthKit::start().await;
    let key = authkit.add_client(CLIENT);
    authkit.add_client(OTHER_CLIENT);
    let server = TestServer::start_with(&db, options(&db, &authkit, "")).await;
    sync_user(&server, &db, "user_01MIA").await;
    let now = now_ms() / 1000;
    let claims = authkit.claims(CLIENT, "user_01MIA");
    let header = json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid });
    let with = |change: &dyn Fn(&mut Value)| {
        let mut c = claims.clone();
        change(&mut c);
        authkit.token_with(CLIENT, c)
    };
    assert_eq!(me(&server, &authkit.token(CLIENT, "user_01MIA")).await.0, 200, "the untouched token is fine");

    // Past `exp` by more than the 30 s leeway; within it, still accepted.
    let expired = with(&|c| c["exp"] = json!(now - 120));
    assert_refused(&me(&server, &expired).await, "token_expired", "expired");
    assert_eq!(me(&server, &with(&|c| c["exp"] = json!(now - 5))).await.0, 200, "within the leeway");
    let early = with(&|c| c["nbf"] = json!(now + 600));
    assert_refused(&me(&server, &early).await, "token_not_yet_valid", "nbf in the future");
    let issued_later = with(&|c| c["iat"] = json!(now + 600));
    assert_refused(&me(&server, &issued_later).await, "token_not_yet_valid", "iat in the future");

    // Other algorithms: `none`, and HS256 keyed with the public key (the classic confusion).
    let body = b64url(claims.to_string().as_bytes());
    let none = format!("{}.{body}.", b64url(json!({ "alg": "none", "kid": key.kid }).to_string().as_bytes()));
    assert_refused(&me(&server, &none).await, "token_algorithm", "alg none");
    let hs_input = format!("{}.{body}", b64url(json!({ "alg": "HS256", "kid": key.kid }).to_string().as_bytes()));
    let public = key.jwk().to_string();
    let mac: Vec<u8> = (0..32)
        .map(|i| {
            u8::from_str_radix(&hmac_sha256_hex(public.as_bytes(), hs_input.as_bytes())[i * 2..i * 2 + 2], 16).unwrap()
        })
        .collect();
    let hs256 = format!("{hs_input}.{}", b64url(&mac));
    assert_refused(&me(&server, &hs256).await, "token_algorithm", "HS256 with the public key");

    // A key the client's key set does not have.
    let stranger = SigningKey::new().sign(&json!({ "alg": "RS256", "kid": "sso_oidc_key_pair_unknown" }), &claims);
    assert_refused(&me(&server, &stranger).await, "token_key_unknown", "unknown kid");

    // A payload changed after signing (another user), the signature kept.
    let token = authkit.token(CLIENT, "user_01MIA");
    let parts: Vec<&str> = token.split('.').collect();
    let mut forged = claims.clone();
    forged["sub"] = json!("user_01ADMIN");
    let tampered = format!("{}.{}.{}", parts[0], b64url(forged.to_string().as_bytes()), parts[2]);
    assert_refused(&me(&server, &tampered).await, "token_signature", "tampered payload");
    // The same key id, a different key: the signature does not verify either.
    let impostor = key.impostor().sign(&header, &claims);
    assert_refused(&me(&server, &impostor).await, "token_signature", "right kid, wrong key");

    let wrong_issuer = with(&|c| c["iss"] = json!("https://evil.example/user_management/client_01MEINTEGRATIONTEST"));
    assert_refused(&me(&server, &wrong_issuer).await, "token_issuer", "wrong issuer");
    let no_sub = with(&|c| {
        c.as_object_mut().unwrap().remove("sub");
    });
    assert_refused(&me(&server, &no_sub).await, "token_malformed", "no sub");

    for malformed in ["not-a-jwt", "a.b.c", "a.b", &format!("{token}.x"), &"A".repeat(20_000)] {
        assert_refused(&me(&server, malformed).await, "token_malformed", malformed);
    }
    let reply = get(&server, "/me", Some(format!("Basic {token}"))).await;
    assert_refused(&reply, "token_malformed", "not a bearer token");

    // A genuine token, but of another client id (another tenant's application).
    let foreign = authkit.token(OTHER_CLIENT, "user_01MIA");
    assert_refused(&me(&server, &foreign).await, "token_key_unknown", "another client id's token");

    assert_eq!(me(&server, &authkit.token(CLIENT, "user_01MIA")).await.0, 200, "the server still serves");
}

async fn keys_rotate_and_cached_keys_outlive_an_unreachable_key_set(db: TestDb) {
    let authkit = AuthKit::start().await;
    authkit.add_client(CLIENT);
    let server = TestServer::start_with(&db, options(&db, &authkit, "jwks_min_refetch_ms = 300")).await;
    sync_user(&server, &db, "user_01MIA").await;
    let old = authkit.token(CLIENT, "user_01MIA");
    assert_eq!(me(&server, &old).await.0, 200);
    assert_eq!(authkit.fetches(CLIENT), 1, "the key set was fetched once");
    assert_eq!(me(&server, &old).await.0, 200);
    assert_eq!(authkit.fetches(CLIENT), 1, "and then served from the cache");

    // Rotation: a token signed with the new key makes the host fetch again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    authkit.rotate(CLIENT, false);
    let new = authkit.token(CLIENT, "user_01MIA");
    assert_eq!(me(&server, &new).await.0, 200, "the rotated key is picked up");
    assert_eq!(authkit.fetches(CLIENT), 2);

    // Unknown key ids do not make the host hammer WorkOS: at most one fetch per 300 ms.
    let started = std::time::Instant::now();
    for _ in 0..20 {
        let stranger = SigningKey::new()
            .sign(&json!({ "alg": "RS256", "kid": "sso_oidc_key_pair_nope" }), &authkit.claims(CLIENT, "user_01MIA"));
        assert_refused(&me(&server, &stranger).await, "token_key_unknown", "unknown kid");
    }
    let allowed = 1 + started.elapsed().as_millis() as u64 / 300;
    let fetched = authkit.fetches(CLIENT) - 2;
    assert!(fetched <= allowed, "{fetched} fetches in {:?}", started.elapsed());

    // WorkOS unreachable: cached keys still verify...
    authkit.set_down(true);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(me(&server, &new).await.0, 200, "a cached key works while the key set cannot be fetched");
    // ... and a key that is not cached fails closed, saying why.
    authkit.rotate(CLIENT, true);
    let newest = authkit.token(CLIENT, "user_01MIA");
    let (status, body, _) = me(&server, &newest).await;
    assert_eq!((status, body["error"]["code"].as_str()), (503, Some("jwks_unavailable")), "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("/sso/jwks/client_01MEINTEGRATIONTEST"), "{body}");
    eventually("the cause to be logged", Duration::from_secs(5), || async {
        server.log().contains("could not fetch the client's signing keys").then_some(())
    })
    .await;

    // Back up: the next allowed fetch gets the new key.
    authkit.set_down(false);
    eventually("the newest key to be fetched", Duration::from_secs(5), || async {
        (me(&server, &newest).await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(me(&server, &new).await.0, 200, "the previous key is still published");
}

//! The AuthKit side of the WorkOS emulator: a JWKS endpoint on loopback
//! (`GET /sso/jwks/{client_id}`, the documented shape) with freshly generated
//! RSA keys, and access tokens minted the way AuthKit mints them (RS256,
//! `kid` in the header, the documented claims).
//!
//! The token encoding (base64url, the signing input, the header and claims)
//! is written here, independently of the host's decoder; only the RSA
//! PKCS#1 v1.5 primitive comes from a library.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{Generate, PrivateKey};
use serde_json::{Value, json};
use tokio::net::TcpListener;

use crate::workos::now_ms;
use crate::{ServerOptions, TestDb};

/// RFC 4648 §5 base64url without padding, written out.
pub fn b64url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | u32::from(*b) << (16 - 8 * i));
        let chars = chunk.len() + 1;
        for i in 0..chars {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

/// RSA keys take a while to generate: a few are made once per test process
/// and handed out in turn (each key id is still unique).
fn key_pool() -> &'static Vec<Arc<PrivateKey>> {
    static POOL: OnceLock<Vec<Arc<PrivateKey>>> = OnceLock::new();
    POOL.get_or_init(|| (0..4).map(|_| Arc::new(PrivateKey::generate())).collect())
}

/// A signing key and its id.
#[derive(Clone)]
pub struct SigningKey {
    pub kid: String,
    key: Arc<PrivateKey>,
}

impl SigningKey {
    pub fn new() -> SigningKey {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pool = key_pool();
        SigningKey { kid: format!("sso_oidc_key_pair_{n:04}"), key: pool[n as usize % pool.len()].clone() }
    }

    /// Another RSA key under the same key id: an impostor.
    pub fn impostor(&self) -> SigningKey {
        let key = key_pool().iter().find(|k| !Arc::ptr_eq(k, &self.key)).unwrap().clone();
        SigningKey { kid: self.kid.clone(), key }
    }

    /// This key as a JWKS entry.
    pub fn jwk(&self) -> Value {
        json!({
            "alg": "RS256",
            "kty": "RSA",
            "use": "sig",
            "kid": self.kid,
            "n": b64url(&self.key.n_bytes()),
            "e": b64url(&self.key.e_bytes()),
        })
    }

    /// A compact JWS of `header` and `claims`, signed RS256 with this key.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!("{}.{}", b64url(header.to_string().as_bytes()), b64url(claims.to_string().as_bytes()));
        let signature = self.key.pkcs1v15_sign::<Sha256>(input.as_bytes()).unwrap();
        format!("{input}.{}", b64url(&signature))
    }
}

impl Default for SigningKey {
    fn default() -> Self {
        SigningKey::new()
    }
}

#[derive(Default)]
struct Keys {
    /// Client id → its key set (the newest key signs).
    by_client: HashMap<String, Vec<SigningKey>>,
    /// Client id → key set requests served.
    fetches: HashMap<String, u64>,
    /// Answer 503 to every request.
    down: bool,
}

/// The emulated WorkOS API's AuthKit endpoints, on a port of its own.
pub struct AuthKit {
    pub addr: SocketAddr,
    keys: Arc<Mutex<Keys>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for AuthKit {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn jwks(State(keys): State<Arc<Mutex<Keys>>>, Path(client_id): Path<String>) -> Response {
    let mut keys = keys.lock().unwrap();
    if keys.down {
        return (StatusCode::SERVICE_UNAVAILABLE, "the emulator is down").into_response();
    }
    *keys.fetches.entry(client_id.clone()).or_default() += 1;
    match keys.by_client.get(&client_id) {
        Some(set) => axum::Json(json!({ "keys": set.iter().map(SigningKey::jwk).collect::<Vec<_>>() })).into_response(),
        None => (StatusCode::NOT_FOUND, axum::Json(json!({ "message": "Not Found" }))).into_response(),
    }
}

impl AuthKit {
    pub async fn start() -> AuthKit {
        let keys = Arc::new(Mutex::new(Keys::default()));
        let app = axum::Router::new().route("/sso/jwks/{client_id}", axum::routing::get(jwks)).with_state(keys.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        AuthKit { addr, keys, server }
    }

    /// The API base URL to configure the host with.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Options of a host that checks tokens of `client_id` against this
    /// emulator, with `admin_token` as its root token and `config` (TOML,
    /// written into the test's directory) as its config file.
    pub fn host_options(&self, db: &TestDb, client_id: &str, admin_token: &str, config: &str) -> ServerOptions {
        let path = db.dir.path().join("authkit.toml");
        std::fs::write(&path, config).unwrap();
        ServerOptions::default()
            .env("WORKOS_CLIENT_ID", client_id)
            .env("WORKOS_API_BASE_URL", &self.base_url())
            .env("AUTHKIT_ADMIN_TOKEN", admin_token)
            .arg("--config")
            .arg(path.to_str().unwrap())
    }

    /// The issuer AuthKit puts in a client's tokens.
    pub fn issuer(&self, client_id: &str) -> String {
        format!("{}/user_management/{client_id}", self.base_url())
    }

    /// Gives `client_id` a key set of one fresh key; returns that key.
    pub fn add_client(&self, client_id: &str) -> SigningKey {
        let key = SigningKey::new();
        self.keys.lock().unwrap().by_client.insert(client_id.to_string(), vec![key.clone()]);
        key
    }

    /// Key rotation: a new key signs from now on; the old one stays published
    /// only if `keep_old`.
    pub fn rotate(&self, client_id: &str, keep_old: bool) -> SigningKey {
        let key = SigningKey::new();
        let mut keys = self.keys.lock().unwrap();
        let set = keys.by_client.entry(client_id.to_string()).or_default();
        if !keep_old {
            set.clear();
        }
        set.push(key.clone());
        key
    }

    /// The key that signs `client_id`'s tokens now.
    pub fn current_key(&self, client_id: &str) -> SigningKey {
        self.keys.lock().unwrap().by_client[client_id].last().unwrap().clone()
    }

    pub fn set_down(&self, down: bool) {
        self.keys.lock().unwrap().down = down;
    }

    /// Key set requests served for `client_id` so far.
    pub fn fetches(&self, client_id: &str) -> u64 {
        self.keys.lock().unwrap().fetches.get(client_id).copied().unwrap_or(0)
    }

    /// The claims AuthKit puts in an access token of `user_id`, valid for 5 minutes.
    pub fn claims(&self, client_id: &str, user_id: &str) -> Value {
        let now = now_ms() / 1000;
        json!({
            "iss": self.issuer(client_id),
            "sub": user_id,
            "sid": "session_01HQSXZGF8FHF7A9ZZFCW4387R",
            "jti": format!("01HQSXZXPPFPKMDD32RKTFR6PV{now}"),
            "org_id": "org_01HQSXZGF8FHF7A9ZZFCW4387A",
            "role": "member",
            "roles": ["member"],
            "permissions": ["posts:read", "posts:write"],
            "exp": now + 300,
            "iat": now,
        })
    }

    /// A valid access token of `user_id` for `client_id`, signed with its current key.
    pub fn token(&self, client_id: &str, user_id: &str) -> String {
        self.token_with(client_id, self.claims(client_id, user_id))
    }

    /// A token with these claims, signed with `client_id`'s current key.
    pub fn token_with(&self, client_id: &str, claims: Value) -> String {
        let key = self.current_key(client_id);
        key.sign(&json!({ "alg": "RS256", "typ": "JWT", "kid": key.kid }), &claims)
    }
}

/// A refusal: 401, the code, and a `WWW-Authenticate` challenge naming the error.
pub fn assert_refused(reply: &(u16, Value, Option<String>), code: &str, case: &str) {
    let (status, body, challenge) = reply;
    assert_eq!((*status, body["error"]["code"].as_str()), (401, Some(code)), "{case}: {body}");
    let challenge = challenge.as_deref().unwrap_or_else(|| panic!("{case}: no WWW-Authenticate"));
    assert!(challenge.starts_with("Bearer realm=\"authkit-host\", error=\"invalid_token\""), "{case}: {challenge}");
}

#[cfg(test)]
mod tests {
    use super::b64url;

    #[test]
    fn base64url_matches_rfc_4648_vectors() {
        // RFC 4648 §10, without padding, in the URL-safe alphabet.
        let cases = [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ];
        for (plain, encoded) in cases {
            assert_eq!(b64url(plain.as_bytes()), encoded);
        }
        assert_eq!(b64url(&[0xfb, 0xff]), "-_8");
    }
}

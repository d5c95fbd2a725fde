//! A WorkOS emulator: builds event envelopes in the documented shapes and signs
//! them exactly as WorkOS does (`t` in milliseconds, HMAC-SHA256 over
//! `"<t>." + body`, lowercase hex), with an HMAC written here from RFC 2104,
//! independently of the host's verifier.

use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const BLOCK: usize = 64;

/// HMAC-SHA256 per RFC 2104, lowercase hex.
pub fn hmac_sha256_hex(key: &[u8], message: &[u8]) -> String {
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|k| k ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    let outer = Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize();
    outer.iter().map(|b| format!("{b:02x}")).collect()
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64
}

/// A WorkOS environment as the host sees it: a webhook secret and a stream of events.
pub struct Emulator {
    pub secret: String,
}

impl Emulator {
    pub fn new(secret: &str) -> Emulator {
        Emulator { secret: secret.to_string() }
    }

    /// The `WorkOS-Signature` header value for `body` signed at `t_ms`.
    pub fn signature(&self, t_ms: i64, body: &[u8]) -> String {
        let mut signed = t_ms.to_string().into_bytes();
        signed.push(b'.');
        signed.extend_from_slice(body);
        format!("t={t_ms}, v1={}", hmac_sha256_hex(self.secret.as_bytes(), &signed))
    }

    /// A fresh, sortable event id (`event_` + time + counter, like a ULID).
    /// Unique in this process, whichever emulator makes it: two emulators of
    /// one tenant (or one made per request) must not mint the same id in the
    /// same millisecond, or the host rightly takes the second as a redelivery.
    pub fn event_id(&self) -> String {
        static PROCESS: AtomicU64 = AtomicU64::new(0);
        let n = PROCESS.fetch_add(1, Ordering::Relaxed);
        format!("event_{:013}{:08}", now_ms(), n % 100_000_000)
    }

    /// A whole event envelope; returns its id and body bytes.
    pub fn event(&self, event_type: &str, data: Value, created_at: &str) -> (String, Vec<u8>) {
        let id = self.event_id();
        let body = json!({
            "object": "event",
            "id": id,
            "event": event_type,
            "data": data,
            "created_at": created_at,
            "context": {"client_id": "client_emulator"},
        });
        (id, serde_json::to_vec(&body).unwrap())
    }
}

/// A user object with every documented field.
pub fn user(id: &str, email: &str, first_name: &str, updated_at: &str) -> Value {
    json!({
        "object": "user",
        "id": id,
        "email": email,
        "email_verified": true,
        "first_name": first_name,
        "last_name": "Tester",
        "name": format!("{first_name} Tester"),
        "profile_picture_url": format!("https://example.com/{id}.jpg"),
        "last_sign_in_at": updated_at,
        "locale": "en-US",
        "external_id": format!("ext_{id}"),
        "metadata": {"plan": "pro"},
        "created_at": "2025-01-01T00:00:00.000Z",
        "updated_at": updated_at,
    })
}

/// An organization object (the fixture's shape, with timestamps).
pub fn organization(id: &str, name: &str, updated_at: &str) -> Value {
    json!({
        "object": "organization",
        "id": id,
        "name": name,
        "allow_profiles_outside_organization": false,
        "domains": [{"object": "organization_domain", "id": "org_domain_1", "domain": "example.com", "state": "verified"}],
        "metadata": {},
        "external_id": null,
        "created_at": "2025-01-01T00:00:00.000Z",
        "updated_at": updated_at,
    })
}

/// An organization membership object.
pub fn membership(id: &str, user_id: &str, org_id: &str, role: &str, updated_at: &str) -> Value {
    json!({
        "object": "organization_membership",
        "id": id,
        "user_id": user_id,
        "organization_id": org_id,
        "organization_name": "Foo Corp",
        "status": "active",
        "role": {"slug": role},
        "roles": [{"slug": role}],
        "directory_managed": false,
        "custom_attributes": {},
        "created_at": "2025-01-01T00:00:00.000Z",
        "updated_at": updated_at,
    })
}

/// An `authentication_action_context` body (the fixture's shape) for `user`.
pub fn authentication_action(id: &str, user: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "object": "authentication_action_context",
        "user": user,
        "ip_address": "50.141.123.10",
        "user_agent": "Mozilla/5.0",
        "device_fingerprint": "notafingerprint",
        "issuer": "test",
        "organization": {"object": "organization", "id": "org_1", "name": "Foo Corp", "domains": []},
        "organization_membership": {
            "object": "organization_membership", "id": "om_1", "user_id": user["id"],
            "organization_id": "org_1", "role": {"slug": "member"}, "status": "active",
        },
    }))
    .unwrap()
}

/// A `user_registration_action_context` body (the fixture's shape).
pub fn registration_action(id: &str, email: &str, first_name: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "id": id,
        "object": "user_registration_action_context",
        "user_data": {
            "object": "user_data", "email": email, "first_name": first_name,
            "last_name": "Doe", "name": format!("{first_name} Doe"),
        },
        "ip_address": "50.141.123.10",
        "user_agent": "Mozilla/5.0",
        "device_fingerprint": "notafingerprint",
    }))
    .unwrap()
}

/// Checks an Actions response as WorkOS does, with this module's own HMAC:
/// the shape and key order, then the signature over `"<timestamp>." + payload`
/// as sent. Returns the payload.
pub fn verify_action_response(secret: &str, body: &[u8], expected_object: &str) -> Result<Value, String> {
    let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_string())?;
    let prefix = format!(r#"{{"object":"{expected_object}","payload":"#);
    let rest = text.strip_prefix(&prefix).ok_or_else(|| format!("unexpected start: {text}"))?;
    let (payload, tail) = rest.rsplit_once(r#","signature":""#).ok_or("no signature after the payload")?;
    let signature = tail.strip_suffix(r#""}"#).ok_or("the body does not end after the signature")?;
    let parsed: Value = serde_json::from_str(payload).map_err(|e| format!("payload is not JSON: {e}"))?;
    let keys: Vec<&str> = parsed.as_object().ok_or("payload is not an object")?.keys().map(String::as_str).collect();
    let order_ok = payload.starts_with(r#"{"timestamp":"#)
        && (keys.len() == 2 && payload.contains(r#","verdict":""#) && !payload.contains("error_message")
            || keys.len() == 3 && payload.find("\"verdict\"") < payload.find("\"error_message\""));
    if !order_ok {
        return Err(format!("payload keys out of order or unexpected: {payload}"));
    }
    let timestamp = parsed["timestamp"].as_i64().ok_or("no integer timestamp")?;
    let expected = hmac_sha256_hex(secret.as_bytes(), format!("{timestamp}.{payload}").as_bytes());
    if expected != signature {
        return Err(format!("signature mismatch: got {signature}, expected {expected}"));
    }
    Ok(parsed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_independent_hmac_matches_the_protocol_page_vectors() {
        assert_eq!(
            hmac_sha256_hex(b"test_secret", b""),
            "f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd"
        );
        assert_eq!(
            hmac_sha256_hex(b"test_secret", "😀".as_bytes()),
            "837da296d05c4fe31f61d5d7ead035099d9585a5bcde87de952012a78f0b0c43"
        );
        let body = br#"{"id":"evt_01","event":"user.created","data":{},"created_at":"2025-01-01T00:00:00.000Z"}"#;
        assert_eq!(
            Emulator::new("whsec_test").signature(1_735_689_600_000, body),
            "t=1735689600000, v1=aa9df12b8a4c4977490bf42eae729a3bd737970483f6b0e9b0091fe2e0fc9dd3"
        );
        // RFC 4231 test case 6: a key longer than the block is hashed first.
        assert_eq!(
            hmac_sha256_hex(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First"),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}

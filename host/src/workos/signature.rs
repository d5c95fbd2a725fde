//! The WorkOS signature scheme, for webhooks and Actions alike.
//!
//! Owns: parsing the `WorkOS-Signature` header, checking the timestamp tolerance,
//! computing and comparing HMAC-SHA256 over `"<t>." + <raw body bytes>`.
//! Must not: do I/O, read the clock (the caller passes `now`), or touch the
//! database. Everything here is pure so it can be tested against fixed vectors.

use std::fmt;
use std::time::Duration;

use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;

/// Header WorkOS puts the signature in (HTTP header names are case-insensitive).
pub const SIGNATURE_HEADER: &str = "workos-signature";

/// WorkOS SDKs reject webhooks whose timestamp is more than 3 minutes away from now.
pub const WEBHOOK_TOLERANCE: Duration = Duration::from_secs(180);

/// Actions requests use a tighter 30 s window (the protocol page).
pub const ACTION_TOLERANCE: Duration = Duration::from_secs(30);

/// A header longer than this is not one WorkOS sent; refuse it before parsing.
/// (`t=` 13 digits, `v1=` 64 hex characters and separators are about 90 bytes.)
const MAX_HEADER_LEN: usize = 1024;

/// Length of a hex-encoded SHA-256 MAC.
const HEX_MAC_LEN: usize = 64;

type HmacSha256 = Hmac<Sha256>;

/// A signing secret. Its `Debug` never shows the value, so it cannot leak into logs.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret; an empty one is refused because it would make every
    /// signature trivially forgeable by anyone who guesses that.
    pub fn new(value: impl Into<String>) -> Option<Secret> {
        let value = value.into();
        if value.is_empty() { None } else { Some(Secret(value)) }
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Why a signature was refused. Each variant maps to a stable public error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the WorkOS-Signature header is missing")]
    Missing,
    #[error("the WorkOS-Signature header is malformed: {0}")]
    Malformed(&'static str),
    #[error("the signature does not match the request body")]
    Mismatch,
    #[error("the signature timestamp is {age_ms} ms old, beyond the {tolerance_ms} ms tolerance")]
    Expired { age_ms: i64, tolerance_ms: i64 },
    #[error("the signature timestamp is {ahead_ms} ms in the future, beyond the {tolerance_ms} ms tolerance")]
    FromFuture { ahead_ms: i64, tolerance_ms: i64 },
}

/// The parts of a parsed header. `t_raw` is kept exactly as sent, because the
/// signed string uses the header's text, not a re-formatted number.
#[derive(Debug, PartialEq, Eq)]
struct ParsedHeader<'a> {
    t_raw: &'a str,
    t_ms: i64,
    v1: Vec<[u8; 32]>,
}

fn parse_header(value: &str) -> Result<ParsedHeader<'_>, SignatureError> {
    if value.len() > MAX_HEADER_LEN {
        return Err(SignatureError::Malformed("header is too long"));
    }
    let mut t_raw = None;
    let mut v1 = Vec::new();
    for part in value.split(',') {
        let part = part.trim();
        if part.is_empty() {
            continue;
        }
        let Some((key, val)) = part.split_once('=') else {
            return Err(SignatureError::Malformed("expected key=value pairs"));
        };
        match key.trim() {
            "t" if t_raw.is_some() => return Err(SignatureError::Malformed("more than one t")),
            "t" => t_raw = Some(val.trim()),
            "v1" => v1.push(decode_mac(val.trim())?),
            _ => {} // unknown keys are ignored, as the SDKs do
        }
    }
    let t_raw = t_raw.ok_or(SignatureError::Malformed("no t= timestamp"))?;
    if v1.is_empty() {
        return Err(SignatureError::Malformed("no v1= signature"));
    }
    let t_ms = parse_millis(t_raw)?;
    Ok(ParsedHeader { t_raw, t_ms, v1 })
}

fn parse_millis(t: &str) -> Result<i64, SignatureError> {
    // Digits only: a sign, a fraction or an exponent is not what WorkOS sends.
    if t.is_empty() || t.len() > 15 || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(SignatureError::Malformed("t is not a unix time in milliseconds"));
    }
    t.parse().map_err(|_| SignatureError::Malformed("t is not a unix time in milliseconds"))
}

fn decode_mac(hex_mac: &str) -> Result<[u8; 32], SignatureError> {
    if hex_mac.len() != HEX_MAC_LEN {
        return Err(SignatureError::Malformed("v1 is not a 64-character hex HMAC-SHA256"));
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_mac, &mut out)
        .map_err(|_| SignatureError::Malformed("v1 is not a 64-character hex HMAC-SHA256"))?;
    Ok(out)
}

fn mac_for(secret: &Secret, t_raw: &str, body: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length, so this cannot fail.
    let mut mac = HmacSha256::new_from_slice(secret.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
    mac.update(t_raw.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// Verifies a `WorkOS-Signature` header against the raw body bytes.
///
/// `header` is the header's raw value (`None` when absent); `now_ms` is unix time
/// in milliseconds. The timestamp must be within `tolerance` in either direction.
pub fn verify(
    secret: &Secret,
    header: Option<&[u8]>,
    body: &[u8],
    now_ms: i64,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    let header = header.ok_or(SignatureError::Missing)?;
    let header = std::str::from_utf8(header).map_err(|_| SignatureError::Malformed("header is not valid UTF-8"))?;
    let parsed = parse_header(header)?;
    let tolerance_ms = i64::try_from(tolerance.as_millis()).unwrap_or(i64::MAX);
    let skew = now_ms.saturating_sub(parsed.t_ms);
    if skew > tolerance_ms {
        return Err(SignatureError::Expired { age_ms: skew, tolerance_ms });
    }
    if -skew > tolerance_ms {
        return Err(SignatureError::FromFuture { ahead_ms: -skew, tolerance_ms });
    }
    let expected = mac_for(secret, parsed.t_raw, body);
    // `verify_slice` compares in constant time.
    let matched = parsed.v1.iter().any(|candidate| expected.clone().verify_slice(candidate).is_ok());
    if matched { Ok(()) } else { Err(SignatureError::Mismatch) }
}

/// Lowercase hex HMAC-SHA256 of `"<t_ms>." + payload`: what WorkOS puts in `v1`,
/// and what an Actions response carries as its `signature`.
pub fn sign(secret: &Secret, t_ms: i64, payload: &[u8]) -> String {
    hex::encode(mac_for(secret, &t_ms.to_string(), payload).finalize().into_bytes())
}

/// A complete header value, `t=<ms>, v1=<hex>`, as WorkOS sends it.
pub fn header_value(secret: &Secret, t_ms: i64, body: &[u8]) -> String {
    format!("t={t_ms}, v1={}", sign(secret, t_ms, body))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_735_689_600_000;
    const BODY: &[u8] = br#"{"id":"evt_01","event":"user.created","data":{},"created_at":"2025-01-01T00:00:00.000Z"}"#;
    const VECTOR_MAC: &str = "aa9df12b8a4c4977490bf42eae729a3bd737970483f6b0e9b0091fe2e0fc9dd3";

    fn secret(s: &str) -> Secret {
        Secret::new(s).unwrap()
    }

    fn check(header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
        verify(&secret("whsec_test"), Some(header.as_bytes()), body, now, WEBHOOK_TOLERANCE)
    }

    #[test]
    fn protocol_page_vectors_match() {
        let raw = |s: &str, msg: &[u8]| {
            let mut mac = HmacSha256::new_from_slice(s.as_bytes()).unwrap();
            mac.update(msg);
            hex::encode(mac.finalize().into_bytes())
        };
        assert_eq!(raw("test_secret", b""), "f7f9bd47fb987337b5796fdc1fdb9ba221d0d5396814bfcaf9521f43fd8927fd");
        assert_eq!(
            raw("test_secret", "😀".as_bytes()),
            "837da296d05c4fe31f61d5d7ead035099d9585a5bcde87de952012a78f0b0c43"
        );
        assert_eq!(sign(&secret("whsec_test"), NOW, BODY), VECTOR_MAC);
        assert_eq!(
            sign(&secret("secret"), NOW, br#"{"timestamp":1735689600000,"verdict":"Allow"}"#),
            "c1058245d76289e840af7ee57dce3c39fa8c0be2517104f4b5315fc3d21078dd"
        );
        assert_eq!(
            sign(
                &secret("secret"),
                NOW,
                br#"{"timestamp":1735689600000,"verdict":"Deny","error_message":"Please use a work email address"}"#
            ),
            "ef5857318f400cc4fda86fcc133c3f7e8c257aaaa2d5e24b58a94990fc9c2a58"
        );
    }

    #[test]
    fn the_documented_header_verifies_with_and_without_the_space() {
        assert_eq!(check(&format!("t={NOW}, v1={VECTOR_MAC}"), BODY, NOW), Ok(()));
        assert_eq!(check(&format!("t={NOW},v1={VECTOR_MAC}"), BODY, NOW), Ok(()));
        assert_eq!(check(&format!(" v1={VECTOR_MAC} , t={NOW}, v0=zz"), BODY, NOW), Ok(()));
        assert_eq!(check(&format!("t={NOW}, v1={}", VECTOR_MAC.to_uppercase()), BODY, NOW), Ok(()));
    }

    #[test]
    fn tampered_or_reserialised_bodies_are_refused() {
        let header = format!("t={NOW}, v1={VECTOR_MAC}");
        let mut tampered = BODY.to_vec();
        tampered[10] ^= 1;
        assert_eq!(check(&header, &tampered, NOW), Err(SignatureError::Mismatch));
        let reserialised =
            serde_json::to_vec_pretty(&serde_json::from_slice::<serde_json::Value>(BODY).unwrap()).unwrap();
        assert_eq!(check(&header, &reserialised, NOW), Err(SignatureError::Mismatch));
        // The same MAC under another timestamp, or another secret, fails too.
        assert_eq!(check(&format!("t={}, v1={VECTOR_MAC}", NOW + 1), BODY, NOW), Err(SignatureError::Mismatch));
        let other = verify(&secret("whsec_other"), Some(header.as_bytes()), BODY, NOW, WEBHOOK_TOLERANCE);
        assert_eq!(other, Err(SignatureError::Mismatch));
    }

    #[test]
    fn timestamps_outside_the_tolerance_are_refused_in_both_directions() {
        let at = |t: i64| format!("t={t}, v1={}", sign(&secret("whsec_test"), t, BODY));
        let tol = 180_000;
        assert_eq!(check(&at(NOW - tol), BODY, NOW), Ok(()));
        assert_eq!(check(&at(NOW + tol), BODY, NOW), Ok(()));
        assert_eq!(
            check(&at(NOW - tol - 1), BODY, NOW),
            Err(SignatureError::Expired { age_ms: tol + 1, tolerance_ms: tol })
        );
        assert_eq!(
            check(&at(NOW + tol + 1), BODY, NOW),
            Err(SignatureError::FromFuture { ahead_ms: tol + 1, tolerance_ms: tol })
        );
        // Seconds instead of milliseconds look 55 years old.
        assert!(matches!(check(&at(NOW / 1000), BODY, NOW), Err(SignatureError::Expired { .. })));
    }

    #[test]
    fn malformed_headers_are_told_apart_from_missing_ones() {
        assert_eq!(verify(&secret("s"), None, BODY, NOW, WEBHOOK_TOLERANCE), Err(SignatureError::Missing));
        for bad in [
            "".to_string(),
            "garbage".to_string(),
            format!("v1={VECTOR_MAC}"),
            format!("t={NOW}"),
            format!("t=-{NOW}, v1={VECTOR_MAC}"),
            format!("t=1.5e12, v1={VECTOR_MAC}"),
            format!("t={NOW}, v1=abc"),
            format!("t={NOW}, v1={}", "zz".repeat(32)),
            format!("t={NOW}, t={NOW}, v1={VECTOR_MAC}"),
            format!("t={NOW}, v1={VECTOR_MAC}, x={}", "a".repeat(2000)),
        ] {
            assert!(matches!(check(&bad, BODY, NOW), Err(SignatureError::Malformed(_))), "{bad:?}");
        }
        let not_utf8 = verify(&secret("s"), Some(&[0xff, 0xfe]), BODY, NOW, WEBHOOK_TOLERANCE);
        assert!(matches!(not_utf8, Err(SignatureError::Malformed(_))));
    }

    #[test]
    fn an_empty_secret_is_refused_and_a_secret_never_prints() {
        assert!(Secret::new("").is_none());
        assert_eq!(format!("{:?}", secret("whsec_very_secret")), "Secret(<redacted>)");
    }
}

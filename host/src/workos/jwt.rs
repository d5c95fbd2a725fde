//! AuthKit access tokens: RS256 JSON Web Tokens, checked exactly as the
//! protocol page says.
//!
//! Owns: decoding the compact form, refusing every algorithm but RS256 (`none`
//! and HS256 included) before anything else is looked at, the RSA PKCS#1 v1.5
//! SHA-256 signature check, the time checks (`exp`, `nbf`, `iat`, with a
//! leeway) and the issuer check, and parsing a JWKS document into keys.
//! Must not: do I/O or read the clock (the caller passes `now`); fetching and
//! caching key sets is [`super::jwks`].

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lc_rs::signature::{ParsedPublicKey, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A token longer than this is not one AuthKit minted (they are about 1 KiB).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The one algorithm AuthKit signs access tokens with.
pub const ALGORITHM: &str = "RS256";

/// Why a token was refused. Each has a stable code (see [`TokenError::code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the access token is malformed: {0}")]
    Malformed(String),
    #[error("the access token's algorithm {0:?} is not accepted: AuthKit tokens are signed RS256")]
    Algorithm(String),
    #[error("the access token is signed by key {0:?}, which is not in the client's key set")]
    UnknownKey(String),
    #[error("the access token's signature does not verify")]
    Signature,
    #[error("the access token expired at {exp} (now {now}, leeway {leeway_secs} s)")]
    Expired { exp: i64, now: i64, leeway_secs: u64 },
    #[error("the access token is not valid before {from} (now {now}, leeway {leeway_secs} s)")]
    NotYetValid { from: i64, now: i64, leeway_secs: u64 },
    #[error("the access token's issuer {0:?} is not one this host accepts")]
    Issuer(String),
}

impl TokenError {
    /// The stable machine-readable code of the case.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Malformed(_) => "token_malformed",
            TokenError::Algorithm(_) => "token_algorithm",
            TokenError::UnknownKey(_) => "token_key_unknown",
            TokenError::Signature => "token_signature",
            TokenError::Expired { .. } => "token_expired",
            TokenError::NotYetValid { .. } => "token_not_yet_valid",
            TokenError::Issuer(_) => "token_issuer",
        }
    }
}

fn malformed(reason: impl Into<String>) -> TokenError {
    TokenError::Malformed(reason.into())
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

/// The claims of a verified AuthKit access token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// The user id (`user_...`).
    pub sub: String,
    pub iss: String,
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// The session id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub roles: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entitlements: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_flags: Option<Vec<String>>,
    /// Impersonation: who is acting as the user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub act: Option<Value>,
}

/// A token whose shape and algorithm are right, not yet verified.
pub struct Unverified<'a> {
    kid: String,
    signing_input: &'a [u8],
    signature: Vec<u8>,
    payload: Vec<u8>,
}

/// Splits a compact JWS and checks what can be checked without a key: three
/// base64url parts, a JSON header naming RS256 and a `kid`. Any other
/// algorithm is refused here, so no key is ever used with it.
pub fn decode(token: &str) -> Result<Unverified<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(malformed(format!("it is longer than {MAX_TOKEN_LEN} bytes")));
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("it is not three dot-separated parts"));
    };
    let part = |name: &str, text: &str| {
        URL_SAFE_NO_PAD.decode(text).map_err(|_| malformed(format!("its {name} is not unpadded base64url")))
    };
    let header: Header = serde_json::from_slice(&part("header", header)?)
        .map_err(|e| malformed(format!("its header is not a JSON object with string fields: {e}")))?;
    match header.alg.as_deref() {
        Some(ALGORITHM) => {}
        Some(other) => return Err(TokenError::Algorithm(other.to_string())),
        None => return Err(malformed("its header names no algorithm")),
    }
    let kid = header.kid.filter(|k| !k.is_empty()).ok_or_else(|| malformed("its header names no key (`kid`)"))?;
    let signing_input = &token.as_bytes()[..token.len() - signature.len() - 1];
    Ok(Unverified { kid, signing_input, payload: part("payload", payload)?, signature: part("signature", signature)? })
}

/// What a verified token must also satisfy.
pub struct Rules<'a> {
    /// Accepted `iss` values, exactly.
    pub issuers: &'a [String],
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
}

impl Unverified<'_> {
    /// The key the token says it is signed with.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `key`, then the claims against `rules` at
    /// `now` (unix seconds). The claims are read only after the signature holds.
    pub fn verify(self, key: &RsaKey, rules: &Rules, now: i64) -> Result<Claims, TokenError> {
        key.0.verify_sig(self.signing_input, &self.signature).map_err(|_| TokenError::Signature)?;
        let claims: Claims = serde_json::from_slice(&self.payload)
            .map_err(|e| malformed(format!("its claims are not what AuthKit sends: {e}")))?;
        let leeway_secs = rules.leeway.as_secs();
        let leeway = i64::try_from(leeway_secs).unwrap_or(i64::MAX);
        if now > claims.exp.saturating_add(leeway) {
            return Err(TokenError::Expired { exp: claims.exp, now, leeway_secs });
        }
        if let Some(from) = claims.nbf.into_iter().chain(claims.iat).filter(|t| *t > now.saturating_add(leeway)).max() {
            return Err(TokenError::NotYetValid { from, now, leeway_secs });
        }
        if !rules.issuers.contains(&claims.iss) {
            return Err(TokenError::Issuer(claims.iss));
        }
        if claims.sub.is_empty() {
            return Err(malformed("its `sub` is empty"));
        }
        Ok(claims)
    }
}

/// An RSA public key from a key set, parsed once for RSASSA-PKCS1-v1_5 with
/// SHA-256 (a 2048 to 8192-bit modulus).
#[derive(Debug)]
pub struct RsaKey(ParsedPublicKey);

/// The signing keys of one client id, by `kid`.
#[derive(Debug, Default)]
pub struct KeySet {
    keys: HashMap<String, Arc<RsaKey>>,
}

impl KeySet {
    /// Parses a JWKS document. Keys that cannot sign RS256 tokens (another
    /// `kty`, `use` or `alg`, or invalid numbers) are left out; a document
    /// that is not a key set at all is an error.
    pub fn parse(json: &[u8]) -> Result<KeySet, String> {
        #[derive(Deserialize)]
        struct Document {
            keys: Vec<Value>,
        }
        #[derive(Deserialize)]
        struct Jwk {
            kty: String,
            kid: String,
            n: String,
            e: String,
            #[serde(rename = "use")]
            use_: Option<String>,
            alg: Option<String>,
        }
        let document: Document =
            serde_json::from_slice(json).map_err(|e| format!("the key set is not a JWKS document: {e}"))?;
        let mut keys = HashMap::new();
        for value in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(value) else { continue };
            if jwk.kty != "RSA"
                || jwk.use_.as_deref().is_some_and(|u| u != "sig")
                || jwk.alg.as_deref().is_some_and(|a| a != ALGORITHM)
            {
                continue;
            }
            let number = |text: &str| {
                let bytes = URL_SAFE_NO_PAD.decode(text).ok()?;
                let first = bytes.iter().position(|b| *b != 0)?;
                Some(bytes[first..].to_vec())
            };
            let (Some(n), Some(e)) = (number(&jwk.n), number(&jwk.e)) else { continue };
            // 2048 to 8192 bits, odd; an exponent of 3 to 2^33 - 1, odd (as ring and aws-lc check).
            let usable = (256..=1024).contains(&n.len())
                && n.last().is_some_and(|b| b % 2 == 1)
                && e.len() <= 5
                && e.last().is_some_and(|b| b % 2 == 1)
                && (e.len() > 1 || e[0] >= 3);
            if !usable {
                continue;
            }
            if let Ok(key) = (RsaPublicKeyComponents { n: &n, e: &e }).to_parsed_public_key(&RSA_PKCS1_2048_8192_SHA256)
            {
                keys.insert(jwk.kid, Arc::new(RsaKey(key)));
            }
        }
        Ok(KeySet { keys })
    }

    pub fn get(&self, kid: &str) -> Option<Arc<RsaKey>> {
        self.keys.get(kid).cloned()
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn decode_refuses_other_algorithms_before_any_key_is_used() {
        for alg in ["none", "HS256", "RS512", "PS256", "ES256"] {
            let token = format!("{}.{}.{}", b64(format!(r#"{{"alg":"{alg}","kid":"k"}}"#).as_bytes()), b64(b"{}"), "");
            assert_eq!(decode(&token).err(), Some(TokenError::Algorithm(alg.to_string())), "{alg}");
        }
    }

    #[test]
    fn decode_refuses_malformed_tokens() {
        let header = b64(br#"{"alg":"RS256","kid":"k"}"#);
        let cases = [
            String::new(),
            "a.b".to_string(),
            "a.b.c.d".to_string(),
            format!("{header}.{}.***", b64(b"{}")),
            format!("{}.{}.", b64(b"not json"), b64(b"{}")),
            format!("{}.{}.", b64(br#"{"alg":"RS256"}"#), b64(b"{}")),
            format!("{}.{}.", b64(br#"{"kid":"k"}"#), b64(b"{}")),
            format!("{header}.{}.{}", b64(b"{}"), "x".repeat(MAX_TOKEN_LEN)),
        ];
        for token in cases {
            assert!(matches!(decode(&token), Err(TokenError::Malformed(_))), "{token:.60}");
        }
    }

    #[test]
    fn a_key_set_keeps_only_rs256_signing_keys() {
        // A 2048-bit modulus and e = 65537.
        let n = b64(&[0xc5; 256]);
        let doc = format!(
            r#"{{"keys":[
                {{"kty":"RSA","kid":"good","n":"{n}","e":"AQAB","use":"sig","alg":"RS256"}},
                {{"kty":"RSA","kid":"bare","n":"{n}","e":"AQAB"}},
                {{"kty":"RSA","kid":"enc","n":"{n}","e":"AQAB","use":"enc"}},
                {{"kty":"RSA","kid":"ps","n":"{n}","e":"AQAB","alg":"PS256"}},
                {{"kty":"EC","kid":"ec","crv":"P-256","x":"AA","y":"AA"}},
                {{"kty":"RSA","kid":"short","n":"{short}","e":"AQAB"}},
                {{"kty":"RSA","kid":"even","n":"{even}","e":"AQAB"}},
                {{"kty":"RSA","kid":"junk","n":"***","e":"AQAB"}}
            ]}}"#,
            short = b64(&[0xc5; 128]),
            even = b64(&[0xc4; 256]),
        );
        let set = KeySet::parse(doc.as_bytes()).unwrap();
        let mut kids: Vec<_> = set.keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["bare", "good"]);
        assert!(KeySet::parse(b"[]").is_err());
        assert!(KeySet::parse(b"{\"keys\": 1}").is_err());
    }
}

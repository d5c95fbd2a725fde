//! The signing keys of each client id, fetched from WorkOS and cached.
//!
//! Owns: fetching `<api base>/sso/jwks/<client_id>`, the cache (one key set
//! per client id), and when to fetch again: on a `kid` the cached set lacks, or
//! once the set is older than `auth.jwks_max_age_secs`, never more often than
//! once per `auth.jwks_min_refetch_ms` per client id, one fetch at a time. A
//! failed fetch keeps the keys already cached, so tokens signed with them still
//! verify while WorkOS is unreachable; a key that is not cached fails closed.
//! Must not: decide whether a token is valid (that is [`super::jwt`]) or touch
//! the database.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::jwt::{KeySet, RsaKey};
use crate::locks::{lock, read, write};
use crate::settings::AuthSettings;

/// A key set document larger than this is refused (WorkOS's are about 1 KiB).
const MAX_JWKS_BYTES: usize = 256 * 1024;

/// Why no key could be had for a `kid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// The key set was fetched and does not have it.
    #[error("key {0:?} is not in the client's key set")]
    Unknown(String),
    /// The key is not cached and the key set could not be fetched.
    #[error("key {kid:?} is not cached and the key set could not be fetched: {reason}")]
    Unavailable { kid: String, reason: String },
}

/// One client id's keys.
#[derive(Default)]
struct Entry {
    keys: RwLock<Option<(Arc<KeySet>, Instant)>>,
    /// Held while fetching, so concurrent requests wait for one fetch; holds
    /// the last attempt's time and its error, if it failed.
    fetching: tokio::sync::Mutex<Attempt>,
}

#[derive(Default)]
struct Attempt {
    at: Option<Instant>,
    error: Option<String>,
}

pub struct KeyCache {
    http: reqwest::Client,
    api_base: String,
    min_refetch: Duration,
    max_age: Duration,
    entries: Mutex<HashMap<String, Arc<Entry>>>,
}

impl KeyCache {
    pub fn new(api_base: &str, auth: &AuthSettings) -> KeyCache {
        let http = reqwest::Client::builder()
            .timeout(auth.jwks_timeout)
            .connect_timeout(auth.jwks_timeout)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        KeyCache {
            http,
            api_base: api_base.trim_end_matches('/').to_string(),
            min_refetch: auth.jwks_min_refetch,
            max_age: auth.jwks_max_age,
            entries: Mutex::default(),
        }
    }

    /// Where the key set of `client_id` is fetched from.
    pub fn url(&self, client_id: &str) -> String {
        format!("{}/sso/jwks/{client_id}", self.api_base)
    }

    /// The key `kid` of `client_id`, from the cache or, when it is not there
    /// (or the cached set is old), from a fetch if one is allowed now.
    pub async fn key(&self, client_id: &str, kid: &str) -> Result<Arc<RsaKey>, KeyError> {
        let entry = {
            let mut entries = lock(&self.entries);
            match entries.get(client_id) {
                Some(entry) => entry.clone(),
                None => entries.entry(client_id.to_string()).or_default().clone(),
            }
        };
        let cached = read(&entry.keys).clone();
        if let Some((set, fetched)) = &cached
            && fetched.elapsed() < self.max_age
            && let Some(key) = set.get(kid)
        {
            return Ok(key);
        }
        let mut attempt = entry.fetching.lock().await;
        // Another request may have fetched while this one waited.
        let cached = read(&entry.keys).clone();
        let stale = cached.as_ref().is_none_or(|(_, fetched)| fetched.elapsed() >= self.max_age);
        let lacks = cached.as_ref().is_none_or(|(set, _)| set.get(kid).is_none());
        let allowed = attempt.at.is_none_or(|at| at.elapsed() >= self.min_refetch);
        if (stale || lacks) && allowed {
            attempt.at = Some(Instant::now());
            match self.fetch(client_id).await {
                Ok(set) => {
                    info!(client_id, keys = set.len(), "fetched the client's signing keys");
                    attempt.error = None;
                    *write(&entry.keys) = Some((Arc::new(set), Instant::now()));
                }
                Err(reason) => {
                    warn!(client_id, error = %reason, "could not fetch the client's signing keys; the cached ones stay in use");
                    attempt.error = Some(reason);
                }
            }
        }
        let cached = read(&entry.keys).clone();
        match (cached.as_ref().and_then(|(set, _)| set.get(kid)), &attempt.error) {
            (Some(key), _) => Ok(key),
            (None, Some(reason)) => Err(KeyError::Unavailable { kid: kid.to_string(), reason: reason.clone() }),
            (None, None) => Err(KeyError::Unknown(kid.to_string())),
        }
    }

    async fn fetch(&self, client_id: &str) -> Result<KeySet, String> {
        let url = self.url(client_id);
        let response = self.http.get(&url).send().await.map_err(|e| format!("GET {url}: {e}"))?;
        let status = response.status();
        if !status.is_success() {
            return Err(format!("GET {url} answered {status}"));
        }
        if response.content_length().is_some_and(|n| n > MAX_JWKS_BYTES as u64) {
            return Err(format!("GET {url}: the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        let body = response.bytes().await.map_err(|e| format!("GET {url}: {e}"))?;
        if body.len() > MAX_JWKS_BYTES {
            return Err(format!("GET {url}: the key set is larger than {MAX_JWKS_BYTES} bytes"));
        }
        KeySet::parse(&body)
    }
}

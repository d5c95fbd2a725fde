//! The host's configuration: one validated [`Settings`] value, built once at start.
//!
//! Owns: defaults, the optional TOML file, environment variables and command-line
//! overrides, layered in that order (later wins), and their validation.
//! Must not: be read from the environment anywhere else; every other module gets
//! what it needs from a `Settings` value.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::workos::signature::{Secret, WEBHOOK_TOLERANCE};

/// The embedded database used when nothing else is configured: `./authkit.db`.
pub const DEFAULT_DATABASE_URL: &str = "sqlite://authkit.db";
/// Loopback only by default: exposing the host is a deliberate choice.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
/// WorkOS payloads are a few KiB; 1 MiB leaves room without inviting abuse.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// How long a graceful shutdown waits for in-flight requests before giving up.
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Environment variable names, in one place (the README's table lists them).
pub mod env {
    pub const CONFIG: &str = "AUTHKIT_CONFIG";
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const LISTEN: &str = "AUTHKIT_LISTEN";
    pub const LOG: &str = "AUTHKIT_LOG";
    pub const WEBHOOK_SECRET: &str = "WORKOS_WEBHOOK_SECRET";
    pub const ACTION_SECRET: &str = "WORKOS_ACTION_SECRET";
    pub const CLIENT_ID: &str = "WORKOS_CLIENT_ID";
    pub const API_KEY: &str = "WORKOS_API_KEY";
    pub const API_BASE_URL: &str = "WORKOS_API_BASE_URL";
    pub const WEBHOOK_TOLERANCE_SECS: &str = "AUTHKIT_WEBHOOK_TOLERANCE_SECS";
    pub const WORKER_ENABLED: &str = "AUTHKIT_WORKER_ENABLED";
    pub const WORKER_MAX_ATTEMPTS: &str = "AUTHKIT_WORKER_MAX_ATTEMPTS";
    pub const INBOX_KEEP_DONE_DAYS: &str = "AUTHKIT_INBOX_KEEP_DONE_DAYS";
    pub const HANDLER: &str = "AUTHKIT_HANDLER";
    pub const ADMIN_TOKEN: &str = "AUTHKIT_ADMIN_TOKEN";
    pub const CACHE_DIR: &str = "AUTHKIT_CACHE_DIR";
    pub const INSTANCE_SLOTS: &str = "AUTHKIT_INSTANCE_SLOTS";
    pub const MAX_LOADED_TENANTS: &str = "AUTHKIT_MAX_LOADED_TENANTS";
    pub const MAX_LOADED_CODE_MIB: &str = "AUTHKIT_MAX_LOADED_CODE_MIB";
    /// The CLI's admin commands: where the server is.
    pub const URL: &str = "AUTHKIT_URL";
    /// The CLI's tenant for admin commands (default: `default`).
    pub const TENANT: &str = "AUTHKIT_TENANT";
}

/// Everything the host needs to run, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub database: DatabaseUrl,
    pub listen: SocketAddr,
    /// A `tracing` filter, e.g. `info` or `authkit_host=debug`.
    pub log: String,
    pub workos: WorkosSettings,
    pub webhook: WebhookSettings,
    pub worker: WorkerSettings,
    pub inbox: InboxSettings,
    pub handler: HandlerSettings,
    pub actions: ActionSettings,
    pub queries: QuerySettings,
    pub auth: AuthSettings,
    pub modules: ModuleSettings,
    /// The admin API's bearer token; `None`: the admin API is off (503).
    pub admin_token: Option<Secret>,
    pub shutdown_grace: Duration,
}

/// Handler versions: what an upload may be, where compiled code is kept.
#[derive(Debug, Clone)]
pub struct ModuleSettings {
    /// Largest component accepted, in bytes.
    pub max_bytes: usize,
    /// Compiled code, kept across restarts; `None` turns the cache off.
    pub cache_dir: Option<PathBuf>,
    /// How often a host process looks for a version another process activated.
    pub poll_interval: Duration,
    /// Tenants whose handler versions stay loaded at once, and the compiled
    /// code those versions may hold in memory, in bytes (each module counted
    /// once, however many tenants share it): past either, idle tenants'
    /// versions are closed, those used least often of late first (see
    /// [`crate::tenants`]).
    pub max_loaded_tenants: usize,
    pub max_loaded_code: usize,
}

/// Default of `modules.max_loaded_tenants`: more than the 1,000 tenants the
/// many-tenant benchmark serves, so it measures them all loaded.
pub const DEFAULT_MAX_LOADED_TENANTS: usize = 2000;
/// Default of `modules.max_loaded_code_mib`.
pub const DEFAULT_MAX_LOADED_CODE_MIB: usize = 1024;

/// 50 MiB: an interpreted guest (JavaScript, Python) is 10 to 20 MiB.
pub const DEFAULT_MAX_MODULE_BYTES: usize = 50 * 1024 * 1024;

#[derive(Debug, Clone, Default)]
pub struct WorkosSettings {
    pub webhook_secret: Option<Secret>,
    /// Used by the Actions endpoint (a later issue); accepted and validated now.
    pub action_secret: Option<Secret>,
    pub client_id: Option<String>,
    pub api_key: Option<Secret>,
    /// Where the WorkOS API is (key sets, and later the Events API); no trailing slash.
    pub api_base_url: String,
}

/// The WorkOS API, unless configured otherwise.
pub const DEFAULT_API_BASE_URL: &str = "https://api.workos.com";

/// The placeholder for the tenant's client id in `auth.issuers`.
pub const CLIENT_ID_PLACEHOLDER: &str = "{client_id}";

/// Checking AuthKit access tokens (`GET /me`, queries).
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted `iss` values; `{client_id}` stands for the tenant's client id.
    /// Default: the two forms WorkOS uses, under `workos.api_base_url`.
    pub issuers: Vec<String>,
    /// Allowed clock difference for `exp`, `nbf` and `iat`.
    pub leeway: Duration,
    /// Fetch a client's key set at most this often (an unknown `kid` asks for one).
    pub jwks_min_refetch: Duration,
    /// Fetch a cached key set again once it is this old (keys WorkOS dropped go too).
    pub jwks_max_age: Duration,
    /// How long one key set fetch may take.
    pub jwks_timeout: Duration,
}

impl AuthSettings {
    /// The issuers accepted for a tenant's client id.
    pub fn issuers_for(&self, client_id: &str) -> Vec<String> {
        self.issuers.iter().map(|i| i.replace(CLIENT_ID_PLACEHOLDER, client_id)).collect()
    }

    fn defaults(api_base_url: &str) -> AuthSettings {
        AuthSettings {
            issuers: vec![
                format!("{api_base_url}/"),
                format!("{api_base_url}/user_management/{CLIENT_ID_PLACEHOLDER}"),
            ],
            leeway: Duration::from_secs(30),
            jwks_min_refetch: Duration::from_secs(10),
            jwks_max_age: Duration::from_secs(3600),
            jwks_timeout: Duration::from_secs(3),
        }
    }
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// Largest accepted `|now - t|` of a signature.
    pub tolerance: Duration,
    pub max_body_bytes: usize,
}

#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Off for an ingest-only process: events are stored and acknowledged, and
    /// another process (or a later start) applies them.
    pub enabled: bool,
    /// Events applied per transaction.
    pub batch_size: usize,
    /// Attempts before an event is dead-lettered (it stays in the inbox, visible).
    pub max_attempts: u32,
    pub retry_base: Duration,
    pub retry_max: Duration,
    /// How often an idle worker looks for events whose retry time has come.
    pub poll_interval: Duration,
    /// With several host processes on one Postgres database: how many of them
    /// may give one tenant a turn at the same time (a tenant's
    /// `max_worker_processes` overrides it). `None`: as many as there are.
    pub max_processes_per_tenant: Option<usize>,
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            enabled: true,
            batch_size: 256,
            max_attempts: 20,
            retry_base: Duration::from_secs(1),
            retry_max: Duration::from_secs(300),
            poll_interval: Duration::from_millis(500),
            max_processes_per_tenant: None,
        }
    }
}

/// How long the inbox keeps its history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxSettings {
    /// Done events are deleted once they were processed this long ago;
    /// `None` (`keep_done_days = 0`): kept for good. Unfinished and dead
    /// events are always kept.
    pub keep_done: Option<Duration>,
}

/// 30 days: WorkOS keeps its events as long, and retries a webhook for about
/// 3 days, so a redelivery still finds the event it repeats.
pub const DEFAULT_KEEP_DONE_DAYS: u32 = 30;

/// Fewer days than this could let a WorkOS retry of a deleted event through
/// as new (WorkOS retries for up to about 3 days).
pub const MIN_KEEP_DONE_DAYS: u32 = 4;

fn days(n: u32) -> Duration {
    Duration::from_secs(u64::from(n) * 24 * 60 * 60)
}

/// The handler component and the limits every invocation runs under.
#[derive(Debug, Clone)]
pub struct HandlerSettings {
    /// A component to run on every event (`--handler`); none: events only sync
    /// the host's tables.
    pub path: Option<PathBuf>,
    pub event_deadline: Duration,
    /// Largest linear memory of a guest, in bytes: the default of every
    /// tenant and handler version that sets none of its own.
    pub memory_limit: usize,
    /// The highest memory limit a tenant or a handler version may set, in bytes
    /// (interpreted guests may need more than the default).
    pub max_memory_limit: usize,
    /// `db` and `users` calls per invocation.
    pub max_calls: u32,
    /// Largest document, in bytes of JSON.
    pub max_document_bytes: usize,
    /// Each tenant's document quota, all its tables together (`None`: none).
    pub max_documents: Option<u64>,
    /// Instances the engine's pool holds: at most this many run at once, and
    /// each handler version keeps the slot it last ran in while the pool has
    /// room, so its next call skips mapping its memory again. `None`: sized
    /// at start for the tenants stored then and the CPUs (see
    /// [`crate::runtime::instance_slots_for`]).
    pub instance_slots: Option<u32>,
}

impl Default for HandlerSettings {
    fn default() -> Self {
        HandlerSettings {
            path: None,
            event_deadline: Duration::from_secs(5),
            memory_limit: 64 * 1024 * 1024,
            max_memory_limit: 512 * 1024 * 1024,
            max_calls: 1000,
            max_document_bytes: 1024 * 1024,
            max_documents: None,
            instance_slots: None,
        }
    }
}

/// A verdict the operator configures (fallback, no handler).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfiguredVerdict {
    Allow,
    Deny(String),
}

/// How `POST /workos/action` decides.
#[derive(Debug, Clone)]
pub struct ActionSettings {
    /// How long the handler may take; past it, the fallback is sent.
    pub deadline: Duration,
    /// Sent when the handler fails, traps, runs out of time or memory, or cannot run.
    pub fallback: ConfiguredVerdict,
    /// Sent when no handler with an `actions` export is deployed.
    pub no_handler: ConfiguredVerdict,
    /// Signature tolerance, either direction.
    pub tolerance: Duration,
    /// Handler calls one tenant may have running at once; past it, the
    /// fallback is sent at once, so one tenant cannot take every thread.
    pub max_concurrent: usize,
}

/// How `POST /query/{name}` runs.
#[derive(Debug, Clone)]
pub struct QuerySettings {
    pub deadline: Duration,
    /// Queries one tenant may have running at once; past it, 503 at once.
    pub max_concurrent: usize,
    /// Largest request body (the query's arguments).
    pub max_body_bytes: usize,
    /// Largest answer a query may return.
    pub max_result_bytes: usize,
}

impl Default for QuerySettings {
    fn default() -> Self {
        QuerySettings {
            deadline: Duration::from_secs(2),
            max_concurrent: 32,
            max_body_bytes: 64 * 1024,
            max_result_bytes: 4 * 1024 * 1024,
        }
    }
}

/// The default fallback's message.
pub const DEFAULT_FALLBACK_MESSAGE: &str = "Sign-in is temporarily unavailable. Please try again in a moment.";

impl Default for ActionSettings {
    fn default() -> Self {
        ActionSettings {
            deadline: Duration::from_secs(1),
            fallback: ConfiguredVerdict::Deny(DEFAULT_FALLBACK_MESSAGE.to_string()),
            no_handler: ConfiguredVerdict::Allow,
            tolerance: crate::workos::signature::ACTION_TOLERANCE,
            max_concurrent: 32,
        }
    }
}

/// Which database, parsed from a `sqlite://` or `postgres://` URL.
#[derive(Clone, PartialEq, Eq)]
pub enum DatabaseUrl {
    Sqlite(String),
    Postgres(String),
}

impl DatabaseUrl {
    pub fn parse(url: &str) -> Result<DatabaseUrl, SettingsError> {
        if url.starts_with("sqlite:") {
            Ok(DatabaseUrl::Sqlite(url.to_string()))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(DatabaseUrl::Postgres(url.to_string()))
        } else {
            Err(SettingsError::Invalid {
                key: "database_url",
                reason: "must start with sqlite:// or postgres://".into(),
            })
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            DatabaseUrl::Sqlite(u) | DatabaseUrl::Postgres(u) => u,
        }
    }
}

impl std::fmt::Debug for DatabaseUrl {
    /// Postgres URLs may carry a password: show only the scheme and host part.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DatabaseUrl::Sqlite(u) => write!(f, "{u}"),
            DatabaseUrl::Postgres(u) => {
                let host = u.rsplit_once('@').map_or(u.as_str(), |(_, host)| host);
                write!(f, "postgres://…@{host}")
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read the config file {path}: {source}")]
    ReadFile { path: PathBuf, source: std::io::Error },
    #[error("the config file {path} is not valid: {source}")]
    ParseFile { path: PathBuf, source: Box<toml::de::Error> },
    #[error("invalid setting `{key}`: {reason}")]
    Invalid { key: &'static str, reason: String },
}

/// Values given on the command line; they override the file and the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub config: Option<PathBuf>,
    pub database_url: Option<String>,
    pub listen: Option<String>,
    pub no_worker: bool,
    pub handler: Option<PathBuf>,
}

/// The TOML file's shape. Unknown keys are refused so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    database_url: Option<String>,
    listen: Option<String>,
    log: Option<String>,
    shutdown_grace_secs: Option<u64>,
    #[serde(default)]
    workos: FileWorkos,
    #[serde(default)]
    webhook: FileWebhook,
    #[serde(default)]
    worker: FileWorker,
    #[serde(default)]
    inbox: FileInbox,
    #[serde(default)]
    handler: FileHandler,
    #[serde(default)]
    actions: FileActions,
    #[serde(default)]
    queries: FileQueries,
    #[serde(default)]
    auth: FileAuth,
    #[serde(default)]
    modules: FileModules,
    #[serde(default)]
    admin: FileAdmin,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileModules {
    max_bytes: Option<usize>,
    /// A path, or "" to turn the cache off.
    cache_dir: Option<PathBuf>,
    poll_interval_ms: Option<u64>,
    max_loaded_tenants: Option<usize>,
    max_loaded_code_mib: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAdmin {
    token: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileQueries {
    deadline_ms: Option<u64>,
    max_concurrent: Option<usize>,
    max_body_bytes: Option<usize>,
    max_result_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileActions {
    deadline_ms: Option<u64>,
    /// `allow` or `deny`.
    fallback: Option<String>,
    fallback_message: Option<String>,
    /// `allow` or `deny`.
    no_handler: Option<String>,
    no_handler_message: Option<String>,
    tolerance_secs: Option<u64>,
    max_concurrent: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileHandler {
    path: Option<PathBuf>,
    event_deadline_ms: Option<u64>,
    memory_limit_mib: Option<usize>,
    max_memory_limit_mib: Option<usize>,
    max_calls: Option<u32>,
    max_document_bytes: Option<usize>,
    max_documents: Option<u64>,
    instance_slots: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorkos {
    webhook_secret: Option<String>,
    action_secret: Option<String>,
    client_id: Option<String>,
    api_key: Option<String>,
    api_base_url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileAuth {
    issuers: Option<Vec<String>>,
    leeway_secs: Option<u64>,
    jwks_min_refetch_ms: Option<u64>,
    jwks_max_age_secs: Option<u64>,
    jwks_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWebhook {
    tolerance_secs: Option<u64>,
    max_body_bytes: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileWorker {
    enabled: Option<bool>,
    batch_size: Option<usize>,
    max_attempts: Option<u32>,
    retry_base_ms: Option<u64>,
    retry_max_ms: Option<u64>,
    poll_interval_ms: Option<u64>,
    max_processes_per_tenant: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileInbox {
    keep_done_days: Option<u32>,
}

impl Settings {
    /// Loads from the process environment (and the file it names) plus `overrides`.
    pub fn load(overrides: &Overrides) -> Result<Settings, SettingsError> {
        Settings::load_with(overrides, |key| std::env::var(key).ok())
    }

    /// Like [`Settings::load`], with the environment supplied by the caller (for tests).
    pub fn load_with(overrides: &Overrides, env: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let config_path = overrides.config.clone().or_else(|| env(env::CONFIG).map(PathBuf::from));
        let file = match &config_path {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let pick = |flag: &Option<String>, var: &str, file: &Option<String>| {
            flag.clone().or_else(|| env(var)).or_else(|| file.clone())
        };

        let database_url = pick(&overrides.database_url, env::DATABASE_URL, &file.database_url)
            .unwrap_or_else(|| DEFAULT_DATABASE_URL.to_string());
        let listen = pick(&overrides.listen, env::LISTEN, &file.listen).unwrap_or_else(|| DEFAULT_LISTEN.to_string());
        let listen = listen.parse().map_err(|e| SettingsError::Invalid {
            key: "listen",
            reason: format!("{listen:?} is not a socket address like 127.0.0.1:8080 ({e})"),
        })?;
        let secret = |key: &'static str, var: &str, file: &Option<String>| -> Result<Option<Secret>, SettingsError> {
            match env(var).or_else(|| file.clone()) {
                None => Ok(None),
                Some(value) => Secret::new(value.trim())
                    .map(Some)
                    .ok_or(SettingsError::Invalid { key, reason: format!("{var} is set but empty") }),
            }
        };
        let workos = WorkosSettings {
            webhook_secret: secret("workos.webhook_secret", env::WEBHOOK_SECRET, &file.workos.webhook_secret)?,
            action_secret: secret("workos.action_secret", env::ACTION_SECRET, &file.workos.action_secret)?,
            client_id: env(env::CLIENT_ID).or(file.workos.client_id).filter(|s| !s.is_empty()),
            api_key: secret("workos.api_key", env::API_KEY, &file.workos.api_key)?,
            api_base_url: env(env::API_BASE_URL)
                .or(file.workos.api_base_url)
                .unwrap_or_else(|| DEFAULT_API_BASE_URL.to_string())
                .trim()
                .trim_end_matches('/')
                .to_string(),
        };
        let auth_defaults = AuthSettings::defaults(&workos.api_base_url);
        let auth = AuthSettings {
            issuers: file.auth.issuers.unwrap_or(auth_defaults.issuers),
            leeway: file.auth.leeway_secs.map_or(auth_defaults.leeway, Duration::from_secs),
            jwks_min_refetch: file
                .auth
                .jwks_min_refetch_ms
                .map_or(auth_defaults.jwks_min_refetch, Duration::from_millis),
            jwks_max_age: file.auth.jwks_max_age_secs.map_or(auth_defaults.jwks_max_age, Duration::from_secs),
            jwks_timeout: file.auth.jwks_timeout_ms.map_or(auth_defaults.jwks_timeout, Duration::from_millis),
        };

        let tolerance_secs = match env(env::WEBHOOK_TOLERANCE_SECS) {
            Some(v) => Some(parse_number::<u64>("webhook.tolerance_secs", &v)?),
            None => file.webhook.tolerance_secs,
        };
        let webhook = WebhookSettings {
            tolerance: tolerance_secs.map_or(WEBHOOK_TOLERANCE, Duration::from_secs),
            max_body_bytes: file.webhook.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
        };

        let defaults = WorkerSettings::default();
        let env_enabled = env(env::WORKER_ENABLED).map(|v| parse_bool("worker.enabled", &v)).transpose()?;
        let env_attempts =
            env(env::WORKER_MAX_ATTEMPTS).map(|v| parse_number::<u32>("worker.max_attempts", &v)).transpose()?;
        let ms = |v: Option<u64>, d: Duration| v.map_or(d, Duration::from_millis);
        let worker = WorkerSettings {
            enabled: !overrides.no_worker && env_enabled.or(file.worker.enabled).unwrap_or(defaults.enabled),
            batch_size: file.worker.batch_size.unwrap_or(defaults.batch_size),
            max_attempts: env_attempts.or(file.worker.max_attempts).unwrap_or(defaults.max_attempts),
            retry_base: ms(file.worker.retry_base_ms, defaults.retry_base),
            retry_max: ms(file.worker.retry_max_ms, defaults.retry_max),
            poll_interval: ms(file.worker.poll_interval_ms, defaults.poll_interval),
            max_processes_per_tenant: file.worker.max_processes_per_tenant.or(defaults.max_processes_per_tenant),
        };

        let keep_done_days = env(env::INBOX_KEEP_DONE_DAYS)
            .map(|v| parse_number::<u32>("inbox.keep_done_days", &v))
            .transpose()?
            .or(file.inbox.keep_done_days)
            .unwrap_or(DEFAULT_KEEP_DONE_DAYS);
        if (1..MIN_KEEP_DONE_DAYS).contains(&keep_done_days) {
            return Err(SettingsError::Invalid {
                key: "inbox.keep_done_days",
                reason: format!(
                    "must be 0 (keep done events for good) or at least {MIN_KEEP_DONE_DAYS}: WorkOS retries a webhook \
                     for up to about 3 days, and a retry of an event no longer in the inbox would be applied again"
                ),
            });
        }
        let inbox = InboxSettings { keep_done: (keep_done_days > 0).then(|| days(keep_done_days)) };

        let hd = HandlerSettings::default();
        let handler = HandlerSettings {
            path: overrides.handler.clone().or_else(|| env(env::HANDLER).map(PathBuf::from)).or(file.handler.path),
            event_deadline: ms(file.handler.event_deadline_ms, hd.event_deadline),
            memory_limit: file.handler.memory_limit_mib.map_or(hd.memory_limit, |mib| mib.saturating_mul(1024 * 1024)),
            max_memory_limit: file
                .handler
                .max_memory_limit_mib
                .map_or(hd.max_memory_limit, |mib| mib.saturating_mul(1024 * 1024)),
            max_calls: file.handler.max_calls.unwrap_or(hd.max_calls),
            max_document_bytes: file.handler.max_document_bytes.unwrap_or(hd.max_document_bytes),
            max_documents: file.handler.max_documents.or(hd.max_documents),
            instance_slots: env(env::INSTANCE_SLOTS)
                .map(|v| parse_number::<u32>("handler.instance_slots", &v))
                .transpose()?
                .or(file.handler.instance_slots)
                .or(hd.instance_slots),
        };

        let ad = ActionSettings::default();
        let verdict = |key: &'static str,
                       kind: &Option<String>,
                       message: &Option<String>,
                       default: ConfiguredVerdict| match kind.as_deref() {
            None => Ok(match (default, message) {
                (ConfiguredVerdict::Deny(_), Some(m)) => ConfiguredVerdict::Deny(m.clone()),
                (d, _) => d,
            }),
            Some("allow") => Ok(ConfiguredVerdict::Allow),
            Some("deny") => {
                Ok(ConfiguredVerdict::Deny(message.clone().unwrap_or_else(|| DEFAULT_FALLBACK_MESSAGE.to_string())))
            }
            Some(other) => {
                Err(SettingsError::Invalid { key, reason: format!("{other:?} is neither \"allow\" nor \"deny\"") })
            }
        };
        let actions = ActionSettings {
            deadline: ms(file.actions.deadline_ms, ad.deadline),
            fallback: verdict("actions.fallback", &file.actions.fallback, &file.actions.fallback_message, ad.fallback)?,
            no_handler: verdict(
                "actions.no_handler",
                &file.actions.no_handler,
                &file.actions.no_handler_message,
                ad.no_handler,
            )?,
            tolerance: file.actions.tolerance_secs.map_or(ad.tolerance, Duration::from_secs),
            max_concurrent: file.actions.max_concurrent.unwrap_or(ad.max_concurrent),
        };

        let qd = QuerySettings::default();
        let queries = QuerySettings {
            deadline: ms(file.queries.deadline_ms, qd.deadline),
            max_concurrent: file.queries.max_concurrent.unwrap_or(qd.max_concurrent),
            max_body_bytes: file.queries.max_body_bytes.unwrap_or(qd.max_body_bytes),
            max_result_bytes: file.queries.max_result_bytes.unwrap_or(qd.max_result_bytes),
        };

        let database = DatabaseUrl::parse(&database_url)?;
        let cache_dir = env(env::CACHE_DIR).map(PathBuf::from).or(file.modules.cache_dir).unwrap_or_else(|| {
            // Beside the SQLite file and named after it (`authkit.db`:
            // `authkit-cache`), so that databases in one directory do not
            // share a cache (each deletes the code its versions do not use);
            // `authkit-cache` in the working directory for Postgres.
            match &database {
                DatabaseUrl::Sqlite(url) => {
                    let path = url.trim_start_matches("sqlite:").trim_start_matches("//");
                    let path = Path::new(path.split('?').next().unwrap_or_default());
                    let stem = path.file_stem().and_then(|s| s.to_str()).filter(|s| !s.is_empty()).unwrap_or("authkit");
                    path.parent().map(Path::to_path_buf).unwrap_or_default().join(format!("{stem}-cache"))
                }
                DatabaseUrl::Postgres(_) => PathBuf::from("authkit-cache"),
            }
        });
        let modules = ModuleSettings {
            max_bytes: file.modules.max_bytes.unwrap_or(DEFAULT_MAX_MODULE_BYTES),
            cache_dir: (!cache_dir.as_os_str().is_empty()).then_some(cache_dir),
            poll_interval: ms(file.modules.poll_interval_ms, Duration::from_secs(1)),
            max_loaded_tenants: env(env::MAX_LOADED_TENANTS)
                .map(|v| parse_number::<usize>("modules.max_loaded_tenants", &v))
                .transpose()?
                .or(file.modules.max_loaded_tenants)
                .unwrap_or(DEFAULT_MAX_LOADED_TENANTS),
            max_loaded_code: env(env::MAX_LOADED_CODE_MIB)
                .map(|v| parse_number::<usize>("modules.max_loaded_code_mib", &v))
                .transpose()?
                .or(file.modules.max_loaded_code_mib)
                .unwrap_or(DEFAULT_MAX_LOADED_CODE_MIB)
                .saturating_mul(1024 * 1024),
        };

        let settings = Settings {
            database,
            listen,
            log: env(env::LOG).or(file.log).unwrap_or_else(|| "info".to_string()),
            workos,
            webhook,
            worker,
            inbox,
            handler,
            actions,
            queries,
            auth,
            modules,
            admin_token: secret("admin.token", env::ADMIN_TOKEN, &file.admin.token)?,
            shutdown_grace: file.shutdown_grace_secs.map_or(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs),
        };
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        let invalid = |key, reason: &str| Err(SettingsError::Invalid { key, reason: reason.to_string() });
        if self.webhook.tolerance.is_zero() {
            return invalid("webhook.tolerance_secs", "must be at least 1");
        }
        if self.webhook.max_body_bytes < 1024 {
            return invalid("webhook.max_body_bytes", "must be at least 1024");
        }
        if !(1..=512).contains(&self.worker.batch_size) {
            return invalid("worker.batch_size", "must be between 1 and 512");
        }
        if self.worker.max_attempts == 0 {
            return invalid("worker.max_attempts", "must be at least 1");
        }
        if self.worker.retry_base.is_zero() || self.worker.retry_max < self.worker.retry_base {
            return invalid("worker.retry_base_ms", "must be positive and at most worker.retry_max_ms");
        }
        if self.worker.poll_interval.is_zero() {
            return invalid("worker.poll_interval_ms", "must be positive");
        }
        if self.worker.max_processes_per_tenant.is_some_and(|n| !(1..=1024).contains(&n)) {
            return invalid("worker.max_processes_per_tenant", "must be between 1 and 1024");
        }
        if self.handler.event_deadline < Duration::from_millis(10)
            || self.handler.event_deadline > Duration::from_secs(300)
        {
            return invalid("handler.event_deadline_ms", "must be between 10 and 300000");
        }
        if !(1024 * 1024..=4096 * 1024 * 1024).contains(&self.handler.memory_limit) {
            return invalid("handler.memory_limit_mib", "must be between 1 and 4096");
        }
        if !(self.handler.memory_limit..=4096 * 1024 * 1024).contains(&self.handler.max_memory_limit) {
            return invalid(
                "handler.max_memory_limit_mib",
                "must be at least handler.memory_limit_mib and at most 4096",
            );
        }
        let slots = crate::runtime::MIN_INSTANCE_SLOTS..=crate::runtime::MAX_INSTANCE_SLOTS;
        if self.handler.instance_slots.is_some_and(|n| !slots.contains(&n)) {
            let reason = format!("must be between {} and {}", slots.start(), slots.end());
            return invalid("handler.instance_slots", &reason);
        }
        if self.actions.deadline < Duration::from_millis(10) || self.actions.deadline > Duration::from_secs(30) {
            return invalid("actions.deadline_ms", "must be between 10 and 30000");
        }
        if self.queries.deadline < Duration::from_millis(10) || self.queries.deadline > Duration::from_secs(60) {
            return invalid("queries.deadline_ms", "must be between 10 and 60000");
        }
        if !(1..=1024).contains(&self.queries.max_concurrent) {
            return invalid("queries.max_concurrent", "must be between 1 and 1024");
        }
        if !(2..=16 * 1024 * 1024).contains(&self.queries.max_body_bytes) {
            return invalid("queries.max_body_bytes", "must be between 2 and 16777216");
        }
        if !(1024..=64 * 1024 * 1024).contains(&self.queries.max_result_bytes) {
            return invalid("queries.max_result_bytes", "must be between 1024 and 67108864");
        }
        if self.actions.tolerance.is_zero() {
            return invalid("actions.tolerance_secs", "must be at least 1");
        }
        if !(1..=1024).contains(&self.actions.max_concurrent) {
            return invalid("actions.max_concurrent", "must be between 1 and 1024");
        }
        if self.handler.max_calls == 0 {
            return invalid("handler.max_calls", "must be at least 1");
        }
        if self.handler.max_documents == Some(0) {
            return invalid("handler.max_documents", "must be at least 1 (leave it out for no quota)");
        }
        if !(1024..=1024 * 1024 * 1024).contains(&self.modules.max_bytes) {
            return invalid("modules.max_bytes", "must be between 1024 and 1073741824");
        }
        if self.modules.poll_interval < Duration::from_millis(50) {
            return invalid("modules.poll_interval_ms", "must be at least 50");
        }
        if !(1..=1_000_000).contains(&self.modules.max_loaded_tenants) {
            return invalid("modules.max_loaded_tenants", "must be between 1 and 1000000");
        }
        if !(1 << 20..=1 << 40).contains(&self.modules.max_loaded_code) {
            return invalid("modules.max_loaded_code_mib", "must be between 1 and 1048576");
        }
        let base = &self.workos.api_base_url;
        if !(base.starts_with("https://") || base.starts_with("http://")) || base.len() <= "https://".len() {
            return invalid("workos.api_base_url", "must be an http:// or https:// URL, like https://api.workos.com");
        }
        if self.auth.issuers.is_empty() || self.auth.issuers.iter().any(|i| i.trim().is_empty()) {
            return invalid("auth.issuers", "must name at least one issuer, and none may be empty");
        }
        if self.auth.leeway > Duration::from_secs(600) {
            return invalid("auth.leeway_secs", "must be at most 600");
        }
        if self.auth.jwks_min_refetch < Duration::from_millis(10) {
            return invalid("auth.jwks_min_refetch_ms", "must be at least 10");
        }
        if self.auth.jwks_max_age < Duration::from_secs(1) {
            return invalid("auth.jwks_max_age_secs", "must be at least 1");
        }
        if !(Duration::from_millis(10)..=Duration::from_secs(60)).contains(&self.auth.jwks_timeout) {
            return invalid("auth.jwks_timeout_ms", "must be between 10 and 60000");
        }
        if !(1024..=16 * 1024 * 1024).contains(&self.handler.max_document_bytes) {
            return invalid("handler.max_document_bytes", "must be between 1024 and 16777216");
        }
        Ok(())
    }
}

fn read_file(path: &Path) -> Result<FileSettings, SettingsError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| SettingsError::ReadFile { path: path.to_path_buf(), source })?;
    toml::from_str(&text)
        .map_err(|source| SettingsError::ParseFile { path: path.to_path_buf(), source: Box::new(source) })
}

fn parse_number<T: std::str::FromStr>(key: &'static str, value: &str) -> Result<T, SettingsError> {
    value.trim().parse().map_err(|_| SettingsError::Invalid { key, reason: format!("{value:?} is not a number") })
}

fn parse_bool(key: &'static str, value: &str) -> Result<bool, SettingsError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(SettingsError::Invalid { key, reason: format!("{value:?} is not true or false") }),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn load(overrides: Overrides, vars: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Settings::load_with(&overrides, |k| vars.get(k).cloned())
    }

    #[test]
    fn with_nothing_configured_the_defaults_are_the_embedded_database_on_loopback() {
        let s = load(Overrides::default(), &[]).unwrap();
        assert_eq!(s.database, DatabaseUrl::Sqlite("sqlite://authkit.db".into()));
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert!(s.workos.webhook_secret.is_none());
        assert_eq!(s.webhook.tolerance, Duration::from_secs(180));
        assert_eq!(s.webhook.max_body_bytes, 1024 * 1024);
        assert!(s.worker.enabled);
        assert_eq!((s.modules.max_loaded_tenants, s.modules.max_loaded_code), (2000, 1 << 30));
        assert_eq!(s.modules.cache_dir, Some(PathBuf::from("authkit-cache")));
    }

    #[test]
    fn each_sqlite_file_gets_a_compiled_code_cache_of_its_own() {
        let cache = |url: &str| {
            let o = Overrides { database_url: Some(url.into()), ..Default::default() };
            load(o, &[]).unwrap().modules.cache_dir.unwrap()
        };
        assert_eq!(cache("sqlite:///var/lib/authkit/authkit.db"), PathBuf::from("/var/lib/authkit/authkit-cache"));
        assert_eq!(cache("sqlite://data/staging.db?mode=rwc"), PathBuf::from("data/staging-cache"));
        assert_eq!(cache("sqlite:prod.sqlite3"), PathBuf::from("prod-cache"));
        assert_eq!(cache("postgres://localhost/app"), PathBuf::from("authkit-cache"));
    }

    #[test]
    fn flags_beat_the_environment_which_beats_the_file() {
        let dir = tempdir();
        let path = dir.join("authkit.toml");
        std::fs::write(
            &path,
            "database_url = \"sqlite://file.db\"\nlisten = \"127.0.0.1:1\"\n[workos]\nwebhook_secret = \"from_file\"\n[webhook]\ntolerance_secs = 60\n",
        )
        .unwrap();
        let from_file = load(Overrides { config: Some(path.clone()), ..Default::default() }, &[]).unwrap();
        assert_eq!(from_file.database.as_str(), "sqlite://file.db");
        assert_eq!(from_file.workos.webhook_secret.unwrap().expose(), "from_file");
        assert_eq!(from_file.webhook.tolerance, Duration::from_secs(60));

        let env = [
            ("DATABASE_URL", "postgres://u:pw@db/x"),
            ("WORKOS_WEBHOOK_SECRET", "from_env"),
            ("AUTHKIT_CONFIG", path.to_str().unwrap()),
        ];
        let from_env = load(Overrides::default(), &env).unwrap();
        assert_eq!(from_env.database, DatabaseUrl::Postgres("postgres://u:pw@db/x".into()));
        assert_eq!(from_env.workos.webhook_secret.unwrap().expose(), "from_env");
        assert_eq!(from_env.listen.to_string(), "127.0.0.1:1");

        let flags = Overrides {
            listen: Some("0.0.0.0:9".into()),
            database_url: Some("sqlite://flag.db".into()),
            ..Default::default()
        };
        let from_flags = load(flags, &env).unwrap();
        assert_eq!(from_flags.listen.to_string(), "0.0.0.0:9");
        assert_eq!(from_flags.database.as_str(), "sqlite://flag.db");
    }

    #[test]
    fn bad_values_are_refused_with_the_setting_named() {
        let err = |o: Overrides, vars: &[(&str, &str)]| load(o, vars).unwrap_err().to_string();
        assert!(
            err(Overrides { database_url: Some("mysql://x".into()), ..Default::default() }, &[])
                .contains("database_url")
        );
        assert!(err(Overrides { listen: Some("localhost".into()), ..Default::default() }, &[]).contains("listen"));
        assert!(
            err(Overrides::default(), &[("WORKOS_WEBHOOK_SECRET", " ")])
                .contains("WORKOS_WEBHOOK_SECRET is set but empty")
        );
        assert!(err(Overrides::default(), &[("AUTHKIT_WEBHOOK_TOLERANCE_SECS", "0")]).contains("tolerance"));
        assert!(err(Overrides::default(), &[("AUTHKIT_WORKER_ENABLED", "maybe")]).contains("worker.enabled"));
        for slots in ["0", "15", "10001", "many"] {
            assert!(err(Overrides::default(), &[("AUTHKIT_INSTANCE_SLOTS", slots)]).contains("handler.instance_slots"));
        }
        for loaded in ["0", "1000001", "-1", "all"] {
            let e = err(Overrides::default(), &[("AUTHKIT_MAX_LOADED_TENANTS", loaded)]);
            assert!(e.contains("modules.max_loaded_tenants"), "{loaded}: {e}");
        }
        for mib in ["0", "1048577", "-1", "lots"] {
            let e = err(Overrides::default(), &[("AUTHKIT_MAX_LOADED_CODE_MIB", mib)]);
            assert!(e.contains("modules.max_loaded_code_mib"), "{mib}: {e}");
        }
        let dir = tempdir();
        let path = dir.join("bad.toml");
        std::fs::write(&path, "listn = \"x\"").unwrap();
        assert!(err(Overrides { config: Some(path), ..Default::default() }, &[]).contains("not valid"));
        assert!(
            err(Overrides { config: Some(dir.join("missing.toml")), ..Default::default() }, &[])
                .contains("cannot read")
        );
    }

    #[test]
    fn access_tokens_are_checked_against_the_workos_issuers_unless_configured() {
        let defaults = load(Overrides::default(), &[]).unwrap();
        assert_eq!(defaults.workos.api_base_url, "https://api.workos.com");
        assert_eq!(
            defaults.auth.issuers_for("client_1"),
            ["https://api.workos.com/", "https://api.workos.com/user_management/client_1"]
        );
        assert_eq!(defaults.auth.leeway, Duration::from_secs(30));
        let local = load(Overrides::default(), &[("WORKOS_API_BASE_URL", "http://127.0.0.1:9/")]).unwrap();
        assert_eq!(local.workos.api_base_url, "http://127.0.0.1:9");
        assert_eq!(local.auth.issuers_for("c")[1], "http://127.0.0.1:9/user_management/c");

        let dir = tempdir();
        let path = dir.join("auth.toml");
        std::fs::write(&path, "[auth]\nissuers = [\"https://auth.example.com\"]\nleeway_secs = 5\n").unwrap();
        let custom = load(Overrides { config: Some(path.clone()), ..Default::default() }, &[]).unwrap();
        assert_eq!(custom.auth.issuers_for("c"), ["https://auth.example.com"]);
        assert_eq!(custom.auth.leeway, Duration::from_secs(5));

        let err = |vars: &[(&str, &str)]| load(Overrides::default(), vars).unwrap_err().to_string();
        assert!(err(&[("WORKOS_API_BASE_URL", "api.workos.com")]).contains("workos.api_base_url"));
        std::fs::write(&path, "[auth]\nissuers = []\n").unwrap();
        let empty = load(Overrides { config: Some(path), ..Default::default() }, &[]).unwrap_err().to_string();
        assert!(empty.contains("auth.issuers"), "{empty}");
    }

    #[test]
    fn the_inbox_keeps_done_events_30_days_unless_told_otherwise() {
        let day = Duration::from_secs(24 * 60 * 60);
        assert_eq!(load(Overrides::default(), &[]).unwrap().inbox.keep_done, Some(30 * day));
        let from_env = |days: &str| load(Overrides::default(), &[("AUTHKIT_INBOX_KEEP_DONE_DAYS", days)]);
        assert_eq!(from_env("90").unwrap().inbox.keep_done, Some(90 * day));
        assert_eq!(from_env("4").unwrap().inbox.keep_done, Some(4 * day));
        assert_eq!(from_env("0").unwrap().inbox.keep_done, None, "0 keeps them for good");
        for refused in ["1", "3", "-1", "soon"] {
            let e = from_env(refused).unwrap_err().to_string();
            assert!(e.contains("inbox.keep_done_days"), "{refused}: {e}");
        }
        assert!(from_env("2").unwrap_err().to_string().contains("3 days"));

        let dir = tempdir();
        let path = dir.join("inbox.toml");
        std::fs::write(&path, "[inbox]\nkeep_done_days = 45\n").unwrap();
        let config = Overrides { config: Some(path.clone()), ..Default::default() };
        assert_eq!(load(config.clone(), &[]).unwrap().inbox.keep_done, Some(45 * day));
        // The environment wins over the file, as for every other setting.
        let both = load(config, &[("AUTHKIT_INBOX_KEEP_DONE_DAYS", "0")]).unwrap();
        assert_eq!(both.inbox.keep_done, None);
        std::fs::write(&path, "[inbox]\nkeep_days = 45\n").unwrap();
        let unknown = load(Overrides { config: Some(path), ..Default::default() }, &[]).unwrap_err().to_string();
        assert!(unknown.contains("keep_days"), "{unknown}");
    }

    #[test]
    fn handler_and_actions_settings_come_from_the_file_and_are_checked() {
        let defaults = load(Overrides::default(), &[]).unwrap();
        assert_eq!(defaults.actions.fallback, ConfiguredVerdict::Deny(DEFAULT_FALLBACK_MESSAGE.into()));
        assert_eq!(defaults.actions.no_handler, ConfiguredVerdict::Allow);
        assert_eq!(defaults.actions.deadline, Duration::from_secs(1));
        assert_eq!(defaults.handler.memory_limit, 64 * 1024 * 1024);

        let dir = tempdir();
        let file = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            load(Overrides { config: Some(path), ..Default::default() }, &[])
        };
        let s = file(
            "ok.toml",
            "[actions]\nfallback = \"allow\"\nno_handler = \"deny\"\nno_handler_message = \"not yet\"\ndeadline_ms = 250\n\
             [handler]\nmemory_limit_mib = 32\nevent_deadline_ms = 800\ninstance_slots = 2500\n\
             [modules]\nmax_loaded_tenants = 300\nmax_loaded_code_mib = 64\n\
             [worker]\nmax_processes_per_tenant = 2\n",
        )
        .unwrap();
        assert_eq!(s.worker.max_processes_per_tenant, Some(2));
        assert_eq!(defaults.worker.max_processes_per_tenant, None);
        assert_eq!(s.handler.instance_slots, Some(2500));
        assert_eq!((s.modules.max_loaded_tenants, s.modules.max_loaded_code), (300, 64 << 20));
        assert_eq!(s.actions.fallback, ConfiguredVerdict::Allow);
        assert_eq!(s.actions.no_handler, ConfiguredVerdict::Deny("not yet".into()));
        assert_eq!(s.actions.deadline, Duration::from_millis(250));
        assert_eq!((s.handler.memory_limit, s.handler.event_deadline), (32 * 1024 * 1024, Duration::from_millis(800)));
        let deny_message = file("msg.toml", "[actions]\nfallback_message = \"down for maintenance\"\n").unwrap();
        assert_eq!(deny_message.actions.fallback, ConfiguredVerdict::Deny("down for maintenance".into()));

        let err = |name: &str, text: &str| file(name, text).unwrap_err().to_string();
        assert!(err("v.toml", "[actions]\nfallback = \"maybe\"\n").contains("actions.fallback"));
        assert!(err("d.toml", "[actions]\ndeadline_ms = 0\n").contains("actions.deadline_ms"));
        assert!(err("m.toml", "[handler]\nmemory_limit_mib = 0\n").contains("handler.memory_limit_mib"));
        let low_ceiling = "[handler]\nmemory_limit_mib = 100\nmax_memory_limit_mib = 50\n";
        assert!(err("m.toml", low_ceiling).contains("handler.max_memory_limit_mib"));
        assert!(err("c.toml", "[handler]\nmax_calls = 0\n").contains("handler.max_calls"));
        assert!(err("c.toml", "[handler]\nmax_documents = 0\n").contains("handler.max_documents"));
        assert!(err("w.toml", "[worker]\nmax_processes_per_tenant = 0\n").contains("worker.max_processes_per_tenant"));
    }

    #[test]
    fn a_postgres_password_never_prints() {
        let url = DatabaseUrl::parse("postgres://user:hunter2@db.internal:5432/app").unwrap();
        assert_eq!(format!("{url:?}"), "postgres://…@db.internal:5432/app");
    }

    fn tempdir() -> PathBuf {
        let dir =
            std::env::temp_dir().join(format!("authkit-settings-{}-{}", std::process::id(), crate::clock::now_ms()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}

//! The commands that manage a running host through its admin API: `deploy`,
//! `modules` and `tenants`.
//!
//! Owns: the HTTP calls to `/admin/...`, and what they print (a line or a table
//! for people, JSON with `--json`). Must not: open the database: a deployment
//! goes through the server that validates, stores and swaps it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

use crate::clock;
use crate::runtime::ModuleLimits;
use crate::settings::env;

/// Where the host is and how to authenticate.
#[derive(Debug, Args)]
pub struct Remote {
    /// The host's base URL (also AUTHKIT_URL; default http://127.0.0.1:8080).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// The admin token (also AUTHKIT_ADMIN_TOKEN).
    #[arg(long, value_name = "TOKEN")]
    token: Option<String>,
    /// Print the API's JSON instead of text.
    #[arg(long)]
    json: bool,
    /// The tenant whose versions to manage (also AUTHKIT_TENANT; default: `default`).
    #[arg(long, value_name = "SLUG")]
    tenant: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum TenantsCommand {
    /// Create a tenant. Its routes are /t/SLUG/workos/webhook and /t/SLUG/workos/action.
    Create {
        slug: String,
        #[command(flatten)]
        settings: TenantArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// List the tenants.
    List(Remote),
    /// Show a tenant's settings (never its secrets).
    Show {
        slug: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Change a tenant's settings; what is not given stays as it is.
    Update {
        slug: String,
        #[command(flatten)]
        settings: TenantArgs,
        #[command(flatten)]
        remote: Remote,
    },
    /// Delete a tenant and all of its data.
    Delete {
        slug: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Create an admin token that manages only this tenant; it is shown once.
    Token {
        slug: String,
        #[command(flatten)]
        remote: Remote,
    },
    /// Revoke one of the tenant's admin tokens.
    RevokeToken {
        slug: String,
        id: String,
        #[command(flatten)]
        remote: Remote,
    },
}

/// A tenant's settings as flags.
#[derive(Debug, Args)]
pub struct TenantArgs {
    /// The webhook signing secret from the WorkOS dashboard.
    #[arg(long, value_name = "SECRET")]
    webhook_secret: Option<String>,
    /// The Actions signing secret from the WorkOS dashboard.
    #[arg(long, value_name = "SECRET")]
    action_secret: Option<String>,
    #[arg(long, value_name = "ID")]
    client_id: Option<String>,
    #[arg(long, value_name = "MS")]
    event_deadline_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    action_deadline_ms: Option<u64>,
    #[arg(long, value_name = "MS")]
    query_deadline_ms: Option<u64>,
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<usize>,
    #[arg(long, value_name = "N")]
    max_calls: Option<u32>,
    /// The tenant's document quota (all its tables together).
    #[arg(long, value_name = "N")]
    max_documents: Option<u64>,
    /// Actions handler calls the tenant may have running at once.
    #[arg(long, value_name = "N")]
    max_concurrent_actions: Option<usize>,
    /// Queries the tenant may have running at once.
    #[arg(long, value_name = "N")]
    max_concurrent_queries: Option<usize>,
    /// Host processes (on Postgres) that may apply the tenant's events at the same time.
    #[arg(long, value_name = "N")]
    max_worker_processes: Option<usize>,
    /// The verdict when the handler fails: allow or deny.
    #[arg(long, value_name = "VERDICT")]
    fallback: Option<String>,
    #[arg(long, value_name = "TEXT")]
    fallback_message: Option<String>,
    /// The verdict when no action handler is deployed: allow or deny.
    #[arg(long, value_name = "VERDICT")]
    no_handler: Option<String>,
    #[arg(long, value_name = "TEXT")]
    no_handler_message: Option<String>,
}

impl TenantArgs {
    /// The fields to send, and `options` merged over `current` (the API replaces options as a whole).
    fn body(&self, current: &Value) -> Value {
        let mut body = serde_json::Map::new();
        for (key, value) in [
            ("webhook_secret", &self.webhook_secret),
            ("action_secret", &self.action_secret),
            ("client_id", &self.client_id),
        ] {
            if let Some(v) = value {
                body.insert(key.into(), json!(v));
            }
        }
        let mut options = current.as_object().cloned().unwrap_or_default();
        let mut set = |key: &str, v: Option<Value>| {
            if let Some(v) = v {
                options.insert(key.into(), v);
            }
        };
        set("event_deadline_ms", self.event_deadline_ms.map(|v| json!(v)));
        set("action_deadline_ms", self.action_deadline_ms.map(|v| json!(v)));
        set("query_deadline_ms", self.query_deadline_ms.map(|v| json!(v)));
        set("memory_limit_bytes", self.memory_limit_mib.map(|v| json!(v.saturating_mul(1024 * 1024))));
        set("max_calls", self.max_calls.map(|v| json!(v)));
        set("max_documents", self.max_documents.map(|v| json!(v)));
        set("max_concurrent_actions", self.max_concurrent_actions.map(|v| json!(v)));
        set("max_concurrent_queries", self.max_concurrent_queries.map(|v| json!(v)));
        set("max_worker_processes", self.max_worker_processes.map(|v| json!(v)));
        set("fallback", verdict(&self.fallback, &self.fallback_message));
        set("no_handler", verdict(&self.no_handler, &self.no_handler_message));
        body.insert("options".into(), Value::Object(options));
        Value::Object(body)
    }
}

fn verdict(kind: &Option<String>, message: &Option<String>) -> Option<Value> {
    let kind = kind.clone().or_else(|| message.as_ref().map(|_| "deny".to_string()))?;
    let mut v = json!({ "verdict": kind });
    if let Some(m) = message {
        v["message"] = json!(m);
    }
    Some(v)
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The handler component (.wasm).
    file: PathBuf,
    /// Store and validate the version without making it live.
    #[arg(long)]
    no_activate: bool,
    #[command(flatten)]
    limits: ModuleLimitArgs,
    #[command(flatten)]
    remote: Remote,
}

/// Limits a version sets for itself over its tenant's (interpreted guests may
/// need more memory or time than the tenant's default).
#[derive(Debug, Default, Args)]
pub struct ModuleLimitArgs {
    /// This version's memory cap, up to the host's handler.max_memory_limit_mib.
    #[arg(long, value_name = "MIB")]
    memory_limit_mib: Option<usize>,
    /// This version's event deadline.
    #[arg(long = "event-deadline-ms", value_name = "MS")]
    module_event_deadline_ms: Option<u64>,
    /// This version's Actions deadline.
    #[arg(long = "action-deadline-ms", value_name = "MS")]
    module_action_deadline_ms: Option<u64>,
    /// This version's query deadline.
    #[arg(long = "query-deadline-ms", value_name = "MS")]
    module_query_deadline_ms: Option<u64>,
}

impl ModuleLimitArgs {
    pub fn limits(&self) -> ModuleLimits {
        ModuleLimits {
            memory_limit_bytes: self.memory_limit_mib.map(|mib| mib.saturating_mul(1024 * 1024)),
            event_deadline_ms: self.module_event_deadline_ms,
            action_deadline_ms: self.module_action_deadline_ms,
            query_deadline_ms: self.module_query_deadline_ms,
            // The server decides this from the token that uploads.
            held_to_tenant: false,
        }
    }

    /// As the upload's query parameters (`&name=value` for each one set).
    fn query(&self) -> String {
        [
            ("memory_limit_mib", self.memory_limit_mib.map(|v| v as u64)),
            ("event_deadline_ms", self.module_event_deadline_ms),
            ("action_deadline_ms", self.module_action_deadline_ms),
            ("query_deadline_ms", self.module_query_deadline_ms),
        ]
        .into_iter()
        .filter_map(|(name, v)| v.map(|v| format!("&{name}={v}")))
        .collect()
    }
}

#[derive(Debug, Subcommand)]
pub enum ModulesCommand {
    /// List the stored versions.
    List(Remote),
    /// Make version N live.
    Activate {
        version: i64,
        #[command(flatten)]
        remote: Remote,
    },
    /// Make the previously active version live again.
    Rollback(Remote),
    /// Delete an inactive version.
    Delete {
        version: i64,
        #[command(flatten)]
        remote: Remote,
    },
}

struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    json: bool,
    /// `/t/{slug}`, or empty for the default tenant.
    prefix: String,
}

impl Client {
    fn new(remote: Remote) -> anyhow::Result<Client> {
        let base =
            remote.url.or_else(|| std::env::var(env::URL).ok()).unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let token = remote.token.or_else(|| std::env::var(env::ADMIN_TOKEN).ok()).with_context(|| {
            format!("no admin token: pass --token or set {} (the server's admin token)", env::ADMIN_TOKEN)
        })?;
        let tenant = remote.tenant.or_else(|| std::env::var(env::TENANT).ok()).filter(|t| t != "default");
        Ok(Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token,
            json: remote.json,
            prefix: tenant.map(|t| format!("/t/{t}")).unwrap_or_default(),
        })
    }

    /// Sends the request; a non-2xx answer becomes an error with the server's message.
    async fn send(&self, request: reqwest::RequestBuilder) -> anyhow::Result<Value> {
        let response =
            request.bearer_auth(&self.token).send().await.with_context(|| format!("cannot reach {}", self.base))?;
        let status = response.status();
        let body = response.bytes().await.context("the answer could not be read")?;
        let value: Value =
            if body.is_empty() { Value::Null } else { serde_json::from_slice(&body).unwrap_or(Value::Null) };
        if !status.is_success() {
            let message = value["error"]["message"].as_str().map(str::to_string).unwrap_or_else(|| {
                format!("HTTP {status}: {}", String::from_utf8_lossy(&body).chars().take(300).collect::<String>())
            });
            let code = value["error"]["code"].as_str().unwrap_or("http_error");
            bail!("{message} ({code})");
        }
        Ok(value)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A route of the chosen tenant (`--tenant`).
    fn tenant_url(&self, path: &str) -> String {
        format!("{}{}{path}", self.base, self.prefix)
    }
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(&args.file).await.with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = Client::new(args.remote)?;
    let activate = !args.no_activate;
    let request = client
        .http
        .post(client.tenant_url(&format!("/admin/modules?activate={activate}{}", args.limits.query())))
        .header("content-type", "application/wasm")
        .body(bytes);
    let uploaded = client.send(request).await?;
    if client.json {
        println!("{uploaded}");
        return Ok(());
    }
    let version = &uploaded["version"];
    let what = match (uploaded["created"].as_bool(), activate) {
        (Some(true), true) => "uploaded and live",
        (Some(true), false) => "uploaded (not active: `authkit-host modules activate` makes it live)",
        (_, true) => "already stored (same bytes); it is live",
        (_, false) => "already stored (same bytes)",
    };
    println!("version {version} {what}: {}", describe(&uploaded));
    Ok(())
}

pub async fn modules(cmd: ModulesCommand) -> anyhow::Result<()> {
    match cmd {
        ModulesCommand::List(remote) => {
            let client = Client::new(remote)?;
            let listed = client.send(client.http.get(client.tenant_url("/admin/modules"))).await?;
            let versions = listed["versions"].as_array().cloned().unwrap_or_default();
            let mut out = std::io::stdout().lock();
            if client.json {
                for v in versions {
                    writeln!(out, "{v}")?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<8} {:<7} {:<16} {:>10} {:<32} {:<6} {:<24} OWN LIMITS",
                "VERSION", "ACTIVE", "SHA256", "SIZE", "EXPORTS", "WIT", "CREATED"
            )?;
            for v in versions {
                writeln!(
                    out,
                    "{:<8} {:<7} {:<16} {:>10} {:<32} {:<6} {:<24} {}",
                    v["version"].to_string(),
                    if v["active"].as_bool() == Some(true) { "*" } else { "" },
                    v["hash"].as_str().unwrap_or("").get(..16).unwrap_or(""),
                    v["size"].to_string(),
                    exports(&v),
                    v["wit_version"].as_str().unwrap_or(""),
                    v["created_at"].as_i64().map(clock::format_ms).unwrap_or_default(),
                    own_limits(&v).unwrap_or_else(|| "-".into()),
                )?;
            }
        }
        ModulesCommand::Activate { version, remote } => {
            let client = Client::new(remote)?;
            let info =
                client.send(client.http.post(client.tenant_url(&format!("/admin/modules/{version}/activate")))).await?;
            print_live(&client, &info);
        }
        ModulesCommand::Rollback(remote) => {
            let client = Client::new(remote)?;
            let info = client.send(client.http.post(client.tenant_url("/admin/modules/rollback"))).await?;
            print_live(&client, &info);
        }
        ModulesCommand::Delete { version, remote } => {
            let client = Client::new(remote)?;
            client.send(client.http.delete(client.tenant_url(&format!("/admin/modules/{version}")))).await?;
            if client.json {
                println!("{}", serde_json::json!({ "deleted": version }));
            } else {
                println!("version {version} deleted");
            }
        }
    }
    Ok(())
}

pub async fn tenants(cmd: TenantsCommand) -> anyhow::Result<()> {
    match cmd {
        TenantsCommand::Create { slug, settings, remote } => {
            let client = Client::new(remote)?;
            let mut body = settings.body(&json!({}));
            body["slug"] = json!(slug);
            let created = client.send(client.http.post(client.url("/admin/tenants")).json(&body)).await?;
            print_tenant(&client, &created, "created");
        }
        TenantsCommand::List(remote) => {
            let client = Client::new(remote)?;
            let listed = client.send(client.http.get(client.url("/admin/tenants"))).await?;
            let tenants = listed["tenants"].as_array().cloned().unwrap_or_default();
            let mut out = std::io::stdout().lock();
            if client.json {
                for t in tenants {
                    writeln!(out, "{t}")?;
                }
                return Ok(());
            }
            writeln!(
                out,
                "{:<24} {:<8} {:<8} {:<7} {:<24} WEBHOOK ROUTE",
                "SLUG", "WEBHOOK", "ACTION", "LOADED", "CLIENT ID"
            )?;
            for t in tenants {
                let yes = |k: &str, word: &'static str| if t[k].as_bool() == Some(true) { word } else { "-" };
                writeln!(
                    out,
                    "{:<24} {:<8} {:<8} {:<7} {:<24} {}",
                    t["slug"].as_str().unwrap_or(""),
                    yes("webhook_secret_set", "set"),
                    yes("action_secret_set", "set"),
                    yes("loaded", "yes"),
                    super::cell(t["client_id"].as_str().unwrap_or("-")),
                    t["routes"]["webhook"].as_str().unwrap_or(""),
                )?;
            }
            let loaded = &listed["loaded"];
            let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
            let (hits, loads) = (loaded["hits"].as_u64().unwrap_or(0), loaded["loads"].as_u64().unwrap_or(0));
            let rate = if hits + loads == 0 {
                "-".to_string()
            } else {
                format!("{:.0}%", 100.0 * hits as f64 / (hits + loads) as f64)
            };
            writeln!(
                out,
                "\n{} of at most {} tenants loaded, {:.1} of at most {:.0} MiB of compiled code; {} closed to make room since the start\n\
                 uses since the start that found their tenant loaded: {hits}, that loaded it: {loads} (hit rate {rate})",
                loaded["open"],
                loaded["max"],
                mib(&loaded["code_bytes"]),
                mib(&loaded["max_code_bytes"]),
                loaded["evicted"]
            )?;
        }
        TenantsCommand::Show { slug, remote } => {
            let client = Client::new(remote)?;
            let shown = client.send(client.http.get(client.url(&format!("/admin/tenants/{slug}")))).await?;
            println!("{}", if client.json { shown.to_string() } else { serde_json::to_string_pretty(&shown)? });
        }
        TenantsCommand::Update { slug, settings, remote } => {
            let client = Client::new(remote)?;
            let url = client.url(&format!("/admin/tenants/{slug}"));
            let current = client.send(client.http.get(&url)).await?;
            let body = settings.body(&current["options"]);
            let updated = client.send(client.http.patch(&url).json(&body)).await?;
            print_tenant(&client, &updated, "updated");
        }
        TenantsCommand::Delete { slug, remote } => {
            let client = Client::new(remote)?;
            client.send(client.http.delete(client.url(&format!("/admin/tenants/{slug}")))).await?;
            if client.json {
                println!("{}", json!({ "deleted": slug }));
            } else {
                println!("tenant {slug} deleted with all of its data");
            }
        }
        TenantsCommand::Token { slug, remote } => {
            let client = Client::new(remote)?;
            let created = client.send(client.http.post(client.url(&format!("/admin/tenants/{slug}/tokens")))).await?;
            if client.json {
                println!("{created}");
            } else {
                println!(
                    "token {} for tenant {slug} (shown only now; keep it safe):",
                    created["id"].as_str().unwrap_or("")
                );
                println!("{}", created["token"].as_str().unwrap_or(""));
            }
        }
        TenantsCommand::RevokeToken { slug, id, remote } => {
            let client = Client::new(remote)?;
            client.send(client.http.delete(client.url(&format!("/admin/tenants/{slug}/tokens/{id}")))).await?;
            if client.json {
                println!("{}", json!({ "revoked": id }));
            } else {
                println!("token {id} of tenant {slug} revoked");
            }
        }
    }
    Ok(())
}

fn print_tenant(client: &Client, tenant: &Value, what: &str) {
    if client.json {
        println!("{tenant}");
    } else {
        println!(
            "tenant {} {what}: webhook {}, action {}",
            tenant["slug"].as_str().unwrap_or(""),
            tenant["routes"]["webhook"].as_str().unwrap_or(""),
            tenant["routes"]["action"].as_str().unwrap_or("")
        );
    }
}

fn print_live(client: &Client, info: &Value) {
    if client.json {
        println!("{info}");
    } else {
        println!("version {} is live: {}", info["version"], describe(info));
    }
}

/// `sha256 1a2b3c4d…, 41.2 KiB, exports events, actions`
pub fn describe(info: &Value) -> String {
    let limits = own_limits(info).map(|l| format!(", own limits {l}")).unwrap_or_default();
    format!(
        "sha256 {}…, {:.1} KiB, exports {}{limits}",
        info["hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
        info["size"].as_f64().unwrap_or(0.0) / 1024.0,
        exports(info)
    )
}

/// The limits a version sets for itself, `name=value` separated by spaces; `None` if it sets none.
fn own_limits(info: &Value) -> Option<String> {
    let set = info["limits"].as_object().filter(|set| !set.is_empty())?;
    Some(set.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "))
}

fn exports(info: &Value) -> String {
    let names: Vec<&str> =
        info["exports"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    names.join(", ")
}

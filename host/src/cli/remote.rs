//! The commands that manage a running host through its admin API: `deploy`
//! and `modules`.
//!
//! Owns: the HTTP calls to `/admin/...`, and what they print (a line or a table
//! for people, JSON with `--json`). Must not: open the database: a deployment
//! goes through the server that validates, stores and swaps it.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use serde_json::Value;

use crate::clock;
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
}

#[derive(Debug, Args)]
pub struct DeployArgs {
    /// The handler component (.wasm).
    file: PathBuf,
    /// Store and validate the version without making it live.
    #[arg(long)]
    no_activate: bool,
    #[command(flatten)]
    remote: Remote,
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
}

impl Client {
    fn new(remote: Remote) -> anyhow::Result<Client> {
        let base =
            remote.url.or_else(|| std::env::var(env::URL).ok()).unwrap_or_else(|| "http://127.0.0.1:8080".to_string());
        let token = remote.token.or_else(|| std::env::var(env::ADMIN_TOKEN).ok()).with_context(|| {
            format!("no admin token: pass --token or set {} (the server's admin token)", env::ADMIN_TOKEN)
        })?;
        Ok(Client {
            http: reqwest::Client::new(),
            base: base.trim_end_matches('/').to_string(),
            token,
            json: remote.json,
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
}

pub async fn deploy(args: DeployArgs) -> anyhow::Result<()> {
    let bytes = tokio::fs::read(&args.file).await.with_context(|| format!("cannot read {}", args.file.display()))?;
    let client = Client::new(args.remote)?;
    let activate = !args.no_activate;
    let request = client
        .http
        .post(client.url(&format!("/admin/modules?activate={activate}")))
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
            let listed = client.send(client.http.get(client.url("/admin/modules"))).await?;
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
                "{:<8} {:<7} {:<16} {:>10} {:<22} {:<6} CREATED",
                "VERSION", "ACTIVE", "SHA256", "SIZE", "EXPORTS", "WIT"
            )?;
            for v in versions {
                writeln!(
                    out,
                    "{:<8} {:<7} {:<16} {:>10} {:<22} {:<6} {}",
                    v["version"].to_string(),
                    if v["active"].as_bool() == Some(true) { "*" } else { "" },
                    v["hash"].as_str().unwrap_or("").get(..16).unwrap_or(""),
                    v["size"].to_string(),
                    exports(&v),
                    v["wit_version"].as_str().unwrap_or(""),
                    v["created_at"].as_i64().map(clock::format_ms).unwrap_or_default(),
                )?;
            }
        }
        ModulesCommand::Activate { version, remote } => {
            let client = Client::new(remote)?;
            let info = client.send(client.http.post(client.url(&format!("/admin/modules/{version}/activate")))).await?;
            print_live(&client, &info);
        }
        ModulesCommand::Rollback(remote) => {
            let client = Client::new(remote)?;
            let info = client.send(client.http.post(client.url("/admin/modules/rollback"))).await?;
            print_live(&client, &info);
        }
        ModulesCommand::Delete { version, remote } => {
            let client = Client::new(remote)?;
            client.send(client.http.delete(client.url(&format!("/admin/modules/{version}")))).await?;
            if client.json {
                println!("{}", serde_json::json!({ "deleted": version }));
            } else {
                println!("version {version} deleted");
            }
        }
    }
    Ok(())
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
    format!(
        "sha256 {}…, {:.1} KiB, exports {}",
        info["hash"].as_str().unwrap_or("").get(..12).unwrap_or(""),
        info["size"].as_f64().unwrap_or(0.0) / 1024.0,
        exports(info)
    )
}

fn exports(info: &Value) -> String {
    let names: Vec<&str> =
        info["exports"].as_array().map(|a| a.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    names.join(", ")
}

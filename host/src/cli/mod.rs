//! The `authkit-host` command line.
//!
//! Owns: flag parsing and the text each command prints. Must not: hold logic the
//! library lacks; every command calls [`crate::run`], the [`crate::store`], or a
//! running host's admin API ([`remote`]).

mod dev;
mod remote;

use std::borrow::Cow;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::clock;
use crate::runtime::ModuleLimits;
use crate::settings::{Overrides, Settings};
use crate::store::Store;
use crate::store::inbox::{EventFilter, Status};

#[derive(Debug, Parser)]
#[command(name = "authkit-host", version, about = "A self-hosted backend for WorkOS AuthKit")]
pub struct Cli {
    /// TOML config file (also AUTHKIT_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    /// sqlite://PATH or postgres://... (also DATABASE_URL; default sqlite://authkit.db).
    #[arg(long, global = true, value_name = "URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Inspect the synced users table.
    Users {
        /// The tenant (also AUTHKIT_TENANT; default: `default`).
        #[arg(long, global = true, env = "AUTHKIT_TENANT", default_value = "default")]
        tenant: String,
        #[command(subcommand)]
        cmd: UsersCommand,
    },
    /// Inspect the event inbox.
    Events {
        /// The tenant (also AUTHKIT_TENANT; default: `default`).
        #[arg(long, global = true, env = "AUTHKIT_TENANT", default_value = "default")]
        tenant: String,
        #[command(subcommand)]
        cmd: EventsCommand,
    },
    /// Inspect the Actions decisions sent to WorkOS.
    Actions {
        /// The tenant (also AUTHKIT_TENANT; default: `default`).
        #[arg(long, global = true, env = "AUTHKIT_TENANT", default_value = "default")]
        tenant: String,
        #[command(subcommand)]
        cmd: ActionsCommand,
    },
    /// Upload a handler component to a running host, and make it live.
    Deploy(remote::DeployArgs),
    /// Manage a running host's handler versions.
    #[command(subcommand)]
    Modules(remote::ModulesCommand),
    /// Manage a running host's tenants (root admin token).
    #[command(subcommand)]
    Tenants(Box<remote::TenantsCommand>),
    /// Run the server and deploy a handler file each time it changes.
    Dev(DevArgs),
}

#[derive(Debug, Args)]
struct DevArgs {
    /// The handler component (.wasm) your build writes.
    #[arg(long, value_name = "FILE")]
    watch: PathBuf,
    /// Address to listen on (also AUTHKIT_LISTEN; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// The limits each deployed version sets for itself, as with `deploy`.
    #[command(flatten)]
    limits: remote::ModuleLimitArgs,
}

#[derive(Debug, Subcommand)]
enum ActionsCommand {
    /// List decisions, newest first: verdict, who decided, how long it took, why.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// Address to listen on (also AUTHKIT_LISTEN; default 127.0.0.1:8080).
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Store and acknowledge events without applying them (ingest-only process).
    #[arg(long)]
    no_worker: bool,
    /// A handler component (.wasm) to run on every event (also AUTHKIT_HANDLER).
    #[arg(long, value_name = "FILE")]
    handler: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum UsersCommand {
    /// List users, ordered by id.
    List {
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Start after this user id (for paging).
        #[arg(long)]
        after: Option<String>,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one user as JSON.
    Get { id: String },
}

#[derive(Debug, Subcommand)]
enum EventsCommand {
    /// List inbox events, newest first.
    List {
        /// pending, failed, done or dead.
        #[arg(long)]
        status: Option<String>,
        /// Event type, e.g. user.updated.
        #[arg(long = "type", value_name = "TYPE")]
        event_type: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one event as JSON: status, attempts, last error and the handler's log.
    Show { id: String },
    /// Queue a dead event again, with a fresh set of attempts.
    Retry { id: String },
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let overrides = Overrides {
        config: cli.config.clone(),
        database_url: cli.database_url.clone(),
        listen: match &cli.command {
            Command::Serve(args) => args.listen.clone(),
            Command::Dev(args) => args.listen.clone(),
            _ => None,
        },
        no_worker: matches!(&cli.command, Command::Serve(ServeArgs { no_worker: true, .. })),
        handler: match &cli.command {
            Command::Serve(args) => args.handler.clone(),
            _ => None,
        },
    };
    let settings = match Settings::load(&overrides) {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let is_serve = matches!(cli.command, Command::Serve(_) | Command::Dev(_));
    let filter = if is_serve { settings.log.as_str() } else { "warn" };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(dispatch(cli.command, settings)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, each cause once: many of the host's
/// errors already say what their source said (`database error: {0}`), and
/// printing the chain as is would repeat it.
fn describe(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn dispatch(command: Command, settings: Settings) -> anyhow::Result<()> {
    match command {
        Command::Serve(_) => serve(settings).await,
        Command::Users { tenant, cmd } => users(cmd, &tenant, &connect(&settings).await?).await,
        Command::Events { tenant, cmd } => events(cmd, &tenant, &connect(&settings).await?).await,
        Command::Actions { tenant, cmd } => actions(cmd, &tenant, &connect(&settings).await?).await,
        Command::Deploy(args) => remote::deploy(args).await,
        Command::Modules(cmd) => remote::modules(cmd).await,
        Command::Tenants(cmd) => remote::tenants(*cmd).await,
        Command::Dev(args) => run_dev(settings, args.watch, args.limits.limits()).await,
    }
}

async fn run_dev(settings: Settings, file: PathBuf, limits: ModuleLimits) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(settings.listen).await.with_context(|| format!("failed to listen on {}", settings.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    let stop = shutdown.clone();
    crate::server::run_with(settings, listener, shutdown, move |deployment| {
        tokio::spawn(dev::watch(deployment, file, limits, stop));
    })
    .await
}

async fn actions(cmd: ActionsCommand, tenant: &str, store: &Store) -> anyhow::Result<()> {
    let ActionsCommand::List { limit, json } = cmd;
    let decisions = store.list_decisions(tenant, limit).await?;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<24} {:<36} {:<18} {:<6} {:<10} {:>9} DETAIL",
            "DECIDED", "ACTION", "KIND", "VERDICT", "SOURCE", "MS"
        )?;
    }
    for d in decisions {
        if json {
            writeln!(out, "{}", serde_json::to_string(&d)?)?;
        } else {
            let detail = d.error.as_deref().or(d.message.as_deref()).unwrap_or("-");
            writeln!(
                out,
                "{:<24} {:<36} {:<18} {:<6} {:<10} {:>9.2} {}",
                d.decided_at_text(),
                cell(&d.action_id),
                cell(&d.kind),
                cell(&d.verdict),
                cell(&d.source),
                d.latency_us as f64 / 1000.0,
                cell(detail)
            )?;
        }
    }
    Ok(())
}

async fn connect(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database)
        .await
        .with_context(|| format!("failed to open the database {:?}", settings.database))
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let listener =
        TcpListener::bind(settings.listen).await.with_context(|| format!("failed to listen on {}", settings.listen))?;
    let shutdown = CancellationToken::new();
    tokio::spawn(stop_on_signal(shutdown.clone()));
    crate::run(settings, listener, shutdown).await
}

/// Cancels `shutdown` on SIGINT or SIGTERM.
async fn stop_on_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => info!("SIGINT received; shutting down"),
        () = term => info!("SIGTERM received; shutting down"),
    }
    shutdown.cancel();
}

async fn users(cmd: UsersCommand, tenant: &str, store: &Store) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match cmd {
        UsersCommand::List { limit, after, json } => {
            let users = store.list_users(tenant, after.as_deref(), limit).await?;
            if !json {
                writeln!(out, "{:<40} {:<32} {:<24} UPDATED", "ID", "EMAIL", "NAME")?;
            }
            for user in users {
                let view = user.view();
                if json {
                    writeln!(out, "{}", serde_json::to_string(&view)?)?;
                } else {
                    let name = view.name.clone().or_else(|| {
                        let parts: Vec<_> =
                            [&view.first_name, &view.last_name].into_iter().flatten().cloned().collect();
                        (!parts.is_empty()).then(|| parts.join(" "))
                    });
                    writeln!(
                        out,
                        "{:<40} {:<32} {:<24} {}",
                        cell(&view.id),
                        cell(view.email.as_deref().unwrap_or("-")),
                        cell(name.as_deref().unwrap_or("-")),
                        cell(&view.updated_at)
                    )?;
                }
            }
        }
        UsersCommand::Get { id } => match store.get_user(tenant, &id).await? {
            Some(user) => writeln!(out, "{}", serde_json::to_string_pretty(&user.view())?)?,
            None => bail!("no user with id {id:?}"),
        },
    }
    Ok(())
}

async fn events(cmd: EventsCommand, tenant: &str, store: &Store) -> anyhow::Result<()> {
    let (status, event_type, limit, json) = match cmd {
        EventsCommand::List { status, event_type, limit, json } => (status, event_type, limit, json),
        EventsCommand::Show { id } => {
            let event = store.get_event(tenant, &id).await?.with_context(|| format!("no event with id {id:?}"))?;
            let mut out = std::io::stdout().lock();
            writeln!(out, "{}", serde_json::to_string_pretty(&event.view())?)?;
            return Ok(());
        }
        EventsCommand::Retry { id } => {
            let Some(event) = store.get_event(tenant, &id).await? else {
                bail!("no event with id {id:?}");
            };
            if !store.retry_event(tenant, &id, clock::now_ms()).await? {
                bail!("event {id} is {}, not dead: only dead events can be retried", event.status);
            }
            println!("event {id} queued again");
            return Ok(());
        }
    };
    let status = match status {
        Some(s) => Some(
            Status::parse(&s).with_context(|| format!("unknown status {s:?}: use pending, failed, done or dead"))?,
        ),
        None => None,
    };
    let events = store.list_events(&EventFilter { tenant: tenant.to_string(), status, event_type, limit }).await?;
    let mut out = std::io::stdout().lock();
    if !json {
        writeln!(
            out,
            "{:<36} {:<32} {:<8} {:>8} {:<24} OUTCOME/ERROR",
            "EVENT", "TYPE", "STATUS", "ATTEMPTS", "OCCURRED"
        )?;
    }
    for e in events {
        if json {
            writeln!(out, "{}", serde_json::to_string(&e)?)?;
        } else {
            let detail = e.last_error.as_deref().or(e.outcome.as_deref()).unwrap_or("-");
            writeln!(
                out,
                "{:<36} {:<32} {:<8} {:>8} {:<24} {}",
                cell(&e.event_id),
                cell(&e.event_type),
                e.status,
                e.attempts,
                clock::format_ms(e.occurred_at),
                cell(detail)
            )?;
        }
    }
    Ok(())
}

/// Text from outside (a user's name, an event id, a handler's error, a
/// tenant's client id) as one cell of a printed table: control characters
/// (line breaks, terminal escape sequences) and the marks that reorder
/// displayed text are shown escaped, as `\u{1b}`, so such text can neither add
/// rows to a table nor drive the terminal of whoever reads it. `--json` output
/// needs none of this: JSON escapes control characters itself.
fn cell(text: &str) -> Cow<'_, str> {
    let unsafe_char = |c: char| {
        c.is_control()
            || matches!(c, '\u{061c}' | '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(unsafe_char) {
        return Cow::Borrowed(text);
    }
    let mut shown = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if unsafe_char(c) {
            shown.extend(c.escape_unicode());
        } else {
            shown.push(c);
        }
    }
    Cow::Owned(shown)
}

#[cfg(test)]
mod tests {
    use super::{cell, describe};

    #[test]
    fn a_table_cell_shows_control_characters_escaped() {
        assert!(matches!(cell("Ada Lovelace <ada@example.com> é 名"), std::borrow::Cow::Borrowed(_)));
        assert_eq!(cell("Eve\u{1b}[2J\nuser_fake"), "Eve\\u{1b}[2J\\u{a}user_fake");
        assert_eq!(cell("\t\r\u{7f}\u{9b}"), "\\u{9}\\u{d}\\u{7f}\\u{9b}");
        // Right-to-left override: would show "txt.exe" as "exe.txt".
        assert_eq!(cell("a\u{202e}b"), "a\\u{202e}b");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Repeats(#[from] std::io::Error);

    #[test]
    fn an_error_line_names_each_cause_once() {
        let e = anyhow::Error::new(Repeats(std::io::Error::other("disk full"))).context("failed to open the database");
        assert_eq!(describe(&e), "failed to open the database: database error: disk full");
        let e = anyhow::anyhow!("no such user").context("users get");
        assert_eq!(describe(&e), "users get: no such user");
    }
}

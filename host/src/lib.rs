//! authkit-host: a self-hosted backend for WorkOS AuthKit.
//!
//! # Layout
//! - [`settings`]: the one validated configuration value (defaults, file, env, flags).
//! - [`workos`]: the wire protocol: signatures, event envelopes, typed records,
//!   Actions requests and signed responses. Pure.
//! - [`store`]: SQLite and Postgres: migrations, inbox, directory tables, handlers'
//!   documents, Actions decisions; async reads through sqlx, synchronous
//!   transactions for the worker and handlers.
//! - [`runtime`]: wasmtime: the sandbox, handler components (validated, compiled
//!   code cached on disk), the WIT imports.
//! - [`tenants`]: the tenants one host serves: their secrets, limits, verdicts,
//!   and handler versions, opened on first use.
//! - [`deploy`]: a tenant's handler versions: upload, activate, roll back, the live swap.
//! - [`pipeline`]: group-commit ingest, the worker that applies events and runs the
//!   handler, retries; the Actions decider.
//! - [`http`]: axum routes, the verified-request extractors, the admin API, the JSON error shape.
//! - [`server`]: wires the parts together and shuts them down in order.
//! - [`cli`]: the `authkit-host` commands (`serve`, `dev`, `users`, `events`,
//!   `actions`, and `deploy`/`modules` over the admin API).
//! - [`locks`]: poison-tolerant lock helpers.
//! - [`clock`]: unix-millisecond time and RFC 3339 conversion.
//!
//! The data's path: `POST /workos/webhook` → [`http::webhook`] verifies the raw
//! bytes → [`pipeline::ingest`] commits the event to the inbox (deduplicated on its
//! id) → 200 → [`pipeline::worker`] claims due events in order and, per event in
//! one transaction, syncs the directory tables ([`pipeline::sync`]) and runs the
//! handler ([`runtime`]), retrying failures with backoff. `POST /workos/action` →
//! [`http::action`] → [`pipeline::actions`] → a signed verdict.

pub mod cli;
pub mod clock;
pub mod deploy;
pub mod http;
pub mod locks;
pub mod pipeline;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod store;
pub mod tenants;
pub mod workos;

pub use server::run;
pub use settings::Settings;

//! authkit-host: a self-hosted backend for WorkOS AuthKit.
//!
//! # Layout
//! - [`settings`]: the one validated configuration value (defaults, file, env, flags).
//! - [`workos`]: the wire protocol: signatures, event envelopes, typed records. Pure.
//! - [`store`]: SQLite and Postgres through sqlx: migrations, inbox, directory tables.
//! - [`pipeline`]: group-commit ingest, the worker that applies events, retries.
//! - [`http`]: axum routes, the verified-webhook extractor, the JSON error shape.
//! - [`server`]: wires the parts together and shuts them down in order.
//! - [`cli`]: the `authkit-host` commands (`serve`, `users`, `events`).
//! - [`clock`]: unix-millisecond time and RFC 3339 conversion.
//!
//! The data's path: `POST /workos/webhook` → [`http::webhook`] verifies the raw
//! bytes → [`pipeline::ingest`] commits the event to the inbox (deduplicated on its
//! id) → 200 → [`pipeline::worker`] claims due events in order and applies them to
//! the directory tables via [`pipeline::sync`], retrying failures with backoff.

pub mod cli;
pub mod clock;
pub mod http;
pub mod pipeline;
pub mod runtime;
pub mod server;
pub mod settings;
pub mod store;
pub mod workos;

pub use server::run;
pub use settings::Settings;

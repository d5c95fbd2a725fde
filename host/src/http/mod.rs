//! The HTTP edge: routes, extractors and error mapping.
//!
//! Owns: the axum router, the state every route shares, and which tenant a
//! request is for: `/t/{tenant}/...` names it, an unprefixed route serves
//! `default`, and an unknown tenant is a 404 before any other work. Must not:
//! hold business rules or SQL; routes call the pipeline and the store.

pub mod action;
pub mod admin;
pub mod caller;
pub mod error;
pub mod query;
pub mod webhook;

use std::sync::Arc;

use axum::extract::{FromRequestParts, RawPathParams};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::pipeline::actions::Decider;
use crate::pipeline::ingest::Ingest;
use crate::settings::Settings;
use crate::tenants::{Tenant, Tenants};
use crate::workos::jwks::KeyCache;
use error::ApiError;

/// What every route can reach. Shared behind one `Arc`: axum clones the state
/// for every request, and one reference count costs less than one per part.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> AppState {
        AppState(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The parts of [`AppState`].
pub struct Shared {
    pub settings: Arc<Settings>,
    pub ingest: Ingest,
    pub decider: Arc<Decider>,
    pub tenants: Arc<Tenants>,
    /// The key sets access tokens are checked with, by client id.
    pub keys: Arc<KeyCache>,
}

/// The prefix of a route that serves a named tenant.
pub const TENANT_PREFIX: &str = "/t/{tenant}";

pub fn router(state: AppState) -> Router {
    let tenant_routes = || {
        Router::new()
            .route("/workos/webhook", post(webhook::receive).fallback(method_not_allowed))
            .route("/workos/action", post(action::decide).fallback(method_not_allowed))
            .route("/me", get(caller::me).fallback(method_not_allowed))
            .route("/query/{name}", post(query::run).fallback(method_not_allowed))
    };
    Router::new()
        .merge(tenant_routes())
        .nest(TENANT_PREFIX, tenant_routes())
        .route("/healthz", get(health))
        .merge(admin::routes())
        .fallback(not_found)
        .with_state(state)
}

/// The tenant a request is for: the `{tenant}` of `/t/{tenant}/...`, or
/// `default` on an unprefixed route. Unknown: 404 `tenant_not_found`.
pub async fn tenant_of(parts: &mut Parts, state: &AppState) -> Result<Arc<Tenant>, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found())?;
    match params.iter().find(|(name, _)| *name == "tenant") {
        None => Ok(state.tenants.default_tenant()),
        Some((_, slug)) => state.tenants.get(slug).ok_or_else(|| unknown_tenant(slug)),
    }
}

pub fn unknown_tenant(slug: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "tenant_not_found", format!("there is no tenant {slug:?} on this host"))
}

async fn health() -> Json<Value> {
    Json(json!({ "status": "ok" }))
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

async fn method_not_allowed() -> ApiError {
    ApiError::method_not_allowed()
}

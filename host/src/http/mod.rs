//! The HTTP edge: routes, extractors and error mapping.
//!
//! Owns: the axum router and the state every route shares. Must not: hold
//! business rules or SQL; routes call the pipeline and the store.

pub mod action;
pub mod admin;
pub mod error;
pub mod webhook;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{Value, json};

use crate::deploy::Deployment;
use crate::pipeline::actions::Decider;
use crate::pipeline::ingest::Ingest;
use crate::settings::Settings;
use error::ApiError;

/// What every route can reach.
#[derive(Clone)]
pub struct AppState {
    pub settings: Arc<Settings>,
    pub ingest: Ingest,
    pub decider: Arc<Decider>,
    pub deployment: Arc<Deployment>,
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/workos/webhook", post(webhook::receive).fallback(method_not_allowed))
        .route("/workos/action", post(action::decide).fallback(method_not_allowed))
        .route("/healthz", get(health))
        .merge(admin::routes())
        .fallback(not_found)
        .with_state(state)
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

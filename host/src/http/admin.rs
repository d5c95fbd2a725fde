//! `/admin/...`: the operator's API for handler versions.
//!
//! Owns: the [`Admin`] extractor (the API is off with 503 until a token is
//! configured; a missing or wrong bearer token is 401, compared in constant
//! time), the routes, and the mapping of [`DeployError`] to statuses and codes.
//! Must not: validate or swap modules itself (see [`crate::deploy`]), or echo
//! a token.
//!
//! Routes:
//! - `GET /admin/modules`: every version, oldest first.
//! - `POST /admin/modules[?activate=true]`: the body is a component's raw bytes → 201 (200 when
//!   the same bytes were already stored).
//! - `POST /admin/modules/{version}/activate`, `POST /admin/modules/rollback`.
//! - `DELETE /admin/modules/{version}` → 204; the active version is 409.
//! - `GET /admin/status`: the active version and the compiled-code cache's counters.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::error;

use super::AppState;
use super::error::ApiError;
use super::webhook::read_body;
use crate::deploy::{DeployError, Deployment};
use crate::settings::env;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/modules", get(list).post(upload))
        .route("/admin/modules/rollback", post(rollback))
        .route("/admin/modules/{version}/activate", post(activate))
        .route("/admin/modules/{version}", delete(remove))
        .route("/admin/status", get(status))
}

/// A request that carries the admin token.
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Admin, Response> {
        let Some(token) = state.settings.admin_token.as_ref() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "admin_api_disabled",
                format!("the admin API is off: set {} to a long random token and restart", env::ADMIN_TOKEN),
            )
            .into_response());
        };
        let given = parts.headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(|v| {
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
        });
        let (code, message) = match given {
            None => ("admin_token_missing", "send the admin token as `Authorization: Bearer <token>`"),
            Some(given) if same_token(given, token.expose()) => return Ok(Admin),
            Some(_) => ("admin_token_invalid", "the admin token is not valid"),
        };
        let mut response = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
        response
            .headers_mut()
            .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"authkit-host admin\""));
        Err(response)
    }
}

/// Compares digests, so neither the time taken nor an early exit depends on
/// where the two tokens first differ, or on their lengths.
fn same_token(given: &str, expected: &str) -> bool {
    let (a, b) = (Sha256::digest(given.as_bytes()), Sha256::digest(expected.as_bytes()));
    a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> ApiError {
        let (status, code) = match &e {
            DeployError::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "module_too_large"),
            DeployError::Invalid(_) => (StatusCode::UNPROCESSABLE_ENTITY, "invalid_module"),
            DeployError::NotFound(_) => (StatusCode::NOT_FOUND, "module_not_found"),
            DeployError::Active(_) => (StatusCode::CONFLICT, "module_active"),
            DeployError::NothingToRollBack => (StatusCode::CONFLICT, "no_previous_version"),
            DeployError::Unloadable { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "module_unloadable"),
            DeployError::Indexes(_) | DeployError::Store(_) => {
                error!(error = %e, "a handler version change failed");
                return ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "storage_unavailable",
                    "the change could not be stored; nothing changed, try again",
                );
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Runs a blocking deployment call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&Deployment) -> Result<T, DeployError> + Send + 'static,
) -> Result<T, ApiError> {
    let deployment: Arc<Deployment> = state.deployment.clone();
    match tokio::task::spawn_blocking(move || f(&deployment)).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            error!(error = %e, "a handler version change panicked");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the change failed"))
        }
    }
}

async fn list(_: Admin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let versions = blocking(&state, |d| d.list()).await?;
    Ok(Json(json!({ "versions": versions })))
}

/// A version number from the path; anything else is a 400 in the usual shape.
fn version(text: &str) -> Result<i64, ApiError> {
    text.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_version", format!("{text:?} is not a version number"))
    })
}

/// The body is read (within the size cap) before the token is checked, so a
/// client sending a large upload with a bad token gets the 401, not a reset
/// connection.
async fn upload(
    admin: Result<Admin, Response>,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let activate = match query.get("activate").map(String::as_str) {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") | Some("") => true,
        Some(other) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("activate={other:?}: use true or false"),
            ));
        }
    };
    let limit = state.settings.modules.max_bytes;
    let (parts, body) = req.into_parts();
    let bytes = read_body(&parts.headers, body, limit).await.map_err(|e| {
        if e.status == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(e.status, "module_too_large", format!("the component is over the limit of {limit} bytes"))
        } else {
            e
        }
    })?;
    if let Err(refused) = admin {
        return Ok(refused);
    }
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "send the component's bytes as the request body",
        ));
    }
    let uploaded = blocking(&state, move |d| d.upload(&bytes, activate)).await?;
    let status = if uploaded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(uploaded)).into_response())
}

async fn activate(_: Admin, State(state): State<AppState>, Path(v): Path<String>) -> Result<Json<Value>, ApiError> {
    let version = version(&v)?;
    let info = blocking(&state, move |d| d.activate(version)).await?;
    Ok(Json(json!(info)))
}

async fn rollback(_: Admin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = blocking(&state, |d| d.rollback()).await?;
    Ok(Json(json!(info)))
}

async fn remove(_: Admin, State(state): State<AppState>, Path(v): Path<String>) -> Result<StatusCode, ApiError> {
    let version = version(&v)?;
    blocking(&state, move |d| d.delete(version)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(_: Admin, State(state): State<AppState>) -> Json<Value> {
    Json(json!(state.deployment.status()))
}

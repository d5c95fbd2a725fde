//! `/admin/...`: the operator's API for tenants and their handler versions.
//!
//! Owns: the admin extractors ([`TenantAdmin`]: the root token, or a token of
//! the tenant the path names; [`TenantSettingsAdmin`]: the same, saying which
//! of the two; [`RootAdmin`]: the root token only), the routes,
//! and the mapping of [`DeployError`] and [`TenantError`] to statuses and
//! codes. Must not: validate or swap modules or tenants itself (see
//! [`crate::deploy`] and [`crate::tenants`]), or echo a token or a secret.
//!
//! Tokens: the API is off (503) until the root token is configured. A missing
//! or unknown bearer token is 401 (compared in constant time). A tenant token
//! reaches only its own tenant's routes; anything else answers 404, exactly as
//! an unknown tenant does, never 403. On its own routes it cannot raise its
//! tenant's limits, which the root token sets (403 `limit_set_by_operator`):
//! `PATCH /admin/tenant` keeps them, and an upload may ask for less, not more.
//!
//! Routes of one tenant, unprefixed for `default` or under `/t/{tenant}`:
//! - `GET /admin/modules`: every version, oldest first.
//! - `POST /admin/modules[?activate=true]`: the body is a component's raw bytes → 201 (200 when
//!   the same bytes with the same limits were already stored). The version's own limits, each
//!   optional: `memory_limit_mib`, `event_deadline_ms`, `action_deadline_ms`, `query_deadline_ms`
//!   (400 `invalid_limit` outside the host's bounds).
//! - `POST /admin/modules/{version}/activate`, `POST /admin/modules/rollback`.
//! - `DELETE /admin/modules/{version}` → 204; the active version is 409.
//! - `GET /admin/status`: the active version and the compiled-code cache's counters.
//! - `GET /admin/tenant`, `PATCH /admin/tenant`: the tenant's own settings.
//! - `GET /admin/users[?limit=&after=]`, `GET /admin/users/{id}`: the synced users.
//! - `GET /admin/events[?status=&type=&limit=]`, `GET /admin/events/{id}`, and
//!   `POST /admin/events/{id}/retry` (a dead event, queued again).
//!
//! Root only:
//! - `GET /admin/tenants`, `POST /admin/tenants` → 201.
//! - `GET|PATCH|DELETE /admin/tenants/{slug}`: deleting removes all of its data → 204.
//! - `GET|POST /admin/tenants/{slug}/tokens`: a new token is shown once → 201;
//!   `DELETE /admin/tenants/{slug}/tokens/{id}` revokes one → 204.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tracing::{error, info};

use super::error::ApiError;
use super::webhook::read_body;
use super::{AppState, TENANT_PREFIX, tenant_of, unknown_tenant};
use crate::clock;
use crate::deploy::{DeployError, Deployment};
use crate::runtime::ModuleLimits;
use crate::settings::env;
use crate::store::inbox::{EventFilter, Status};
use crate::tenants::{ChangedBy, NewTenant, Tenant, TenantChange, TenantError};

pub fn routes() -> Router<AppState> {
    let scoped = || {
        Router::new()
            .route("/admin/modules", get(list).post(upload))
            .route("/admin/modules/rollback", post(rollback))
            .route("/admin/modules/{version}/activate", post(activate))
            .route("/admin/modules/{version}", delete(remove))
            .route("/admin/status", get(status))
            .route("/admin/tenant", get(show_own).patch(update_own))
            .route("/admin/users", get(list_users))
            .route("/admin/users/{id}", get(show_user))
            .route("/admin/events", get(list_events))
            .route("/admin/events/{id}", get(show_event))
            .route("/admin/events/{id}/retry", post(retry_event))
    };
    Router::new()
        .merge(scoped())
        .nest(TENANT_PREFIX, scoped())
        .route("/admin/tenants", get(list_tenants).post(create_tenant))
        .route("/admin/tenants/{slug}", get(show_tenant).patch(update_tenant).delete(delete_tenant))
        .route("/admin/tenants/{slug}/tokens", get(list_tokens).post(create_token))
        .route("/admin/tenants/{slug}/tokens/{id}", delete(revoke_token))
}

/// Who is calling.
enum Caller {
    Root,
    /// A token of this tenant.
    Tenant(String),
}

/// Checks the bearer token: the root token, or a live tenant token.
async fn caller(parts: &Parts, state: &AppState) -> Result<Caller, Response> {
    let Some(root) = state.settings.admin_token.as_ref() else {
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
        Some(given) if same_token(given, root.expose()) => return Ok(Caller::Root),
        Some(given) => match state.tenants.store().token_tenant(&token_hash(given)).await {
            Ok(Some(slug)) => return Ok(Caller::Tenant(slug)),
            Ok(None) => ("admin_token_invalid", "the admin token is not valid"),
            Err(e) => {
                error!(error = %e, "could not look up an admin token");
                return Err(storage_unavailable().into_response());
            }
        },
    };
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"authkit-host admin\""));
    Err(response)
}

/// A request allowed to manage the tenant its path names (`default` when unprefixed).
pub struct TenantAdmin(pub Arc<Tenant>);

impl FromRequestParts<AppState> for TenantAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<TenantAdmin, Response> {
        Ok(TenantAdmin(TenantSettingsAdmin::from_request_parts(parts, state).await?.tenant))
    }
}

/// A [`TenantAdmin`] request that also says whose token it carries: a tenant
/// token may not change the tenant's limits.
pub struct TenantSettingsAdmin {
    tenant: Arc<Tenant>,
    by: ChangedBy,
}

impl FromRequestParts<AppState> for TenantSettingsAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<TenantSettingsAdmin, Response> {
        let caller = caller(parts, state).await?;
        let tenant = tenant_of(parts, state).await.map_err(IntoResponse::into_response)?;
        match caller {
            Caller::Tenant(own) if own != tenant.slug => Err(unknown_tenant(&tenant.slug).into_response()),
            Caller::Tenant(_) => Ok(TenantSettingsAdmin { tenant, by: ChangedBy::Tenant }),
            Caller::Root => Ok(TenantSettingsAdmin { tenant, by: ChangedBy::Root }),
        }
    }
}

/// A request with the root token.
pub struct RootAdmin;

impl FromRequestParts<AppState> for RootAdmin {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<RootAdmin, Response> {
        match caller(parts, state).await? {
            Caller::Root => Ok(RootAdmin),
            Caller::Tenant(_) => Err(ApiError::not_found().into_response()),
        }
    }
}

/// How tenant tokens are kept: SHA-256, hex.
fn token_hash(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// A store call of the admin API failed: logged, and a 503 that says nothing changed.
fn store_failed(e: crate::store::StoreError) -> ApiError {
    error!(error = %e, "an admin change could not be stored");
    storage_unavailable()
}

fn storage_unavailable() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "storage_unavailable",
        "the change could not be stored; nothing changed, try again",
    )
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
            DeployError::InvalidLimit(_) => (StatusCode::BAD_REQUEST, "invalid_limit"),
            DeployError::TenantGone(slug) => return unknown_tenant(slug),
            DeployError::Indexes(_) | DeployError::Store(_) => {
                error!(error = %e, "a handler version change failed");
                return storage_unavailable();
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<TenantError> for ApiError {
    fn from(e: TenantError) -> ApiError {
        let (status, code) = match &e {
            TenantError::NotFound(slug) => return unknown_tenant(slug),
            TenantError::Exists(_) => (StatusCode::CONFLICT, "tenant_exists"),
            TenantError::DefaultIsFixed => (StatusCode::CONFLICT, "default_tenant_fixed"),
            TenantError::Invalid { .. } => (StatusCode::BAD_REQUEST, "invalid_tenant"),
            TenantError::LimitSetByOperator { .. } => (StatusCode::FORBIDDEN, "limit_set_by_operator"),
            TenantError::Store(_) => {
                error!(error = %e, "a tenant change failed");
                return storage_unavailable();
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// Runs a blocking call on the tenant's deployment off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    tenant: &Tenant,
    f: impl FnOnce(&Deployment) -> Result<T, DeployError> + Send + 'static,
) -> Result<T, ApiError> {
    let (tenants, slug, created_at) = (state.tenants.clone(), tenant.slug.clone(), tenant.created_at);
    let call = move || {
        let deployment = tenants.deployment(&slug)?;
        // The request was made to this tenant: not to one created since under its slug.
        if deployment.tenant_created_at() != created_at {
            return Err(DeployError::TenantGone(slug));
        }
        f(&deployment)
    };
    match tokio::task::spawn_blocking(call).await {
        Ok(result) => result.map_err(ApiError::from),
        Err(e) => {
            error!(error = %e, "a handler version change panicked");
            Err(ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", "the change failed"))
        }
    }
}

async fn list(TenantAdmin(tenant): TenantAdmin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let versions = blocking(&state, &tenant, |d| d.list()).await?;
    Ok(Json(json!({ "versions": versions })))
}

/// A version number from the path; anything else is a 400 in the usual shape.
fn version(params: &HashMap<String, String>) -> Result<i64, ApiError> {
    let text = params.get("version").map(String::as_str).unwrap_or_default();
    text.parse::<i64>().ok().filter(|v| *v > 0).ok_or_else(|| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid_version", format!("{text:?} is not a version number"))
    })
}

/// The body is read (within the size cap) before the token is checked, so a
/// client sending a large upload with a bad token gets the 401, not a reset
/// connection.
async fn upload(
    admin: Result<TenantSettingsAdmin, Response>,
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
    let (tenant, by) = match admin {
        Ok(TenantSettingsAdmin { tenant, by }) => (tenant, by),
        Err(refused) => return Ok(refused),
    };
    let mut limits = module_limits(&query)?;
    if by == ChangedBy::Tenant {
        tenant.allows_version_limits(&limits)?;
        limits = limits.held_to_tenant();
    }
    if bytes.is_empty() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "empty_body",
            "send the component's bytes as the request body",
        ));
    }
    let uploaded = blocking(&state, &tenant, move |d| d.upload(&bytes, limits, activate)).await?;
    let status = if uploaded.created { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(uploaded)).into_response())
}

async fn activate(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let version = version(&params)?;
    let info = blocking(&state, &tenant, move |d| d.activate(version)).await?;
    Ok(Json(json!(info)))
}

async fn rollback(TenantAdmin(tenant): TenantAdmin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let info = blocking(&state, &tenant, |d| d.rollback()).await?;
    Ok(Json(json!(info)))
}

async fn remove(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<StatusCode, ApiError> {
    let version = version(&params)?;
    blocking(&state, &tenant, move |d| d.delete(version)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn status(TenantAdmin(tenant): TenantAdmin, State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let status = blocking(&state, &tenant, |d| Ok(d.status())).await?;
    Ok(Json(json!(status)))
}

/// A JSON body; anything else is a 400 in the usual shape.
fn parse<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not valid here: {e}")))
}

async fn show_own(TenantAdmin(tenant): TenantAdmin) -> Json<Value> {
    Json(tenant.describe())
}

async fn update_own(
    TenantSettingsAdmin { tenant, by }: TenantSettingsAdmin,
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let change: TenantChange = parse(&body)?;
    Ok(Json(state.tenants.update(&tenant.slug, Some(tenant.created_at), change, by).await?.describe()))
}

/// Every tenant, whether each has its handler versions loaded now, and the
/// host-wide figures of the bounded cache they are loaded in (root only).
async fn list_tenants(_: RootAdmin, State(state): State<AppState>) -> Json<Value> {
    let all: Vec<Value> = state
        .tenants
        .all()
        .iter()
        .map(|t| {
            let mut described = t.describe();
            described["loaded"] = json!(state.tenants.is_loaded(&t.slug));
            described
        })
        .collect();
    Json(json!({ "tenants": all, "loaded": state.tenants.loaded() }))
}

async fn create_tenant(_: RootAdmin, State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let new: NewTenant = parse(&body)?;
    let tenant = state.tenants.create(new).await?;
    Ok((StatusCode::CREATED, Json(tenant.describe())).into_response())
}

fn known(state: &AppState, slug: &str) -> Result<Arc<Tenant>, ApiError> {
    state.tenants.get(slug).ok_or_else(|| unknown_tenant(slug))
}

async fn show_tenant(
    _: RootAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(known(&state, &slug)?.describe()))
}

async fn update_tenant(
    _: RootAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let change: TenantChange = parse(&body)?;
    Ok(Json(state.tenants.update(&slug, None, change, ChangedBy::Root).await?.describe()))
}

async fn delete_tenant(
    _: RootAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.tenants.delete(&slug).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn list_tokens(
    _: RootAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let tenant = known(&state, &slug)?;
    let tokens = state.tenants.store().list_tokens(&tenant.slug).await.map_err(store_failed)?;
    Ok(Json(json!({ "tokens": tokens })))
}

/// A new token for the tenant, shown in this response only; only its hash is kept.
async fn create_token(
    _: RootAdmin,
    State(state): State<AppState>,
    Path(slug): Path<String>,
) -> Result<Response, ApiError> {
    let tenant = known(&state, &slug)?;
    let id = format!("tok_{}", hex::encode(rand::random::<[u8; 8]>()));
    let token = format!("akt_{}", hex::encode(rand::random::<[u8; 32]>()));
    let now = clock::now_ms();
    if !state.tenants.store().insert_token(&id, &tenant.slug, &token_hash(&token), now).await.map_err(store_failed)? {
        return Err(unknown_tenant(&tenant.slug));
    }
    info!(tenant = %tenant.slug, token_id = %id, "tenant admin token created");
    let body = json!({ "id": id, "tenant": tenant.slug, "token": token, "created_at": now });
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

async fn revoke_token(
    _: RootAdmin,
    State(state): State<AppState>,
    Path((slug, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let tenant = known(&state, &slug)?;
    let revoked = state.tenants.store().revoke_token(&tenant.slug, &id, clock::now_ms()).await.map_err(store_failed)?;
    if !revoked {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "token_not_found",
            format!("tenant {slug:?} has no live token {id:?}"),
        ));
    }
    info!(tenant = %tenant.slug, token_id = %id, "tenant admin token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// The `{id}` of a tenant-scoped route (`/t/{tenant}/...` has two parameters).
fn id_param(params: &HashMap<String, String>) -> String {
    params.get("id").cloned().unwrap_or_default()
}

/// A version's own limits, from the upload's `memory_limit_mib`,
/// `event_deadline_ms`, `action_deadline_ms` and `query_deadline_ms` (each optional).
fn module_limits(query: &HashMap<String, String>) -> Result<ModuleLimits, ApiError> {
    let number = |name: &str| -> Result<Option<u64>, ApiError> {
        query
            .get(name)
            .map(|text| {
                text.parse::<u64>().map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid_limit",
                        format!("{name}={text:?}: use a whole number"),
                    )
                })
            })
            .transpose()
    };
    Ok(ModuleLimits {
        memory_limit_bytes: number("memory_limit_mib")?
            .map(|mib| usize::try_from(mib).unwrap_or(usize::MAX).saturating_mul(1024 * 1024)),
        event_deadline_ms: number("event_deadline_ms")?,
        action_deadline_ms: number("action_deadline_ms")?,
        query_deadline_ms: number("query_deadline_ms")?,
        // Decided by who uploads (see `upload`), not by the request.
        held_to_tenant: false,
    })
}

fn limit_param(query: &HashMap<String, String>) -> Result<i64, ApiError> {
    match query.get("limit") {
        None => Ok(100),
        Some(text) => text.parse::<i64>().ok().filter(|n| (1..=1000).contains(n)).ok_or_else(|| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_query", format!("limit={text:?}: use 1 to 1000"))
        }),
    }
}

fn read_failed(e: crate::store::StoreError) -> ApiError {
    error!(error = %e, "an admin read failed");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "storage_unavailable", "the database could not be read; try again")
}

async fn list_users(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let limit = limit_param(&query)?;
    let after = query.get("after").map(String::as_str);
    let users = state.tenants.store().list_users(&tenant.slug, after, limit).await.map_err(read_failed)?;
    let views: Vec<Value> = users.into_iter().map(|u| json!(u.view())).collect();
    Ok(Json(json!({ "users": views })))
}

async fn show_user(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = id_param(&params);
    match state.tenants.store().get_user(&tenant.slug, &id).await.map_err(read_failed)? {
        Some(user) => Ok(Json(json!(user.view()))),
        None => Err(ApiError::new(StatusCode::NOT_FOUND, "user_not_found", format!("no user with id {id:?}"))),
    }
}

async fn list_events(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let status = match query.get("status") {
        None => None,
        Some(s) => Some(Status::parse(s).ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid_query",
                format!("status={s:?}: use pending, failed, done or dead"),
            )
        })?),
    };
    let filter = EventFilter {
        tenant: tenant.slug.clone(),
        status,
        event_type: query.get("type").cloned(),
        limit: limit_param(&query)?,
    };
    let events = state.tenants.store().list_events(&filter).await.map_err(read_failed)?;
    let views: Vec<Value> = events.into_iter().map(|e| json!(e.view())).collect();
    Ok(Json(json!({ "events": views })))
}

fn no_event(id: &str) -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "event_not_found", format!("no event with id {id:?}"))
}

async fn show_event(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = id_param(&params);
    let event = state.tenants.store().get_event(&tenant.slug, &id).await.map_err(read_failed)?;
    Ok(Json(json!(event.ok_or_else(|| no_event(&id))?.view())))
}

async fn retry_event(
    TenantAdmin(tenant): TenantAdmin,
    State(state): State<AppState>,
    Path(params): Path<HashMap<String, String>>,
) -> Result<Json<Value>, ApiError> {
    let id = id_param(&params);
    let store = state.tenants.store();
    let event = store.get_event(&tenant.slug, &id).await.map_err(read_failed)?.ok_or_else(|| no_event(&id))?;
    if !store.retry_event(&tenant.slug, &id, clock::now_ms()).await.map_err(read_failed)? {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "event_not_dead",
            format!("event {id} is {}, not dead: only dead events can be retried", event.status),
        ));
    }
    Ok(Json(json!({ "event_id": id, "status": "pending" })))
}

//! Who is calling: the AuthKit access token of a request, verified, and
//! `GET /me`.
//!
//! Owns: reading `Authorization: Bearer <token>`, verifying it for the
//! request's tenant (its client id's key set, the accepted issuers, the
//! leeway), the 401 answers with their `WWW-Authenticate` header, and the `/me`
//! route. Must not: parse or check tokens itself (that is
//! [`crate::workos::jwt`]) or fetch keys (that is [`crate::workos::jwks`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tracing::{error, warn};

use super::error::ApiError;
use super::{AppState, tenant_of};
use crate::clock;
use crate::settings::env;
use crate::tenants::Tenant;
use crate::workos::jwks::KeyError;
use crate::workos::jwt::{self, Claims, Rules, TokenError};

/// The realm named in `WWW-Authenticate`.
const REALM: &str = "authkit-host";

/// A request's verified AuthKit access token, for its tenant.
pub struct Caller {
    pub tenant: Arc<Tenant>,
    pub claims: Claims,
}

/// Why a request has no verified caller.
#[derive(Debug)]
pub enum CallerError {
    /// No `Authorization` header.
    Missing,
    /// A token that is not valid (401).
    Invalid(TokenError),
    /// Anything else, answered as it is (a 404, a 503...).
    Other(ApiError),
}

impl From<ApiError> for CallerError {
    fn from(e: ApiError) -> CallerError {
        CallerError::Other(e)
    }
}

impl IntoResponse for CallerError {
    fn into_response(self) -> Response {
        // RFC 6750: no error attribute when no token was sent.
        let (error, challenge) = match self {
            CallerError::Missing => (
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "token_missing",
                    "this route needs an AuthKit access token: send `Authorization: Bearer <token>`",
                ),
                format!("Bearer realm=\"{REALM}\""),
            ),
            CallerError::Invalid(e) => {
                let description = e.to_string().replace(['"', '\\'], "'");
                let challenge =
                    format!("Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"{description}\"");
                (ApiError::new(StatusCode::UNAUTHORIZED, e.code(), e.to_string()), challenge)
            }
            CallerError::Other(e) => return e.into_response(),
        };
        let mut response = error.into_response();
        if let Ok(value) = HeaderValue::from_str(&challenge) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, value);
        }
        response
    }
}

impl Caller {
    /// The caller of a request, or `None` when it sends no `Authorization`
    /// header at all; a header that does not hold a valid token is an error.
    pub async fn optional(parts: &mut Parts, state: &AppState) -> Result<(Arc<Tenant>, Option<Claims>), CallerError> {
        let tenant = tenant_of(parts, state).await?;
        let Some(value) = parts.headers.get(header::AUTHORIZATION) else {
            return Ok((tenant, None));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                CallerError::Invalid(TokenError::Malformed("the Authorization header is not `Bearer <token>`".into()))
            })?;
        let claims = verify(state, &tenant, token).await?;
        Ok((tenant, Some(claims)))
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = CallerError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Caller, CallerError> {
        match Caller::optional(parts, state).await? {
            (tenant, Some(claims)) => Ok(Caller { tenant, claims }),
            (_, None) => Err(CallerError::Missing),
        }
    }
}

/// Verifies `token` for `tenant`: its client id's keys, the accepted issuers.
async fn verify(state: &AppState, tenant: &Tenant, token: &str) -> Result<Claims, CallerError> {
    let client_id = tenant.client_id.as_deref().ok_or_else(|| client_id_not_configured(tenant))?;
    let unverified = jwt::decode(token).map_err(CallerError::Invalid)?;
    let key = match state.keys.key(client_id, unverified.kid()).await {
        Ok(key) => key,
        Err(KeyError::Unknown(kid)) => return Err(CallerError::Invalid(TokenError::UnknownKey(kid))),
        Err(e @ KeyError::Unavailable { .. }) => {
            warn!(tenant = %tenant.slug, error = %e, "an access token could not be checked");
            return Err(CallerError::Other(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "jwks_unavailable",
                format!(
                    "the token cannot be checked now: the signing keys could not be fetched from {}",
                    state.keys.url(client_id)
                ),
            )));
        }
    };
    let auth = &state.settings.auth;
    let issuers = auth.issuers_for(client_id);
    let rules = Rules { issuers: &issuers, leeway: auth.leeway };
    unverified.verify(&key, &rules, clock::now_ms() / 1000).map_err(CallerError::Invalid)
}

fn client_id_not_configured(tenant: &Tenant) -> CallerError {
    let hint = if tenant.is_default() {
        format!("set {}", env::CLIENT_ID)
    } else {
        format!("set its `client_id` (authkit-host tenants update {} --client-id ...)", tenant.slug)
    };
    CallerError::Other(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "client_id_not_configured",
        format!(
            "access tokens of tenant {:?} cannot be checked: its WorkOS client id is not configured; {hint}",
            tenant.slug
        ),
    ))
}

/// `GET /me`: the synced user the token is for, with the token's session claims.
pub async fn me(State(state): State<AppState>, caller: Caller) -> Result<Json<Value>, CallerError> {
    let store = state.tenants.store();
    let user = store.get_user(&caller.tenant.slug, &caller.claims.sub).await.map_err(|e| {
        error!(tenant = %caller.tenant.slug, error = %e, "a user could not be read");
        CallerError::Other(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "storage_unavailable",
            "the user could not be read; try again",
        ))
    })?;
    let Some(user) = user else {
        return Err(CallerError::Other(ApiError::new(
            StatusCode::NOT_FOUND,
            "user_not_synced",
            format!(
                "the token is valid, but user {:?} is not synced to this host yet: its user.created webhook has not arrived or not been applied",
                caller.claims.sub
            ),
        )));
    };
    let c = caller.claims;
    Ok(Json(json!({
        "user": user.view(),
        "sid": c.sid,
        "org_id": c.org_id,
        "role": c.role,
        "roles": c.roles,
        "permissions": c.permissions.unwrap_or_default(),
    })))
}

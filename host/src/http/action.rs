//! `POST /workos/action`: verify, decide in time, answer with a signed verdict.
//!
//! Owns: the [`VerifiedAction`] extractor (known tenant → its secret configured → size limit →
//! signature over the raw bytes with the Actions tolerance → a request of one of
//! the two kinds) and the route. Must not: decide (the pipeline does) or build
//! the response body by hand (see [`crate::workos::action`]).

use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, info_span};

use std::sync::Arc;

use super::error::ApiError;
use super::webhook::{Secrets, not_configured, read_signed};
use super::{AppState, tenant_of};
use crate::clock;
use crate::tenants::Tenant;
use crate::workos::action::{ActionRequest, response_body};

/// An Actions request whose signature verified and whose body is one of the two kinds.
pub struct VerifiedAction {
    pub tenant: Arc<Tenant>,
    pub request: ActionRequest,
}

impl FromRequest<AppState> for VerifiedAction {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let tenant = tenant_of(&mut parts, state).await?;
        let secret = tenant.action_secret.as_ref().ok_or_else(|| not_configured(&tenant, Secrets::Action))?;
        let limit = state.settings.webhook.max_body_bytes;
        let req = Request::from_parts(parts, body);
        let (body, _) = read_signed(req, secret, limit, state.settings.actions.tolerance).await?;
        let request = ActionRequest::parse(&body)?;
        Ok(VerifiedAction { tenant, request })
    }
}

pub async fn decide(State(state): State<AppState>, VerifiedAction { tenant, request }: VerifiedAction) -> Response {
    let span = info_span!("action", tenant = %tenant.slug, action_id = %request.id(), kind = request.kind().as_str());
    let decision = state.decider.decide(&tenant, &request).instrument(span).await;
    let secret = tenant.action_secret.as_ref().expect("checked by the extractor");
    let body = response_body(request.kind(), &decision.verdict, clock::now_ms(), secret);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

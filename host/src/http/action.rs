//! `POST /workos/action`: verify, decide in time, answer with a signed verdict.
//!
//! Owns: the [`VerifiedAction`] extractor (secret configured → size limit →
//! signature over the raw bytes with the Actions tolerance → a request of one of
//! the two kinds) and the route. Must not: decide (the pipeline does) or build
//! the response body by hand (see [`crate::workos::action`]).

use axum::extract::{FromRequest, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::{Instrument, info_span};

use super::AppState;
use super::error::ApiError;
use super::webhook::read_signed;
use crate::clock;
use crate::settings::env;
use crate::store::inbox::DEFAULT_TENANT;
use crate::workos::action::{ActionRequest, response_body};

/// An Actions request whose signature verified and whose body is one of the two kinds.
pub struct VerifiedAction(pub ActionRequest);

impl FromRequest<AppState> for VerifiedAction {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let secret = state.settings.workos.action_secret.as_ref().ok_or_else(|| {
            ApiError::not_configured("action_secret_not_configured", env::ACTION_SECRET, "the Actions signing secret")
        })?;
        let limit = state.settings.webhook.max_body_bytes;
        let (body, _) = read_signed(req, secret, limit, state.settings.actions.tolerance).await?;
        Ok(VerifiedAction(ActionRequest::parse(&body)?))
    }
}

pub async fn decide(State(state): State<AppState>, VerifiedAction(request): VerifiedAction) -> Response {
    let span = info_span!("action", action_id = %request.id(), kind = request.kind().as_str());
    let decision = state.decider.decide(DEFAULT_TENANT, &request).instrument(span).await;
    let secret = state.settings.workos.action_secret.as_ref().expect("checked by the extractor");
    let body = response_body(request.kind(), &decision.verdict, clock::now_ms(), secret);
    (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

//! `POST /workos/webhook`: verify, store durably, acknowledge.
//!
//! Owns: the [`VerifiedWebhook`] extractor (known tenant → its secret configured → size limit →
//! signature over the raw bytes → envelope parse, in that order) and the route.
//! Must not: write anything for a request that fails any check, or acknowledge
//! before the event is committed.

use std::sync::Arc;

use axum::body::Body;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request, State};
use axum::http::HeaderMap;
use axum::http::HeaderValue;
use axum::http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use tracing::{Instrument, info_span};

use super::error::ApiError;
use super::{AppState, tenant_of};
use crate::clock;
use crate::pipeline::ingest::Accepted;
use crate::settings::env;
use crate::store::inbox::NewEvent;
use crate::tenants::Tenant;
use crate::workos::event::Event;
use crate::workos::signature::{self, SIGNATURE_HEADER, Secret};

/// A webhook whose signature verified and whose body is an event.
pub struct VerifiedWebhook {
    pub tenant: Arc<Tenant>,
    pub event: Event,
    /// The body exactly as received (valid UTF-8: it parsed as JSON).
    pub body: String,
    pub received_at: i64,
}

impl FromRequest<AppState> for VerifiedWebhook {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (mut parts, body) = req.into_parts();
        let tenant = tenant_of(&mut parts, state).await?;
        let secret = tenant.webhook_secret.as_ref().ok_or_else(|| not_configured(&tenant, Secrets::Webhook))?;
        let limit = state.settings.webhook.max_body_bytes;
        let req = Request::from_parts(parts, body);
        let (body, received_at) = read_signed(req, secret, limit, state.settings.webhook.tolerance).await?;
        let event = Event::parse(&body)?;
        // `Vec::from(Bytes)` takes the buffer over without copying when it is not shared.
        let body = String::from_utf8(Vec::from(body))
            .map_err(|_| ApiError::new(axum::http::StatusCode::BAD_REQUEST, "invalid_json", "the body is not UTF-8"))?;
        Ok(VerifiedWebhook { tenant, event, body, received_at })
    }
}

/// Which of a tenant's secrets.
#[derive(Clone, Copy)]
pub enum Secrets {
    Webhook,
    Action,
}

/// 503: the tenant has no such secret yet; says where to set it.
pub fn not_configured(tenant: &Tenant, which: Secrets) -> ApiError {
    let (code, variable, field, what) = match which {
        Secrets::Webhook => {
            ("webhook_secret_not_configured", env::WEBHOOK_SECRET, "webhook_secret", "the webhook signing secret")
        }
        Secrets::Action => {
            ("action_secret_not_configured", env::ACTION_SECRET, "action_secret", "the Actions signing secret")
        }
    };
    if tenant.is_default() {
        ApiError::not_configured(code, variable, what)
    } else {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!(
                "{what} of tenant {:?} is not configured: set its `{field}` (authkit-host tenants update {} --{})",
                tenant.slug,
                tenant.slug,
                field.replace('_', "-")
            ),
        )
    }
}

/// The body of a signed WorkOS request, in this order: the declared length within
/// `limit` (else 413), the body read up to `limit` (else 413), then the signature
/// over the raw bytes within `tolerance` of now (else 401). Returns the body and
/// when it was received (unix ms).
pub async fn read_signed(
    req: Request,
    secret: &Secret,
    limit: usize,
    tolerance: std::time::Duration,
) -> Result<(Bytes, i64), ApiError> {
    let (parts, body) = req.into_parts();
    let body = read_body(&parts.headers, body, limit).await?;
    let received_at = clock::now_ms();
    let header = parts.headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    signature::verify(secret, header, &body, received_at, tolerance)?;
    Ok((body, received_at))
}

/// A refused body is still read and thrown away, up to this many bytes and
/// for this long, before the 413 goes out: closing a connection with unread
/// data resets it, and a client still sending would then lose the answer.
/// A larger declared body is not read at all (its client may see the reset).
const DISCARD_MAX_BYTES: u64 = 8 * 1024 * 1024;
const DISCARD_MAX_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// A request body of at most `limit` bytes: a larger declared length is refused
/// without keeping anything, a body that turns out larger while being read too
/// (413). Either way the rest is read and dropped first, within the bounds above.
pub(super) async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let declared = headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|len| len > limit as u64) {
        discard(&mut body, declared).await;
        return Err(ApiError::payload_too_large(limit));
    }
    match Limited::new(&mut body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            discard(&mut body, None).await;
            Err(ApiError::payload_too_large(limit))
        }
        Err(e) => Err(ApiError::new(
            axum::http::StatusCode::BAD_REQUEST,
            "body_unreadable",
            format!("the request body could not be read: {e}"),
        )),
    }
}

/// Reads what is left of `body` and drops it, within [`DISCARD_MAX_BYTES`] and
/// [`DISCARD_MAX_TIME`]; nothing if the declared length is past that.
async fn discard(body: &mut Body, declared: Option<u64>) {
    if declared.is_some_and(|len| len > DISCARD_MAX_BYTES) {
        return;
    }
    let drain = async {
        let mut seen = 0u64;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len() as u64);
            if seen > DISCARD_MAX_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(DISCARD_MAX_TIME, drain).await;
}

/// The acknowledgement bodies, exactly as `serde_json` would write them
/// (keys in order), prepared once: every webhook gets one of the two.
const ACK_NEW: &str = r#"{"duplicate":false,"received":true}"#;
const ACK_DUPLICATE: &str = r#"{"duplicate":true,"received":true}"#;

pub async fn receive(State(state): State<AppState>, webhook: VerifiedWebhook) -> Result<Response, ApiError> {
    let VerifiedWebhook { tenant, event, body, received_at } = webhook;
    let span = info_span!("webhook", tenant = %tenant.slug, event_id = %event.id, event_type = %event.event);
    let new_event = NewEvent {
        tenant_id: tenant.slug.clone(),
        occurred_at: event.created_at_ms.unwrap_or(received_at),
        event_id: event.id,
        event_type: event.event,
        subject: event.subject,
        received_at,
        payload: body,
        tenant_created_at: Some(tenant.created_at),
    };
    let accepted = state.ingest.submit(new_event).instrument(span).await?;
    let ack = if accepted == Accepted::Duplicate { ACK_DUPLICATE } else { ACK_NEW };
    Ok(([(CONTENT_TYPE, HeaderValue::from_static("application/json"))], ack).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_acknowledgements_are_the_json_they_say() {
        for (text, duplicate) in [(ACK_NEW, false), (ACK_DUPLICATE, true)] {
            assert_eq!(text, serde_json::json!({ "received": true, "duplicate": duplicate }).to_string());
        }
    }
}

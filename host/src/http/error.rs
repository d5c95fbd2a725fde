//! The one error type that reaches HTTP clients.
//!
//! Owns: the JSON error shape `{"error": {"code": "...", "message": "..."}}`, the
//! stable codes, and the mapping from module errors to statuses. Must not: leak
//! internal causes; a host fault is logged with its cause and answered with an
//! opaque 500 (or 503 when retrying later can help).

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;
use tracing::error;

use crate::pipeline::ingest::IngestError;
use crate::workos::action::ActionError;
use crate::workos::event::EventError;
use crate::workos::signature::SignatureError;

/// A public error: status, stable machine-readable code, human message.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }

    pub fn not_found() -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    pub fn method_not_allowed() -> ApiError {
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "this route does not accept that method")
    }

    pub fn payload_too_large(limit: usize) -> ApiError {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("the body is larger than {limit} bytes"),
        )
    }

    pub fn not_configured(code: &'static str, variable: &str, what: &str) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            code,
            format!("{what} is not configured: set {variable} to the secret from the WorkOS dashboard and restart"),
        )
    }
}

impl From<SignatureError> for ApiError {
    fn from(e: SignatureError) -> ApiError {
        let code = match e {
            SignatureError::Missing => "signature_missing",
            SignatureError::Malformed(_) => "signature_malformed",
            SignatureError::Mismatch => "signature_mismatch",
            SignatureError::Expired { .. } => "signature_expired",
            SignatureError::FromFuture { .. } => "signature_from_future",
        };
        ApiError::new(StatusCode::UNAUTHORIZED, code, e.to_string())
    }
}

impl From<EventError> for ApiError {
    fn from(e: EventError) -> ApiError {
        let code = match e {
            EventError::InvalidJson(_) => "invalid_json",
            EventError::NotAnEvent(_) | EventError::BadField(_) => "invalid_event",
            EventError::InvalidData { .. } => "invalid_event_data",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<ActionError> for ApiError {
    fn from(e: ActionError) -> ApiError {
        let code = match &e {
            ActionError::InvalidJson(_) => "invalid_json",
            ActionError::NotAnObject | ActionError::UnknownKind(_) | ActionError::Invalid { .. } => "invalid_action",
        };
        ApiError::new(StatusCode::BAD_REQUEST, code, e.to_string())
    }
}

impl From<IngestError> for ApiError {
    /// The cause was logged where it happened; WorkOS retries on a 503.
    fn from(e: IngestError) -> ApiError {
        match e {
            IngestError::Store(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "storage_unavailable",
                "the event could not be stored; retry later",
            ),
            IngestError::Closed => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the host is shutting down; retry later",
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if self.status.is_server_error() && self.status != StatusCode::SERVICE_UNAVAILABLE {
            error!(code = self.code, message = %self.message, "request failed");
        }
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

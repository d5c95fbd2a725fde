//! `POST /query/{name}`: a tenant's read-only query, for its app.
//!
//! Owns: the route, the body (the query's JSON arguments, within
//! `queries.max_body_bytes`), the optional caller (a token that is sent must
//! verify, see [`super::caller`]), and how each outcome is answered. Must not:
//! run the guest itself (that is [`crate::pipeline::queries`]).

use axum::extract::{FromRequestParts, RawPathParams, Request, State};
use axum::http::request::Parts;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tracing::error;

use super::AppState;
use super::caller::{Caller, CallerError};
use super::error::ApiError;
use super::webhook::read_body;
use crate::pipeline::queries::{self, QueryError, QueryRequest};

/// A query name longer than this is refused before any guest runs.
const MAX_NAME_LEN: usize = 256;
/// A guest's error message is cut to this many bytes.
const MAX_MESSAGE_LEN: usize = 2000;

pub async fn run(State(state): State<AppState>, req: Request) -> Result<Response, CallerError> {
    let (mut parts, body) = req.into_parts();
    let name = query_name(&mut parts, &state).await?;
    let (tenant, claims) = Caller::optional(&mut parts, &state).await?;
    let body = read_body(&parts.headers, body, state.settings.queries.max_body_bytes).await?;
    let args_json = if body.iter().all(u8::is_ascii_whitespace) {
        "null".to_string()
    } else {
        // `Vec::from(Bytes)` takes the buffer over without copying when it is not shared.
        let text = String::from_utf8(Vec::from(body))
            .map_err(|_| ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", "the body is not UTF-8"))?;
        serde_json::from_str::<serde::de::IgnoredAny>(&text).map_err(|e| {
            ApiError::new(StatusCode::BAD_REQUEST, "invalid_json", format!("the body is not JSON: {e}"))
        })?;
        text
    };
    let request = QueryRequest { name, args_json, claims };
    match queries::run(&state.tenants, &tenant, request).await {
        Ok(answer) => Ok(([(header::CONTENT_TYPE, "application/json")], answer).into_response()),
        Err(e) => Err(CallerError::Other(answer_error(e))),
    }
}

/// The query's name, from the path: 1 to [`MAX_NAME_LEN`] bytes.
async fn query_name(parts: &mut Parts, state: &AppState) -> Result<String, ApiError> {
    let params = RawPathParams::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found())?;
    let name = params.iter().find(|(k, _)| *k == "name").map(|(_, v)| v.to_string()).unwrap_or_default();
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query_name",
            format!("a query name is 1 to {MAX_NAME_LEN} bytes"),
        ));
    }
    Ok(name)
}

fn answer_error(e: QueryError) -> ApiError {
    match e {
        QueryError::NoQueries(_) => ApiError::new(StatusCode::NOT_FOUND, "no_queries", e.to_string()),
        QueryError::Busy { .. } => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "queries_busy", e.to_string()),
        QueryError::UserNotSynced(_) => ApiError::new(StatusCode::NOT_FOUND, "user_not_synced", e.to_string()),
        QueryError::Returned(message) => {
            let mut message = message;
            if message.len() > MAX_MESSAGE_LEN {
                let cut = (0..=MAX_MESSAGE_LEN).rev().find(|i| message.is_char_boundary(*i)).unwrap_or(0);
                message.truncate(cut);
            }
            ApiError::new(StatusCode::BAD_REQUEST, "query_error", message)
        }
        QueryError::Deadline(_) => ApiError::new(StatusCode::GATEWAY_TIMEOUT, "query_timeout", e.to_string()),
        // Logged with its cause and the guest's log by the pipeline; the app gets no internals.
        QueryError::Failed(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "query_failed",
            "the query failed; the host's log has the reason",
        ),
        QueryError::Unavailable(reason) => {
            error!(reason = %reason, "a query could not be run");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "query_unavailable",
                "the query could not be run now; try again",
            )
        }
    }
}

//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}` with an HTTP status
//! (and `Retry-After` where trying again later helps).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;
use turbine_batcher::SubmitError;

/// An API error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Human-readable message.
    pub message: String,
    /// OpenAI error type.
    pub kind: &'static str,
    /// The request field at fault.
    pub param: Option<String>,
    /// Seconds after which the client may try again (`Retry-After`).
    pub retry_after: Option<u32>,
    /// Close the connection after this answer (`Connection: close`): the rest of the request
    /// cannot be trusted to arrive or to be read.
    pub close: bool,
}

impl ApiError {
    /// An error with a status and a type.
    pub fn new(status: StatusCode, kind: &'static str, message: impl Into<String>) -> Self {
        ApiError { status, message: message.into(), kind, param: None, retry_after: None, close: false }
    }

    /// 400 naming a field.
    pub fn invalid(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError { param: Some(param.into()), ..Self::bad_request(message) }
    }

    /// 400 about the request as a whole.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request_error", message)
    }

    /// 503: not serving now (loading, shutting down); try again after `secs`.
    pub fn unavailable(message: impl Into<String>, secs: u32) -> Self {
        ApiError { retry_after: Some(secs), ..Self::new(StatusCode::SERVICE_UNAVAILABLE, "server_error", message) }
    }

    /// 413: the body is over `limit` bytes (the connection is closed: the rest is not read).
    pub fn too_large(limit: usize) -> Self {
        ApiError {
            close: true,
            ..Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "invalid_request_error",
                format!("the request body is over the limit of {limit} bytes (limits.max_body_bytes)"),
            )
        }
    }

    /// 408: the body arrived too slowly (the connection is closed).
    pub fn body_timeout(message: impl Into<String>) -> Self {
        ApiError { close: true, ..Self::new(StatusCode::REQUEST_TIMEOUT, "invalid_request_error", message) }
    }

    /// 500: our fault, never the client's.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "server_error", message)
    }
}

impl From<SubmitError> for ApiError {
    fn from(e: SubmitError) -> Self {
        match e {
            SubmitError::Invalid(m) => ApiError::bad_request(m),
            e @ SubmitError::TooLong { .. } => ApiError::invalid("max_tokens", e.to_string()),
            e @ SubmitError::QueueFull { .. } => ApiError {
                retry_after: Some(1),
                ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", e.to_string())
            },
            SubmitError::ShutDown => ApiError::unavailable("the server is shutting down", 5),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = self.status.as_u16();
        let body = json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": code}});
        let mut resp = (self.status, Json(body)).into_response();
        if let Some(s) = self.retry_after {
            resp.headers_mut().insert(header::RETRY_AFTER, s.into());
        }
        if self.close {
            resp.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        resp
    }
}

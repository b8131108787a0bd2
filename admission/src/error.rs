//! Every answer that is not an AdmissionReview: one error type for the webhook's HTTP
//! statuses (400, 404, 408, 413, 415, 503), written once as a JSON body
//! `{"status", "error", "message"}` by its [`IntoResponse`].

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use dedupe_store::error::Chain;
use dedupe_store::StoreError;
use serde_json::json;

use crate::metrics::Metrics;
use crate::review::ReviewError;

/// Why no decision could be made (HTTP 503, so the API server applies its failurePolicy).
#[derive(Debug, thiserror::Error)]
pub enum AdmitError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the claim kept changing under concurrent take-overs; retry")]
    Contention,
}

/// A request answered with an HTTP error instead of an AdmissionReview.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// 415.
    #[error("content type must be application/json, got {0:?}")]
    UnsupportedMediaType(String),
    /// 413.
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// 400: the body could not be read (the client went away, a broken chunk).
    #[error("could not read the request body")]
    Body(#[source] axum::Error),
    /// 400: not a usable AdmissionReview.
    #[error(transparent)]
    Review(#[from] ReviewError),
    /// 404.
    #[error("no route for {path}")]
    NotFound { path: String },
    /// 503.
    #[error("no decision could be made")]
    Unavailable(#[from] AdmitError),
    /// 503: every `--max-concurrent-requests` slot stayed busy for the read timeout.
    #[error("too many requests in progress (limit {limit}); retry")]
    Overloaded { limit: usize },
    /// 408: the body was not fully read within `--request-read-timeout-ms`.
    #[error("the request body was not read within {after:?}")]
    RequestTimeout { after: std::time::Duration },
}

impl HttpError {
    pub fn status(&self) -> StatusCode {
        match self {
            HttpError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            HttpError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            HttpError::Body(_) | HttpError::Review(_) => StatusCode::BAD_REQUEST,
            HttpError::NotFound { .. } => StatusCode::NOT_FOUND,
            HttpError::Unavailable(_) | HttpError::Overloaded { .. } => StatusCode::SERVICE_UNAVAILABLE,
            HttpError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The message the client sees: this error and its causes, outermost first.
    pub fn message(&self) -> String {
        Chain(self).to_string()
    }

    /// Counts the error in `orchestration_dedupe_http_errors_total`, logs it, and answers.
    pub fn counted(self, metrics: &Metrics) -> Response {
        let status = self.status();
        metrics.http_error(status.as_u16());
        if let HttpError::Unavailable(_) = self {
            // Already logged where it happened, with the claim key: one line per 503.
        } else if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), "{}", self.message());
        } else {
            tracing::info!(status = status.as_u16(), "rejected request: {}", self.message());
        }
        self.into_response()
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let status = self.status();
        let body = json!({
            "status": status.as_u16(),
            "error": status.canonical_reason().unwrap_or_default(),
            "message": self.message(),
        });
        (status, Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_carries_every_cause_once() {
        let e = HttpError::from(AdmitError::Store(StoreError::Timeout(
            std::time::Duration::from_secs(2),
        )));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            e.message(),
            "no decision could be made: claim store did not answer within 2s"
        );
    }
}

//! [`ApiError`]: every way a request can fail, and the one place that turns
//! each into a status code and a plain `{"error": "..."}` body.
//!
//! Client-facing text is fixed here; store and library errors are logged in
//! full and answered with a generic message, so no SQL, path or library text
//! ever reaches a client.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::image::ValidationError;
use crate::store::StoreError;

/// Handlers return `Result<T>`; `?` does the rest.
pub type Result<T, E = ApiError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("request body is not valid JSON")]
    BadJson,
    #[error("could not read the request body")]
    UnreadableBody,
    #[error("the request body took too long to arrive")]
    SlowBody,
    #[error("{0}")]
    Invalid(#[from] ValidationError),
    #[error("{0}")]
    BadQuery(String),
    #[error("{0}")]
    BadHeader(String),
    #[error("this Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    #[error("request body is larger than {} KiB", crate::api::MAX_BODY_BYTES / 1024)]
    TooLarge,
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the database cannot be reached")]
    DatabaseUnavailable,
    #[error("internal error: {0}")]
    Internal(String),
}

impl ApiError {
    fn status(&self) -> StatusCode {
        match self {
            ApiError::BadJson
            | ApiError::UnreadableBody
            | ApiError::Invalid(_)
            | ApiError::BadQuery(_)
            | ApiError::BadHeader(_) => StatusCode::BAD_REQUEST,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::SlowBody => StatusCode::REQUEST_TIMEOUT,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::DatabaseUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(e) if e.is_busy() => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Store(_) | ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The text a client sees.
    fn public_message(&self) -> String {
        match self {
            ApiError::Store(e) if e.is_unavailable() => {
                "the database is unavailable; please retry shortly".to_string()
            }
            ApiError::Store(e) if e.is_busy() => {
                "the database is busy; please retry shortly".to_string()
            }
            ApiError::Store(_) | ApiError::Internal(_) => "internal server error".to_string(),
            other => other.to_string(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        }
        let mut response = (
            status,
            json_body(&json!({ "error": self.public_message() })),
        )
            .into_response();
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// A compact JSON body with the JSON content type and a trailing newline.
pub(crate) fn json_body(value: &serde_json::Value) -> Response {
    let mut text = value.to_string();
    text.push('\n');
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        text,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_internal_error_keeps_its_cause_for_the_log_but_not_for_the_client() {
        let error = ApiError::Internal("handler panicked".into());
        assert_eq!(error.to_string(), "internal error: handler panicked");
        assert_eq!(error.public_message(), "internal server error");
    }

    #[test]
    fn a_database_server_that_cannot_be_reached_is_a_503_that_names_nothing() {
        let secret = "postgres://gallery@10.1.2.3:5432/gallery: connection refused";
        for error in [
            StoreError::Unreachable(secret.into()),
            StoreError::CannotConnect {
                server: "10.1.2.3:5432".into(),
                who: " (database gallery, user gallery)".into(),
                reason: "connection refused".into(),
            },
        ] {
            let error = ApiError::Store(error);
            assert_eq!(error.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert_eq!(
                error.public_message(),
                "the database is unavailable; please retry shortly"
            );
            let response = error.into_response();
            assert_eq!(response.headers()[header::RETRY_AFTER], "1");
        }
        let busy = ApiError::Store(StoreError::Busy(
            "canceling statement due to lock timeout".into(),
        ));
        assert_eq!(busy.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(
            busy.public_message(),
            "the database is busy; please retry shortly"
        );
    }
}

//! One error type for every handler and middleware, answered as API.md's body
//! `{"error": {"code", "message"}}` with the status its code implies.

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use ledger::error::Class;
use node::ClientError;
use tracing::warn;

/// An answer that is not a success.
#[derive(Debug, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct AppError {
    pub status: StatusCode,
    /// A stable snake_case code (the ledger's, or one of the gateway's own below).
    pub code: &'static str,
    pub message: String,
}

/// The gateway's own codes, next to the ledger's (`ledger::Code`).
pub mod code {
    pub const INVALID_INPUT: &str = "invalid_input";
    pub const INVALID_AMOUNT: &str = "invalid_amount";
    pub const INVALID_TIME: &str = "invalid_time";
    pub const UNAUTHORIZED: &str = "unauthorized";
    pub const INVALID_CREDENTIALS: &str = "invalid_credentials";
    pub const FORBIDDEN: &str = "forbidden";
    pub const NOT_FOUND: &str = "not_found";
    pub const METHOD_NOT_ALLOWED: &str = "method_not_allowed";
    pub const BODY_TOO_LARGE: &str = "body_too_large";
    pub const RATE_LIMITED: &str = "rate_limited";
    pub const UNAVAILABLE: &str = "unavailable";
    pub const OVERLOADED: &str = "overloaded";
    pub const TIMEOUT: &str = "timeout";
    pub const NOT_READY: &str = "not_ready";
    pub const INTERNAL: &str = "internal";
    pub const NOT_IMPLEMENTED: &str = "not_implemented";
    pub const CATALOG_BEHIND: &str = "catalog_behind";
    pub const SEARCH_UNAVAILABLE: &str = "search_unavailable";
    pub const STILL_FAILING: &str = "still_failing";
    pub const UNSUPPORTED_IMAGE: &str = "unsupported_image";
    pub const IMAGE_TOO_LARGE: &str = "image_too_large";
}

impl AppError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> AppError {
        AppError { status, code, message: message.into() }
    }

    pub fn invalid(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::BAD_REQUEST, code::INVALID_INPUT, message)
    }

    pub fn unauthorized(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::UNAUTHORIZED, code::UNAUTHORIZED, message)
    }

    pub fn forbidden(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::FORBIDDEN, code::FORBIDDEN, message)
    }

    pub fn unavailable(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::SERVICE_UNAVAILABLE, code::UNAVAILABLE, message)
    }

    pub fn internal(message: impl Into<String>) -> AppError {
        AppError::new(StatusCode::INTERNAL_SERVER_ERROR, code::INTERNAL, message)
    }

    /// A ledger rejection (from a command's outcome or a local check).
    pub fn rejected(code: &str, message: impl Into<String>) -> AppError {
        match ledger::Code::parse(code) {
            Some(c) => AppError::new(status_of(c.class()), c.as_str(), message),
            // A code this gateway does not know comes from a newer ledger: still a refusal.
            None => AppError::new(StatusCode::CONFLICT, "rejected", format!("{code}: {}", message.into())),
        }
    }
}

fn status_of(class: Class) -> StatusCode {
    match class {
        Class::BadRequest => StatusCode::BAD_REQUEST,
        Class::Forbidden => StatusCode::FORBIDDEN,
        Class::NotFound => StatusCode::NOT_FOUND,
        Class::Conflict => StatusCode::CONFLICT,
    }
}

impl From<ledger::Rejection> for AppError {
    fn from(r: ledger::Rejection) -> AppError {
        AppError::new(status_of(r.code.class()), r.code.as_str(), r.message)
    }
}

impl From<&ledger::pb::Rejection> for AppError {
    fn from(r: &ledger::pb::Rejection) -> AppError {
        AppError::rejected(&r.code, r.message.clone())
    }
}

impl From<ClientError> for AppError {
    fn from(e: ClientError) -> AppError {
        match &e {
            ClientError::Refused(status) if status.code() == tonic::Code::InvalidArgument => {
                AppError::invalid(status.message().to_owned())
            }
            _ => {
                warn!(error = %e, "cluster request failed");
                AppError::unavailable(format!(
                    "no leader reachable right now; retrying with the same ids is safe ({e})"
                ))
            }
        }
    }
}

impl From<JsonRejection> for AppError {
    fn from(rejection: JsonRejection) -> AppError {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return AppError::new(StatusCode::PAYLOAD_TOO_LARGE, code::BODY_TOO_LARGE, rejection.body_text());
        }
        AppError::invalid(rejection.body_text())
    }
}

impl From<PathRejection> for AppError {
    fn from(rejection: PathRejection) -> AppError {
        AppError::invalid(rejection.body_text())
    }
}

impl From<QueryRejection> for AppError {
    fn from(rejection: QueryRejection) -> AppError {
        AppError::invalid(rejection.body_text())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = ledger::view::error(self.code, &self.message);
        (self.status, axum::Json(body)).into_response()
    }
}

//! The one error type every handler returns, and its JSON shape.

use axum::response::{IntoResponse, Response};
use deskpool_domain::SpecError;
use deskpool_store::StoreError;
use http::{header, HeaderValue, StatusCode};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// The body of every error response: `{"error": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// What went wrong, in a stable machine-readable code and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable code, e.g. `invalid_field`, `not_found`, `database_unavailable`.
    pub code: String,
    /// What is wrong and, where possible, how to fix it.
    pub message: String,
    /// The offending field, header or query parameter, when one is to blame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

/// An error answered to the client. Built by handlers and extractors; never a panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: StatusCode,
    /// Stable code.
    pub code: &'static str,
    /// Readable message.
    pub message: String,
    /// Offending field, if any.
    pub field: Option<String>,
}

impl ApiError {
    /// An error without a field.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }

    /// Names the field to blame.
    pub fn with_field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub(crate) fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    pub(crate) fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", message)
    }

    pub(crate) fn bad_query(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_query", message).with_field(field)
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message).with_field(field)
    }

    pub(crate) fn pool_not_found(name: &str) -> Self {
        Self::not_found(format!("no pool named '{name}'"))
    }

    pub(crate) fn internal() -> Self {
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal error; see the server log",
        )
    }

    pub(crate) fn db_unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "database_unavailable",
            "the database is unavailable; retry later",
        )
    }
}

impl From<SpecError> for ApiError {
    fn from(e: SpecError) -> Self {
        Self::invalid(e.field, e.message)
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        StoreError::from(e).into()
    }
}

/// SQLSTATE classes that mean the server, not the request, is at fault: connection exceptions
/// (08), insufficient resources (53), operator intervention such as a shutdown (57).
fn sqlstate_unavailable(code: &str) -> bool {
    code.starts_with("08") || code.starts_with("53") || code.starts_with("57")
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::NotFound { what, name } => Self::not_found(format!("no {what} named '{name}'")),
            StoreError::Conflict { constraint, message } => {
                let err = Self::new(StatusCode::CONFLICT, "conflict", message.clone());
                if constraint == "pools_name_key" {
                    err.with_field("name")
                } else {
                    err
                }
            }
            StoreError::Invalid { constraint, message } => match constraint.as_str() {
                "pools_size_bounds" => Self::invalid("target_size", message.clone()),
                "pools_name_slug" => Self::invalid("name", message.clone()),
                _ => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message.clone()),
            },
            StoreError::PoolDeleting { .. } => Self::new(StatusCode::CONFLICT, "pool_deleting", e.to_string()),
            StoreError::VcenterFixed { .. } => Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", e.to_string()),
            StoreError::VersionMismatch { current } => Self::new(
                StatusCode::PRECONDITION_FAILED,
                "version_mismatch",
                format!("If-Match does not match: the pool is now at version {current}; reload and retry"),
            )
            .with_field("If-Match"),
            StoreError::Db(sqlx::Error::Database(db)) => {
                let code = db.code().unwrap_or_default();
                if sqlstate_unavailable(&code) {
                    tracing::warn!(error = %e, "database unavailable");
                    Self::db_unavailable()
                } else if code.starts_with("22") {
                    // Data exceptions (a NUL byte, an out-of-range value) come from input that
                    // slipped past validation: still the client's input, so still a 4xx.
                    Self::new(StatusCode::BAD_REQUEST, "invalid_input", db.message().to_owned())
                } else if code == "40001" || code == "40P01" {
                    Self::new(
                        StatusCode::CONFLICT,
                        "concurrent_update",
                        "a concurrent change interfered; retry",
                    )
                } else {
                    tracing::error!(error = %e, "database error");
                    Self::internal()
                }
            }
            _ if e.is_unavailable() => {
                tracing::warn!(error = %e, "database unavailable");
                Self::db_unavailable()
            }
            _ => {
                tracing::error!(error = %e, "store error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_owned(),
                message: self.message,
                field: self.field,
            },
        };
        let mut res = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"deskpool\""),
            );
        }
        res
    }
}

/// Result of a handler.
pub type ApiResult<T> = Result<T, ApiError>;

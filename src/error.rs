//! One error type for every HTTP answer that is not a success (spec §1.6, §3.11).
//!
//! `ApiError` decides status, code and retry headers. The body is rendered in the REST shape
//! here; the response also carries the [`ErrorReport`] so that the outer middleware can re-render
//! it in the OpenAI shape on the chat completions path and log internal causes with the request id.

use std::collections::BTreeMap;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    BadRequest {
        message: String,
        param: Option<String>,
        fields: BTreeMap<String, String>,
    },
    #[error("missing or malformed API key")]
    Unauthorized,
    #[error("invalid API key")]
    InvalidApiKey,
    #[error("{message}")]
    NotFound { message: String, param: Option<String> },
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("{message}")]
    Conflict { message: String, details: Option<Value> },
    #[error("request body is too large")]
    PayloadTooLarge,
    /// The request's headers are too many or too large (spec §1.9).
    #[error("{0}")]
    HeadersTooLarge(String),
    /// A rate limit, ours or the provider's; `retry_after` becomes `Retry-After`/`retry-after-ms`.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// The model provider failed, refused or answered something unusable. `message` is safe to
    /// show; `cause` goes to the log only.
    #[error("{message}")]
    Upstream { message: String, cause: String },
    /// The model provider did not answer in time.
    #[error("the model provider did not answer in time")]
    UpstreamTimeout,
    /// An unexpected fault. The string is for the log only; the client sees "internal error".
    #[error("internal error")]
    Internal(String),
    /// The database is unreachable or the server is draining. The string is for the log only.
    #[error("service unavailable")]
    Unavailable(String),
}

impl ApiError {
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::BadRequest {
            message: message.into(),
            param: None,
            fields: BTreeMap::new(),
        }
    }

    /// A validation failure of one field, named by its JSON path.
    pub fn invalid_field(path: &str, problem: impl Into<String>) -> Self {
        let mut fields = BTreeMap::new();
        fields.insert(path.to_string(), problem.into());
        Self::invalid_fields(fields)
    }

    /// A validation failure listing every failing field (spec §0.4 rule 8).
    pub fn invalid_fields(fields: BTreeMap<String, String>) -> Self {
        let message = fields
            .iter()
            .map(|(path, problem)| format!("invalid field {path}: {problem}"))
            .collect::<Vec<_>>()
            .join("; ");
        let param = fields.keys().next().cloned();
        Self::BadRequest { message, param, fields }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound {
            message: message.into(),
            param: None,
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict {
            message: message.into(),
            details: None,
        }
    }

    pub fn internal(cause: impl std::fmt::Display) -> Self {
        Self::Internal(cause.to_string())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadRequest { .. } => StatusCode::BAD_REQUEST,
            Self::Unauthorized | Self::InvalidApiKey => StatusCode::UNAUTHORIZED,
            Self::NotFound { .. } => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict { .. } => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::Upstream { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub fn code(&self) -> &'static str {
        match self {
            Self::BadRequest { .. } => "bad_request",
            Self::Unauthorized => "unauthorized",
            Self::InvalidApiKey => "invalid_api_key",
            Self::NotFound { .. } => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::Conflict { .. } => "conflict",
            Self::PayloadTooLarge => "payload_too_large",
            Self::HeadersTooLarge(_) => "headers_too_large",
            Self::RateLimited { .. } => "rate_limited",
            Self::Upstream { .. } => "upstream_error",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::Internal(_) => "internal_error",
            Self::Unavailable(_) => "unavailable",
        }
    }

    /// The error for a framework-level answer that carries only a status (unknown route, wrong
    /// method, body limit), so that it too gets a JSON body.
    pub fn from_status(status: StatusCode) -> Self {
        match status {
            StatusCode::NOT_FOUND => Self::not_found("no such route"),
            StatusCode::METHOD_NOT_ALLOWED => Self::MethodNotAllowed,
            StatusCode::PAYLOAD_TOO_LARGE => Self::PayloadTooLarge,
            StatusCode::UNAUTHORIZED => Self::Unauthorized,
            StatusCode::SERVICE_UNAVAILABLE => Self::Unavailable(String::new()),
            s if s.is_client_error() => Self::bad_request(s.canonical_reason().unwrap_or("bad request").to_lowercase()),
            s => Self::Internal(format!("framework answered {s}")),
        }
    }

    pub fn report(&self) -> ErrorReport {
        let (param, details) = match self {
            Self::BadRequest { param, fields, .. } => {
                let details = (!fields.is_empty()).then(|| json!({ "fields": fields }));
                (param.clone(), details)
            }
            Self::NotFound { param, .. } => (param.clone(), None),
            Self::Conflict { details, .. } => (None, details.clone()),
            _ => (None, None),
        };
        let message = self.to_string();
        let log_cause = match self {
            Self::Internal(cause) | Self::Unavailable(cause) | Self::Upstream { cause, .. } if !cause.is_empty() => {
                Some(cause.clone())
            }
            _ => None,
        };
        let retry_after = match self {
            Self::RateLimited { retry_after, .. } => Some(*retry_after),
            _ => None,
        };
        ErrorReport {
            status: self.status(),
            code: self.code(),
            message,
            param,
            details,
            log_cause,
            retry_after,
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(err: sqlx::Error) -> Self {
        if crate::store::unreachable(&err) {
            Self::Unavailable(format!("database: {err}"))
        } else {
            Self::Internal(format!("database: {err}"))
        }
    }
}

/// Everything needed to render an error in either shape, kept in the response extensions.
#[derive(Debug, Clone)]
pub struct ErrorReport {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
    pub param: Option<String>,
    pub details: Option<Value>,
    /// The real cause of a 5xx, logged with the request id, never sent.
    pub log_cause: Option<String>,
    /// A known wait before retrying (429, or a provider's hint).
    pub retry_after: Option<std::time::Duration>,
}

/// Which JSON shape an error body takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorShape {
    /// `{"error", "code", "details"}` (spec §1.6).
    Rest,
    /// `{"error": {"message", "type", "code", "param"}}` (spec §3.11).
    OpenAi,
}

impl ErrorReport {
    /// The OpenAI error object (spec §3.11) without its `{"error": …}` wrapper, as written in a
    /// stream's error frame.
    pub fn openai_error(&self) -> Value {
        json!({"message": self.message, "type": openai_type(self.status), "code": self.code, "param": self.param})
    }

    pub fn body(&self, shape: ErrorShape) -> Value {
        match shape {
            ErrorShape::Rest => {
                let mut body = json!({ "error": self.message, "code": self.code });
                if let Some(details) = &self.details {
                    body["details"] = details.clone();
                }
                body
            }
            ErrorShape::OpenAi => json!({ "error": self.openai_error() }),
        }
    }

    /// Builds the response: body in `shape`, status, and the retry and auth headers of §1.6.
    pub fn into_response(self, shape: ErrorShape) -> Response {
        let mut response = (self.status, Json(self.body(shape))).into_response();
        let headers = response.headers_mut();
        match self.status.as_u16() {
            400 | 404 | 409 | 413 => {
                headers.insert("x-should-retry", HeaderValue::from_static("false"));
            }
            401 => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            503 => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        if let Some(wait) = self.retry_after {
            let ms = wait.as_millis().max(1);
            let seconds = ms.div_ceil(1000).max(1);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds as u64));
            headers.insert("retry-after-ms", HeaderValue::from(ms as u64));
        }
        response.extensions_mut().insert(self);
        response
    }
}

fn openai_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        429 => "rate_limit_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.report().into_response(ErrorShape::Rest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_faults_say_nothing_about_their_cause() {
        let report = ApiError::internal("SELECT * FROM api_keys failed at /src/store.rs").report();
        let body = report.body(ErrorShape::Rest).to_string();
        assert!(!body.contains("api_keys"), "{body}");
        assert_eq!(report.body(ErrorShape::Rest)["error"], "internal error");
        assert!(report.log_cause.unwrap().contains("api_keys"));
    }

    #[test]
    fn openai_shape_nests_code_type_and_param() {
        let err = ApiError::NotFound {
            message: "Agent \"writer\" not found".into(),
            param: Some("agent".into()),
        };
        let body = err.report().body(ErrorShape::OpenAi);
        assert_eq!(
            body,
            json!({"error": {"message": "Agent \"writer\" not found", "type": "invalid_request_error",
                             "code": "not_found", "param": "agent"}})
        );
    }

    /// A database error with only a SQLSTATE, as a driver reports one.
    #[derive(Debug)]
    struct Sqlstate(&'static str);

    impl std::fmt::Display for Sqlstate {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "SQLSTATE {}", self.0)
        }
    }

    impl std::error::Error for Sqlstate {}

    impl sqlx::error::DatabaseError for Sqlstate {
        fn message(&self) -> &str {
            "database error"
        }
        fn code(&self) -> Option<std::borrow::Cow<'_, str>> {
            Some(self.0.into())
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    #[test]
    fn a_lost_database_is_unavailable_and_a_failed_statement_is_internal() {
        let status = |e: sqlx::Error| ApiError::from(e).status();
        let coded = |code| sqlx::Error::Database(Box::new(Sqlstate(code)));
        // A stopping server ends the session; one starting refuses it; a socket breaks.
        for code in ["57P01", "57P02", "57P03", "08006", "08001"] {
            assert_eq!(status(coded(code)), StatusCode::SERVICE_UNAVAILABLE, "{code}");
        }
        assert_eq!(status(sqlx::Error::PoolTimedOut), StatusCode::SERVICE_UNAVAILABLE);
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert_eq!(status(sqlx::Error::Io(reset)), StatusCode::SERVICE_UNAVAILABLE);
        // Syntax error, and a statement cancelled by its own timeout.
        for code in ["42601", "57014"] {
            assert_eq!(status(coded(code)), StatusCode::INTERNAL_SERVER_ERROR, "{code}");
        }
    }

    #[test]
    fn validation_lists_every_field() {
        let mut fields = BTreeMap::new();
        fields.insert("name".to_string(), "required".to_string());
        fields.insert("model".to_string(), "unknown provider".to_string());
        let body = ApiError::invalid_fields(fields).report().body(ErrorShape::Rest);
        assert_eq!(body["details"]["fields"]["name"], "required");
        assert_eq!(body["details"]["fields"]["model"], "unknown provider");
        assert_eq!(body["code"], "bad_request");
    }
}

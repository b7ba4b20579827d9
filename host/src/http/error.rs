//! The one JSON error shape, `{"error":{"code":"…","message":"…","request_id":"…"}}`,
//! and the one table of stable codes mapped to HTTP statuses. Clients match on `code`,
//! never on messages. Server-side failures (store, payment provider, bugs) answer a
//! fixed message for their code; their detail is logged once, in the request's span.

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::accounts::{AccountsError, AuthError};

/// Every error code the API returns. Adding a code is a compatible change; renaming or
/// removing one is not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body is not valid JSON.
    InvalidJson,
    /// The JSON is well formed but does not fit the request (unknown or missing field,
    /// wrong type, invalid value).
    InvalidRequest,
    /// The request needs `Content-Type: application/json`.
    UnsupportedMediaType,
    /// The body exceeds the configured limit.
    PayloadTooLarge,
    /// No valid API key.
    Unauthorized,
    /// The key is valid but may not do this.
    Forbidden,
    /// No such route or resource (or not visible to this caller).
    NotFound,
    /// The route exists but not for this method.
    MethodNotAllowed,
    /// The resource already exists.
    Conflict,
    /// A dependency (the store) is not available.
    Unavailable,
    /// Too many calls under the caller's policy rate.
    RateLimited,
    /// The tenant already has as many calls running as it may (retry after).
    TooManyCallsInFlight,
    /// The tenant's credits do not cover the call's price (details: balance, price).
    InsufficientCredits,
    /// The tool ran past its deadline.
    ToolTimeout,
    /// The tool used all its fuel.
    ToolOutOfFuel,
    /// The tool needed more memory than allowed.
    ToolMemoryLimit,
    /// The tool crashed (trap).
    ToolTrap,
    /// The tool tried to reach a network destination its policy does not allow.
    NetworkDenied,
    /// The tool's result is larger than allowed.
    ToolOutputTooLarge,
    /// The tool ran and reported an error.
    ToolError,
    /// The call was cancelled.
    Cancelled,
    /// A session names a persona that is not loaded or that policy does not let the
    /// caller use.
    UnknownPersona,
    /// An event stream's `Last-Event-ID` header (or `after` parameter) is not a
    /// non-negative integer, or is beyond the last event of the run or session; on
    /// `/mcp`, not an event id of the server or one whose later events are no longer kept.
    InvalidLastEventId,
    /// A Stripe webhook whose signature does not hold (bad, stale or future timestamp,
    /// modified body, missing header).
    SignatureInvalid,
    /// Billing routes answer this when Stripe is not configured on the server.
    BillingNotConfigured,
    /// The payment provider (Stripe) failed; details are logged.
    PaymentProviderFailed,
    /// An unexpected failure; details are logged, not returned.
    Internal,
    /// A write named a version (`If-Match`, a base version) that is no longer the
    /// document's current one; nothing was written (details: the current version).
    StaleVersion,
    /// A write that must name the version it replaces (`If-Match`) did not.
    PreconditionRequired,
    /// The run is not waiting for an answer (it never asked, was answered, ended or
    /// its question expired).
    RunNotWaiting,
    /// The answer is not one of the question's choices, and free text is not accepted.
    InvalidAnswer,
    /// A run of the session waits for an answer; a new message would race it (answer or
    /// cancel that run first; the message names it).
    RunWaiting,
    /// The tool asked the user a question nobody could answer on this request (no
    /// elicitation here); call it where a person can answer (a run, an MCP client that
    /// offers elicitation).
    NeedsInput,
    /// Memory needs an embedder: none is configured, or it failed or is unreachable
    /// (retry later); nothing was written.
    EmbedderUnavailable,
}

impl ErrorCode {
    /// The HTTP status for this code.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidJson => StatusCode::BAD_REQUEST,
            ErrorCode::InvalidRequest => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::RateLimited | ErrorCode::TooManyCallsInFlight => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::InsufficientCredits => StatusCode::PAYMENT_REQUIRED,
            ErrorCode::ToolTimeout => StatusCode::GATEWAY_TIMEOUT,
            ErrorCode::ToolOutOfFuel
            | ErrorCode::ToolMemoryLimit
            | ErrorCode::ToolOutputTooLarge
            | ErrorCode::ToolError => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::ToolTrap => StatusCode::BAD_GATEWAY,
            ErrorCode::NetworkDenied => StatusCode::FORBIDDEN,
            ErrorCode::Cancelled => StatusCode::CONFLICT,
            ErrorCode::UnknownPersona => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::InvalidLastEventId => StatusCode::BAD_REQUEST,
            ErrorCode::SignatureInvalid => StatusCode::BAD_REQUEST,
            ErrorCode::BillingNotConfigured => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::PaymentProviderFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
            ErrorCode::StaleVersion => StatusCode::PRECONDITION_FAILED,
            ErrorCode::PreconditionRequired => StatusCode::PRECONDITION_REQUIRED,
            ErrorCode::RunNotWaiting | ErrorCode::RunWaiting => StatusCode::CONFLICT,
            ErrorCode::InvalidAnswer => StatusCode::UNPROCESSABLE_ENTITY,
            ErrorCode::NeedsInput => StatusCode::CONFLICT,
            ErrorCode::EmbedderUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    /// The fixed message of a failure on the server's side, whose detail a client must
    /// never see (store errors, the payment provider's answer, panics); `None` for
    /// codes whose message is meant for the client.
    fn generic_message(self) -> Option<&'static str> {
        match self {
            ErrorCode::Unavailable => Some("the store is not available, try again later"),
            ErrorCode::PaymentProviderFailed => Some("the payment provider failed, try again later"),
            ErrorCode::Internal => Some("internal error"),
            ErrorCode::EmbedderUnavailable => Some("the embedder is not available, try again later"),
            _ => None,
        }
    }
}

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
    www_authenticate: Option<&'static str>,
    details: Option<serde_json::Value>,
    retry_after: Option<u64>,
    /// The message and details were written for the client even though the code is a
    /// server-side one (the call pipeline's generic texts, its detail already logged).
    client_safe: bool,
}

/// The body of every error response.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// Code and message of an error.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable code.
    pub code: ErrorCode,
    /// Human-readable explanation.
    pub message: String,
    /// Structured context (e.g. a tool call's metering), when there is any.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub details: Option<serde_json::Value>,
    /// The request's id (also the `x-request-id` response header): quote it when
    /// reporting a problem, it finds the logged detail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

impl ApiError {
    /// An error with a code and a message for the client.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            www_authenticate: None,
            details: None,
            retry_after: None,
            client_safe: false,
        }
    }

    /// An error whose message and details are meant for the client whatever its code:
    /// for texts that carry no backend detail by construction (the call pipeline's,
    /// which logged the detail itself), so they are answered as they are.
    pub fn client_safe(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { client_safe: true, ..Self::new(code, message) }
    }

    /// Adds structured details to the error body.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = Some(details);
        self
    }

    /// Adds a `Retry-After` header (seconds).
    pub fn with_retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    /// A server-side failure with its cause chain: answered with the code's generic
    /// message, the chain logged once when the response is made.
    pub fn internal(code: ErrorCode, err: &(dyn std::error::Error + 'static)) -> Self {
        let chain = crate::telemetry::error_chain(err);
        let code = if code.generic_message().is_some() { code } else { ErrorCode::Internal };
        Self::new(code, chain)
    }

    /// A 401 with the `WWW-Authenticate` challenge RFC 6750 asks for.
    pub fn unauthorized(err: AuthError) -> Self {
        let challenge = match err {
            AuthError::Missing => r#"Bearer realm="maestro""#,
            _ => r#"Bearer realm="maestro", error="invalid_token""#,
        };
        Self { www_authenticate: Some(challenge), ..Self::new(ErrorCode::Unauthorized, err.to_string()) }
    }

    /// The error's code.
    pub fn code(&self) -> ErrorCode {
        self.code
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (message, details) = match self.code.generic_message().filter(|_| !self.client_safe) {
            Some(generic) => {
                // The one place a server-side failure is logged; the request span adds
                // the request id, route, tenant and key.
                tracing::error!(code = ?self.code, error = %self.message, "request failed");
                (generic.to_owned(), None)
            }
            None => (self.message, self.details),
        };
        let request_id = crate::telemetry::RequestId::current().map(|id| id.as_str().to_owned());
        let body = ErrorBody { error: ErrorDetail { code: self.code, message, details, request_id } };
        let mut response = (self.code.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if let Some(challenge) = self.www_authenticate {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
        }
        response
    }
}

impl From<AccountsError> for ApiError {
    fn from(err: AccountsError) -> Self {
        let code = match &err {
            AccountsError::InvalidName(_) | AccountsError::ExpiryInPast(_) => ErrorCode::InvalidRequest,
            AccountsError::TenantNotFound(_) | AccountsError::KeyNotFound(_) => ErrorCode::NotFound,
            AccountsError::TenantExists(_) => ErrorCode::Conflict,
            AccountsError::Store(maestro_core::StoreError::Backend(_)) => {
                return Self::internal(ErrorCode::Unavailable, &err);
            }
            AccountsError::Store(_) => return Self::internal(ErrorCode::Internal, &err),
        };
        Self::new(code, err.to_string())
    }
}

impl From<crate::orchestrator::OrchestratorError> for ApiError {
    fn from(err: crate::orchestrator::OrchestratorError) -> Self {
        use crate::orchestrator::OrchestratorError as E;
        let code = match &err {
            E::NotFound(_) => ErrorCode::NotFound,
            E::Forbidden(_) => ErrorCode::Forbidden,
            E::Invalid(_) => ErrorCode::InvalidRequest,
            E::UnknownPersona(_) => ErrorCode::UnknownPersona,
            E::NotWaiting { .. } => ErrorCode::RunNotWaiting,
            E::InvalidAnswer(_) => ErrorCode::InvalidAnswer,
            E::RunWaiting(_) => ErrorCode::RunWaiting,
            E::Store(maestro_core::StoreError::Backend(_)) => return Self::internal(ErrorCode::Unavailable, &err),
            E::Store(_) => return Self::internal(ErrorCode::Internal, &err),
        };
        Self::new(code, err.to_string())
    }
}

impl From<crate::schedules::SchedulesError> for ApiError {
    fn from(err: crate::schedules::SchedulesError) -> Self {
        use crate::schedules::SchedulesError as E;
        let code = match &err {
            E::NotFound(_) => ErrorCode::NotFound,
            E::Forbidden(_) => ErrorCode::Forbidden,
            E::Invalid(_) => ErrorCode::InvalidRequest,
            E::UnknownPersona(_) => ErrorCode::UnknownPersona,
            E::Store(maestro_core::StoreError::Backend(_)) => return Self::internal(ErrorCode::Unavailable, &err),
            E::Store(_) => return Self::internal(ErrorCode::Internal, &err),
        };
        Self::new(code, err.to_string())
    }
}

impl From<maestro_core::StoreError> for ApiError {
    fn from(err: maestro_core::StoreError) -> Self {
        match err {
            maestro_core::StoreError::Backend(_) => Self::internal(ErrorCode::Unavailable, &err),
            _ => Self::internal(ErrorCode::Internal, &err),
        }
    }
}

impl From<maestro_core::AccessError> for ApiError {
    fn from(err: maestro_core::AccessError) -> Self {
        Self::new(ErrorCode::Forbidden, err.to_string())
    }
}

impl From<crate::artifacts::ArtifactError> for ApiError {
    fn from(err: crate::artifacts::ArtifactError) -> Self {
        use crate::artifacts::ArtifactError as E;
        match &err {
            E::NotFound => Self::new(ErrorCode::NotFound, "artifact not found"),
            E::Store(maestro_core::StoreError::Backend(_)) => Self::internal(ErrorCode::Unavailable, &err),
            E::Store(_) | E::Blob(_) | E::Render(_) => Self::internal(ErrorCode::Internal, &err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn server_side_failures_answer_a_generic_message() {
        let leaky = ApiError::new(ErrorCode::Unavailable, "ledger unavailable: error returned from database: relation")
            .with_details(serde_json::json!({ "sql": "select" }));
        let response = leaky.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(
            body,
            serde_json::json!({ "error": {
            "code": "unavailable", "message": "the store is not available, try again later" } })
        );

        let err = std::io::Error::other("panicked at src/tools.rs: secret detail");
        let response = ApiError::internal(ErrorCode::ToolError, &err).into_response();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let body: serde_json::Value = serde_json::from_slice(&bytes).expect("json");
        assert_eq!(body["error"]["code"], "internal");
        assert_eq!(body["error"]["message"], "internal error");

        let client = ApiError::new(ErrorCode::ToolTimeout, "the tool ran past its 5s deadline").into_response();
        let bytes = axum::body::to_bytes(client.into_body(), usize::MAX).await.expect("body");
        assert!(String::from_utf8_lossy(&bytes).contains("5s deadline"), "tool failures keep their message");
    }

    #[test]
    fn every_code_serialises_to_its_snake_case_name_and_a_4xx_or_5xx() {
        let codes = [
            ErrorCode::InvalidJson,
            ErrorCode::InvalidRequest,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::PayloadTooLarge,
            ErrorCode::Unauthorized,
            ErrorCode::Forbidden,
            ErrorCode::NotFound,
            ErrorCode::MethodNotAllowed,
            ErrorCode::Conflict,
            ErrorCode::Unavailable,
            ErrorCode::RateLimited,
            ErrorCode::TooManyCallsInFlight,
            ErrorCode::InsufficientCredits,
            ErrorCode::ToolTimeout,
            ErrorCode::ToolOutOfFuel,
            ErrorCode::ToolMemoryLimit,
            ErrorCode::ToolTrap,
            ErrorCode::NetworkDenied,
            ErrorCode::ToolOutputTooLarge,
            ErrorCode::ToolError,
            ErrorCode::Cancelled,
            ErrorCode::UnknownPersona,
            ErrorCode::InvalidLastEventId,
            ErrorCode::SignatureInvalid,
            ErrorCode::BillingNotConfigured,
            ErrorCode::PaymentProviderFailed,
            ErrorCode::Internal,
            ErrorCode::StaleVersion,
            ErrorCode::PreconditionRequired,
            ErrorCode::NeedsInput,
            ErrorCode::EmbedderUnavailable,
        ];
        for code in codes {
            let name = serde_json::to_value(code).expect("serialises");
            let name = name.as_str().expect("a string");
            assert!(name.chars().all(|c| c.is_ascii_lowercase() || c == '_'), "{name}");
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }
}

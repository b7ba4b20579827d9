//! Bearer authentication: resolves the caller (tenant, role, key id) before any `/v1`
//! handler runs, and answers 401 with a `WWW-Authenticate` challenge otherwise.

use axum::extract::{Request, State};
use axum::http::{HeaderMap, header};
use axum::middleware::Next;
use axum::response::Response;

use super::Shared;
use super::error::{ApiError, ErrorCode};
use crate::accounts::AuthError;

/// Middleware for authenticated routes: puts the [`maestro_core::Caller`] into the
/// request's extensions.
pub(super) async fn require_caller(
    State(state): State<Shared>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let bearer = bearer_token(request.headers())?;
    match state.accounts.authenticate(bearer).await {
        Ok(Ok(caller)) => {
            let span = tracing::Span::current();
            span.record("key_id", caller.key_id.as_str());
            if let Some(tenant_id) = caller.scope.tenant_id() {
                span.record("tenant", tracing::field::display(tenant_id));
            }
            request.extensions_mut().insert(caller);
            Ok(next.run(request).await)
        }
        Ok(Err(err)) => Err(ApiError::unauthorized(err)),
        Err(err) => Err(ApiError::internal(ErrorCode::Unavailable, &err)),
    }
}

/// The token of an `Authorization: Bearer …` header (scheme case-insensitive).
pub(super) fn bearer_token(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value.to_str().map_err(|_| ApiError::unauthorized(AuthError::Invalid))?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(Some(token.trim())),
        _ => Err(ApiError::unauthorized(AuthError::Missing)),
    }
}

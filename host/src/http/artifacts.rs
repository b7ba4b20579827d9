//! `GET /v1/artifacts/{sha256}`: a tenant's artifact (a document export), by the SHA-256
//! of its bytes, with its content type and `ETag` (the digest). Another tenant's
//! artifact answers 404 even when the same bytes exist.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maestro_core::artifact::{Artifact, Sha256};
use maestro_core::{Caller, Role, TenantId};

use super::Shared;
use super::error::{ApiError, ErrorBody, ErrorCode};

/// The tenant a viewer's key belongs to; platform keys hold no artifacts.
pub(super) fn caller_tenant(caller: &Caller) -> Result<TenantId, ApiError> {
    caller
        .require_role(Role::Viewer)?
        .cloned()
        .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "artifacts belong to tenants: use a tenant key"))
}

/// The `ETag` of an artifact: its digest, quoted.
fn etag(sha256: &Sha256) -> String {
    format!("\"{sha256}\"")
}

/// Whether an `If-None-Match` header names this artifact.
fn not_modified(headers: &HeaderMap, sha256: &Sha256) -> bool {
    let tag = etag(sha256);
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .any(|candidate| candidate == "*" || candidate.trim_start_matches("W/") == tag)
}

/// The headers every artifact response carries: type, length, `ETag`, immutable
/// caching (the bytes under a digest never change), no sniffing, and for HTML a policy
/// that runs no script.
pub(super) fn artifact_headers(artifact: &Artifact, length: usize) -> Result<HeaderMap, ApiError> {
    let value = |text: &str| {
        HeaderValue::from_str(text).map_err(|_| ApiError::new(ErrorCode::Internal, "invalid artifact header"))
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, value(&artifact.content_type)?);
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    headers.insert(header::ETAG, value(&etag(&artifact.sha256))?);
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, max-age=31536000, immutable"));
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    if artifact.content_type.starts_with("text/html") {
        // Opened in a browser, an exported page runs nothing and loads nothing.
        headers.insert(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static("default-src 'none'; style-src 'unsafe-inline'; sandbox"),
        );
    }
    headers.insert(header::HeaderName::from_static("x-artifact-sha256"), value(artifact.sha256.as_str())?);
    Ok(headers)
}

/// An artifact's bytes.
#[utoipa::path(get, path = "/v1/artifacts/{sha256}", tag = "artifacts", security(("bearer" = [])),
    params(("sha256" = String, Path, description = "the SHA-256 of the artifact's bytes, 64 lowercase hex digits")),
    responses(
        (status = 200, description = "the bytes, with their content type; `ETag` is the digest",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 304, description = "`If-None-Match` names this artifact"),
        (status = 403, body = ErrorBody, description = "a platform key"),
        (status = 404, body = ErrorBody, description = "no such artifact for this tenant")))]
pub(super) async fn get_one(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    request_headers: HeaderMap,
) -> Result<Response, ApiError> {
    let tenant = caller_tenant(&caller)?;
    let sha256 = Sha256::parse(&raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "artifact not found"))?;
    if not_modified(&request_headers, &sha256) {
        // Still checked: a tenant learns nothing about digests it does not hold.
        let artifact = state.artifacts.get(&tenant, &sha256).await?;
        let mut headers = HeaderMap::new();
        headers.insert(
            header::ETAG,
            HeaderValue::from_str(&etag(&artifact.sha256))
                .map_err(|_| ApiError::new(ErrorCode::Internal, "invalid artifact header"))?,
        );
        return Ok((StatusCode::NOT_MODIFIED, headers).into_response());
    }
    let (artifact, bytes) = state.artifacts.open(&tenant, &sha256).await?;
    let headers = artifact_headers(&artifact, bytes.len())?;
    Ok((StatusCode::OK, headers, Body::from(bytes)).into_response())
}

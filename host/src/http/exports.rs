//! `GET /v1/documents/{id}/export?format=md|html|pdf[&version=N]`: one version of a
//! document rendered (Markdown, a standalone HTML page, a typeset PDF), stored as an
//! artifact and answered as a download. The same version in the same format is rendered
//! once per tenant; later requests answer the stored artifact. Viewers may export;
//! another tenant's document answers 404.

use axum::Extension;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use maestro_core::Caller;
use maestro_core::artifact::{ExportFormat, ExportOrigin};
use maestro_core::document::{DocumentId, DocumentKind};
use serde::Deserialize;
use utoipa::IntoParams;

use super::Shared;
use super::artifacts::{artifact_headers, caller_tenant};
use super::error::{ApiError, ErrorBody, ErrorCode};
use super::extract::StrictQuery;
use crate::export::{ExportSource, SourceKind, file_name};

/// What to export.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub(super) struct ExportQuery {
    /// `md`, `html` or `pdf`.
    format: String,
    /// The version to export; the current one when left out.
    version: Option<i64>,
}

/// Exports one version of a document.
#[utoipa::path(get, path = "/v1/documents/{id}/export", tag = "documents", params(
        ("id" = String, Path, description = "the document's id"), ExportQuery),
    security(("bearer" = [])),
    responses(
        (status = 200, description = "the export, as an attachment; `ETag`, `X-Artifact-Sha256` and `Link` name \
            the artifact it is stored as (`GET /v1/artifacts/{sha256}`)",
            content_type = "application/octet-stream", body = Vec<u8>),
        (status = 403, body = ErrorBody, description = "a platform key"),
        (status = 404, body = ErrorBody, description = "no such document or version for this tenant"),
        (status = 422, body = ErrorBody, description = "an unknown format or a malformed query")))]
pub(super) async fn export(
    State(state): State<Shared>,
    Extension(caller): Extension<Caller>,
    Path(raw): Path<String>,
    StrictQuery(query): StrictQuery<ExportQuery>,
) -> Result<Response, ApiError> {
    let tenant = caller_tenant(&caller)?;
    let format = ExportFormat::parse(query.format.trim())
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidRequest, "format must be md, html or pdf"))?;
    let id = DocumentId::parse(&raw).map_err(|_| ApiError::new(ErrorCode::NotFound, "document not found"))?;
    let current = state.documents.get(&tenant, &id).await?;
    let number = query.version.unwrap_or(current.document.version);
    let version = state.documents.version(&tenant, &id, number).await?;
    let source = ExportSource {
        title: current.document.title.clone(),
        kind: match current.document.kind {
            DocumentKind::Markdown => SourceKind::Markdown,
            DocumentKind::Json => SourceKind::Json,
        },
        content: version.content,
        created_at: version.at,
    };
    let origin = ExportOrigin { document: id.to_string(), version: number, format };
    let (artifact, bytes) = state.artifacts.export(&tenant, origin, source).await?;
    let mut headers = artifact_headers(&artifact, bytes.len())?;
    // Without `version` this URL names whatever is current: never cached as immutable.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-cache"));
    let disposition = format!("attachment; filename=\"{}\"", file_name(&current.document.title, format));
    let link = format!("</v1/artifacts/{}>; rel=\"alternate\"", artifact.sha256);
    for (name, value) in [(header::CONTENT_DISPOSITION, disposition), (header::LINK, link)] {
        let value =
            HeaderValue::from_str(&value).map_err(|_| ApiError::new(ErrorCode::Internal, "invalid export header"))?;
        headers.insert(name, value);
    }
    Ok((StatusCode::OK, headers, Body::from(bytes)).into_response())
}

//! [`maestro_core::ports::ArtifactStore`]: the same SQL on both backends, expanded per
//! store type by [`impl_artifact_queries!`] (like `shared.rs`).

use chrono::{DateTime, Utc};
use maestro_core::artifact::{Artifact, ExportFormat, ExportOrigin, Sha256};
use maestro_core::{StoreError, TenantId};

/// Columns of `artifacts`, read by name into [`ArtifactRow`].
macro_rules! artifact_columns {
    () => {
        "tenant_id, sha256, size, content_type, document_id, version, format, created_at"
    };
}
pub(super) use artifact_columns;

/// A raw `artifacts` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ArtifactRow {
    tenant_id: String,
    sha256: String,
    size: i64,
    content_type: String,
    document_id: Option<String>,
    version: Option<i64>,
    format: Option<String>,
    created_at: DateTime<Utc>,
}

pub(super) fn artifact_from_row(row: ArtifactRow) -> Result<Artifact, StoreError> {
    let corrupt = |what: &str| StoreError::Corrupt(format!("artifact {}: {what}", row.sha256));
    let origin = match (row.document_id.clone(), row.version, row.format.as_deref()) {
        (None, None, None) => None,
        (Some(document), Some(version), Some(format)) => Some(ExportOrigin {
            document,
            version,
            format: ExportFormat::parse(format).ok_or_else(|| corrupt("unknown format"))?,
        }),
        _ => return Err(corrupt("partial export origin")),
    };
    Ok(Artifact {
        sha256: Sha256::parse(&row.sha256).map_err(|_| corrupt("invalid digest"))?,
        tenant_id: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(&e.to_string()))?,
        size: u64::try_from(row.size).map_err(|_| corrupt("negative size"))?,
        content_type: row.content_type,
        origin,
        created_at: row.created_at,
    })
}

/// The `(document_id, version, format)` columns of an artifact.
pub(super) fn origin_columns(artifact: &Artifact) -> (Option<&str>, Option<i64>, Option<&'static str>) {
    match &artifact.origin {
        Some(origin) => (Some(origin.document.as_str()), Some(origin.version), Some(origin.format.as_str())),
        None => (None, None, None),
    }
}

/// Implements [`maestro_core::ports::ArtifactStore`] for a store type with a `pool`
/// field.
macro_rules! impl_artifact_queries {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl maestro_core::ports::ArtifactStore for $store {
            async fn insert_artifact(
                &self,
                artifact: &maestro_core::artifact::Artifact,
            ) -> Result<maestro_core::artifact::Artifact, maestro_core::StoreError> {
                let (document, version, format) = super::artifacts::origin_columns(artifact);
                let size = i64::try_from(artifact.size)
                    .map_err(|_| maestro_core::StoreError::Conflict("an artifact that large".to_owned()))?;
                sqlx::query(
                    "INSERT INTO artifacts (tenant_id, sha256, size, content_type, document_id, version, format, \
                     created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (tenant_id, sha256) DO NOTHING",
                )
                .bind(artifact.tenant_id.as_str())
                .bind(artifact.sha256.as_str())
                .bind(size)
                .bind(&artifact.content_type)
                .bind(document)
                .bind(version)
                .bind(format)
                .bind(artifact.created_at)
                .execute(&self.pool)
                .await
                .map_err(super::map_err(&format!("artifact {}", artifact.sha256)))?;
                maestro_core::ports::ArtifactStore::artifact(self, &artifact.tenant_id, &artifact.sha256)
                    .await?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("artifact {}", artifact.sha256)))
            }

            async fn artifact(
                &self,
                tenant: &maestro_core::TenantId,
                sha256: &maestro_core::artifact::Sha256,
            ) -> Result<Option<maestro_core::artifact::Artifact>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::artifacts::ArtifactRow>(concat!(
                    "SELECT ",
                    super::artifacts::artifact_columns!(),
                    " FROM artifacts WHERE tenant_id = $1 AND sha256 = $2"
                ))
                .bind(tenant.as_str())
                .bind(sha256.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?
                .map(super::artifacts::artifact_from_row)
                .transpose()
            }

            async fn find_export(
                &self,
                tenant: &maestro_core::TenantId,
                origin: &maestro_core::artifact::ExportOrigin,
            ) -> Result<Option<maestro_core::artifact::Artifact>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::artifacts::ArtifactRow>(concat!(
                    "SELECT ",
                    super::artifacts::artifact_columns!(),
                    " FROM artifacts WHERE tenant_id = $1 AND document_id = $2 AND version = $3 AND format = $4 \
                     ORDER BY created_at, sha256 LIMIT 1"
                ))
                .bind(tenant.as_str())
                .bind(&origin.document)
                .bind(origin.version)
                .bind(origin.format.as_str())
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?
                .map(super::artifacts::artifact_from_row)
                .transpose()
            }
        }
    };
}
pub(super) use impl_artifact_queries;

//! Artifacts: content-addressed files a tenant produced (document exports), and the
//! use-cases over them (the only module that uses `object_store`).
//!
//! The bytes go to a [`BlobStore`] once per digest, whichever tenant produced them:
//! [`disk::DiskBlobs`] under the data directory by default, [`s3::S3Blobs`] when
//! `[artifacts] store = "s3"`. Who may read what is the `artifacts` table
//! ([`ArtifactStore`]): one row per tenant and digest, so another tenant's artifact
//! answers not found even when the same bytes exist.

pub mod disk;
pub mod s3;

use std::sync::Arc;

use maestro_core::artifact::{Artifact, BlobError, ExportOrigin, Sha256};
use maestro_core::ports::{ArtifactStore, BlobStore};
use maestro_core::{Clock, StoreError, TenantId};

use crate::export::{self, ExportError, ExportSource};

/// What can go wrong with artifacts.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// No such artifact for this tenant (or its bytes are gone from the blob store).
    #[error("artifact not found")]
    NotFound,
    /// The metadata store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The blob store failed, or holds bytes that do not match their digest.
    #[error(transparent)]
    Blob(#[from] BlobError),
    /// Rendering an export failed.
    #[error(transparent)]
    Render(#[from] ExportError),
}

/// The artifact use-cases: store, find, open, and export a document version.
#[derive(Debug, Clone)]
pub struct Artifacts {
    blobs: Arc<dyn BlobStore>,
    rows: Arc<dyn ArtifactStore>,
    clock: Arc<dyn Clock>,
}

impl Artifacts {
    /// Artifacts over a blob store and the metadata port.
    pub fn new(blobs: Arc<dyn BlobStore>, rows: Arc<dyn ArtifactStore>, clock: Arc<dyn Clock>) -> Self {
        Self { blobs, rows, clock }
    }

    /// Artifacts with their blobs under `dir` (tests, benches, the default store).
    pub fn on_disk(dir: std::path::PathBuf, rows: Arc<dyn ArtifactStore>, clock: Arc<dyn Clock>) -> Self {
        Self::new(Arc::new(disk::DiskBlobs::new(dir)), rows, clock)
    }

    /// Which blob store holds the bytes (`disk`, `s3`).
    pub fn store_kind(&self) -> &'static str {
        self.blobs.kind()
    }

    /// Stores `bytes` for `tenant`: the blob (once per digest), then the tenant's row.
    /// Storing the same bytes again returns the row already there.
    pub async fn store(
        &self,
        tenant: &TenantId,
        bytes: Vec<u8>,
        content_type: &str,
        origin: Option<ExportOrigin>,
    ) -> Result<Artifact, ArtifactError> {
        let sha256 = Sha256::of(&bytes);
        let size = bytes.len() as u64;
        // The blob first: a row never names bytes that are not stored.
        self.blobs.put(&sha256, bytes).await?;
        let artifact = Artifact {
            sha256,
            tenant_id: tenant.clone(),
            size,
            content_type: content_type.to_owned(),
            origin,
            created_at: self.clock.now(),
        };
        Ok(self.rows.insert_artifact(&artifact).await?)
    }

    /// A tenant's artifact (metadata only).
    pub async fn get(&self, tenant: &TenantId, sha256: &Sha256) -> Result<Artifact, ArtifactError> {
        self.rows.artifact(tenant, sha256).await?.ok_or(ArtifactError::NotFound)
    }

    /// A tenant's artifact and its bytes, verified against the digest.
    pub async fn open(&self, tenant: &TenantId, sha256: &Sha256) -> Result<(Artifact, Vec<u8>), ArtifactError> {
        let artifact = self.get(tenant, sha256).await?;
        match self.blobs.get(sha256).await? {
            Some(bytes) => Ok((artifact, bytes)),
            None => {
                tracing::error!(sha256 = %sha256, store = self.blobs.kind(), "an artifact's blob is missing");
                Err(ArtifactError::NotFound)
            }
        }
    }

    /// The export of a document version in `format` for `tenant`: the artifact already
    /// made for it when there is one (and its blob is still there), else rendered from
    /// `source` (on a blocking thread) and stored. Returns the artifact and its bytes.
    pub async fn export(
        &self,
        tenant: &TenantId,
        origin: ExportOrigin,
        source: ExportSource,
    ) -> Result<(Artifact, Vec<u8>), ArtifactError> {
        if let Some(artifact) = self.rows.find_export(tenant, &origin).await? {
            match self.blobs.get(&artifact.sha256).await {
                Ok(Some(bytes)) => return Ok((artifact, bytes)),
                // Rendered again below; the blob is rewritten under the same digest.
                Ok(None) | Err(BlobError::Corrupt(_)) => {
                    tracing::warn!(sha256 = %artifact.sha256, "a cached export's blob is missing or corrupt")
                }
                Err(err) => return Err(err.into()),
            }
        }
        let format = origin.format;
        let bytes = tokio::task::spawn_blocking(move || export::render(&source, format))
            .await
            .map_err(|err| ExportError::Typeset(format!("the renderer stopped: {err}")))??;
        let artifact = self.store(tenant, bytes.clone(), format.content_type(), Some(origin)).await?;
        Ok((artifact, bytes))
    }
}

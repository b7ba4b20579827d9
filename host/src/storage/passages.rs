//! [`maestro_core::ports::PassageStore`] on both backends.
//!
//! Not built yet: no passage is stored, so a vector search of messages and documents
//! finds nothing (the passage-vector work replaces this file).

use maestro_core::embed::EmbedderInfo;
use maestro_core::passage::{PassageFilter, PassageHit};
use maestro_core::ports::PassageStore;
use maestro_core::{StoreError, TenantId};

use super::postgres::PostgresStore;
use super::sqlite::SqliteStore;

#[async_trait::async_trait]
impl PassageStore for SqliteStore {
    async fn search_passages(
        &self,
        _tenant: &TenantId,
        _embedder: &EmbedderInfo,
        _query: &[f32],
        _filter: &PassageFilter,
        _k: u32,
    ) -> Result<Vec<PassageHit>, StoreError> {
        Ok(Vec::new())
    }
}

#[async_trait::async_trait]
impl PassageStore for PostgresStore {
    async fn search_passages(
        &self,
        _tenant: &TenantId,
        _embedder: &EmbedderInfo,
        _query: &[f32],
        _filter: &PassageFilter,
        _k: u32,
    ) -> Result<Vec<PassageHit>, StoreError> {
        Ok(Vec::new())
    }
}

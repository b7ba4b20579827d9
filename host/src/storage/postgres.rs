//! Postgres (with pgvector), for deployments that want a server database or several
//! replicas.

use std::time::Duration;

use async_trait::async_trait;
use maestro_core::{StoreError, StoreProbe};
use sqlx::postgres::{PgPool, PgPoolOptions};

use super::artifacts::impl_artifact_queries;
use super::billing::impl_billing_queries;
use super::documents::impl_document_queries;
use super::jobs::impl_job_queries;
use super::ledger::impl_ledger_queries;
use super::runs::impl_run_queries;
use super::schedules::impl_schedule_queries;
use super::search::impl_search_queries;
use super::shared::impl_shared_queries;
use super::unit::impl_unit_of_work;
use super::{Backend, backend_err};

/// Migrations for Postgres, embedded at build time. The first one creates the `vector`
/// extension.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Store on a Postgres database.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    pub(super) pool: PgPool,
    /// Live run events across replicas (`LISTEN`/`NOTIFY`).
    signal: std::sync::Arc<super::signal::PgSignal>,
    /// Recent vector searches' index-or-exact choices (`memories.rs`).
    pub(super) search_paths: std::sync::Arc<super::memories::SearchPaths>,
    /// Connections kept for postings between them (`ledger.rs`).
    pub(super) ledger_connections: std::sync::Arc<super::ledger::LedgerConnections<sqlx::Postgres>>,
}

impl Backend for PostgresStore {
    type Db = sqlx::Postgres;
}

impl PostgresStore {
    /// Connects and applies migrations (sqlx serialises concurrent migrators with an
    /// advisory lock, so replicas may start together).
    pub async fn open(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(16)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(backend_err)?;
        MIGRATOR.run(&pool).await.map_err(backend_err)?;
        let signal = std::sync::Arc::new(super::signal::PgSignal::new(pool.clone()));
        Ok(Self {
            pool,
            signal,
            search_paths: std::sync::Arc::default(),
            ledger_connections: std::sync::Arc::new(super::ledger::LedgerConnections::new(Self::POSTING_LANES)),
        })
    }

    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin().await.map_err(backend_err)
    }

    /// After a key write committed: this process's key cache drops what it read before
    /// at once (the trigger of migration 0016 tells the other processes).
    async fn announce_key_write(&self) {
        self.signal.keys_written();
    }

    /// Commits are as durable as the server's settings make them; nothing to add.
    async fn make_durable(&self) -> Result<(), StoreError> {
        Ok(())
    }

    /// This process's key generation, moved by key notices and by the listener's
    /// reconnections; `None` while the listener is not connected.
    fn current_key_generation(&self) -> Option<u64> {
        self.signal.key_generation()
    }

    /// A ledger write: commits wait for the WAL flush whatever the server's default
    /// (`synchronous_commit = on` for this transaction).
    async fn begin_ledger(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        // One round trip: the simple-query protocol runs both statements.
        self.pool.begin_with("BEGIN; SET LOCAL synchronous_commit = on").await.map_err(backend_err)
    }

    /// A read-only snapshot for all of the audit's queries.
    async fn begin_audit(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, StoreError> {
        self.pool.begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY").await.map_err(backend_err)
    }
}

impl_shared_queries!(PostgresStore);
impl_billing_queries!(PostgresStore);
impl_job_queries!(PostgresStore, " FOR UPDATE SKIP LOCKED");
impl_run_queries!(PostgresStore);
impl_document_queries!(PostgresStore);
impl_schedule_queries!(PostgresStore);
impl_unit_of_work!(PostgresStore, PostgresTx);
impl_ledger_queries!(PostgresStore);
impl_artifact_queries!(PostgresStore);
impl_search_queries!(
    PostgresStore,
    " AND txid < pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
    Some("SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint"),
    "to_json(m.tags)::text"
);

#[async_trait]
impl StoreProbe for PostgresStore {
    fn backend(&self) -> &'static str {
        "postgres"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(backend_err)?;
        Ok(())
    }
}

impl maestro_core::EventSignal for PostgresStore {
    fn notify(&self, notice: maestro_core::EventNotice) {
        self.signal.notify(notice);
    }

    fn listen(&self, on_notice: std::sync::Arc<dyn Fn(maestro_core::EventNotice) + Send + Sync>) {
        self.signal.listen(on_notice);
    }

    fn notify_document(&self, notice: maestro_core::DocumentNotice) {
        self.signal.notify_document(notice);
    }

    fn listen_documents(&self, on_notice: std::sync::Arc<dyn Fn(maestro_core::DocumentNotice) + Send + Sync>) {
        self.signal.listen_documents(on_notice);
    }

    fn notify_memory(&self, notice: maestro_core::MemoryNotice) {
        self.signal.notify_memory(notice);
    }

    fn listen_memories(&self, on_notice: std::sync::Arc<dyn Fn(maestro_core::MemoryNotice) + Send + Sync>) {
        self.signal.listen_memories(on_notice);
    }
}

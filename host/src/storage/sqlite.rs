//! The embedded default: one SQLite file under the data directory, WAL mode.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use maestro_core::{StoreError, StoreProbe};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};

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

/// Migrations for SQLite, embedded at build time.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// Store on an SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pub(super) pool: SqlitePool,
    /// Tenants' memory vectors held in memory for the exact scan (`memories.rs`).
    pub(super) vectors: std::sync::Arc<super::memories::VectorCache>,
    /// Tenants' passage vectors held in memory for the exact scan (`passages.rs`).
    pub(super) passage_vectors: std::sync::Arc<super::passages::PassageCache>,
    /// The key generation every process on this file shares.
    key_epoch: std::sync::Arc<KeyEpoch>,
}

impl Backend for SqliteStore {
    type Db = sqlx::Sqlite;
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend_err)?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(backend_err)?
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            // Money and keys live here: a commit that returned is on disk.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(options).await.map_err(backend_err)?;
        MIGRATOR.run(&pool).await.map_err(backend_err)?;
        let key_epoch = std::sync::Arc::new(KeyEpoch::open(path).map_err(backend_err)?);
        Ok(Self { pool, vectors: Default::default(), passage_vectors: Default::default(), key_epoch })
    }

    /// After a key write committed: a fresh epoch in the sidecar file, so that every
    /// process's key cache drops what it read before.
    fn announce_key_write(&self) {
        self.key_epoch.bump();
    }

    /// The sidecar file's epoch (one `pread` of 8 bytes, ~1 µs).
    fn current_key_generation(&self) -> Option<u64> {
        self.key_epoch.read()
    }

    /// A write transaction that takes SQLite's write lock up front (`BEGIN IMMEDIATE`),
    /// so two writers queue on the busy timeout instead of failing on lock upgrade.
    async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool.begin_with("BEGIN IMMEDIATE").await.map_err(backend_err)
    }

    /// A ledger write: a write transaction (`synchronous=FULL` makes its commit durable).
    async fn begin_ledger(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.begin_write().await
    }

    /// A read transaction: one WAL snapshot for all of the audit's queries.
    async fn begin_audit(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, StoreError> {
        self.pool.begin().await.map_err(backend_err)
    }
}

impl_shared_queries!(SqliteStore);
impl_billing_queries!(SqliteStore);
impl_job_queries!(SqliteStore, "");
impl_run_queries!(SqliteStore);
impl_document_queries!(SqliteStore);
impl_schedule_queries!(SqliteStore);
impl_unit_of_work!(SqliteStore, SqliteTx);
impl_ledger_queries!(SqliteStore, "");
impl_artifact_queries!(SqliteStore);
impl_search_queries!(SqliteStore, "", None, "m.tags");

#[async_trait]
impl StoreProbe for SqliteStore {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(backend_err)?;
        Ok(())
    }
}

/// One replica only: events and document changes are published in process, so there is
/// nothing to signal.
impl maestro_core::EventSignal for SqliteStore {
    fn notify(&self, _notice: maestro_core::EventNotice) {}

    fn listen(&self, _on_notice: std::sync::Arc<dyn Fn(maestro_core::EventNotice) + Send + Sync>) {}

    fn notify_document(&self, _notice: maestro_core::DocumentNotice) {}

    fn listen_documents(&self, _on_notice: std::sync::Arc<dyn Fn(maestro_core::DocumentNotice) + Send + Sync>) {}
}

/// The key generation of one SQLite file, shared by every process that opens it (the
/// server, `maestro mcp`, the CLI): 8 bytes in the sidecar file `<database>-keys`, a
/// fresh random value written after every key write commits and read before every use
/// of a cached key. A random value rather than a counter: two processes bumping at
/// once can never write the same value back, so a reader that tagged its cache with a
/// value sees a change whatever the order of the writes. Nothing here is durable or
/// needs to be: it only orders a commit before the next request's read. A process that
/// dies between its commit and the bump leaves caches stale until their entries' time
/// to live ends, or another key write (a repeated revocation) bumps the epoch.
#[derive(Debug)]
struct KeyEpoch {
    file: std::fs::File,
}

impl KeyEpoch {
    fn open(database: &Path) -> std::io::Result<Self> {
        use std::os::unix::fs::FileExt as _;
        let mut name = database.as_os_str().to_owned();
        name.push("-keys");
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&name)?;
        if file.metadata()?.len() < 8 {
            file.write_all_at(&crate::random::random_bytes::<8>(), 0)?;
        }
        Ok(Self { file })
    }

    fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt as _;
        let mut bytes = [0u8; 8];
        self.file.read_exact_at(&mut bytes, 0).ok()?;
        Some(u64::from_le_bytes(bytes))
    }

    fn bump(&self) {
        use std::os::unix::fs::FileExt as _;
        if let Err(err) = self.file.write_all_at(&crate::random::random_bytes::<8>(), 0) {
            tracing::error!(
                error = %err,
                "cannot announce a key change to other processes; their cached keys stay until their time to live ends"
            );
        }
    }
}

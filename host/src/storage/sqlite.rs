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
use super::{Backend, Durability, backend_err};

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
    /// The WAL's flusher under [`Durability::Normal`].
    wal: Option<std::sync::Arc<WalFlusher>>,
    /// Keeps the background checkpointer running while a handle lives.
    _checkpointer: std::sync::Arc<Checkpointer>,
    /// The connection kept for postings between them (`ledger.rs`).
    pub(super) ledger_connections: std::sync::Arc<super::ledger::LedgerConnections<sqlx::Sqlite>>,
}

/// The WAL size in pages past which a committing connection checkpoints itself: a
/// backstop only, for when the background [`Checkpointer`] cannot keep up or is gone.
const AUTOCHECKPOINT_BACKSTOP_PAGES: u32 = 10_000;

impl Backend for SqliteStore {
    type Db = sqlx::Sqlite;
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and applies migrations, with the
    /// default settings.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &super::StoreSettings::default()).await
    }

    /// Opens (creating if needed) the database file with `settings` and applies
    /// migrations.
    pub async fn open_with(path: &Path, settings: &super::StoreSettings) -> Result<Self, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(backend_err)?;
        }
        let options = SqliteConnectOptions::from_str("sqlite:")
            .map_err(backend_err)?
            .filename(path)
            .create_if_missing(true)
            .foreign_keys(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match settings.durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(10))
            // Checkpoints run in the background (`Checkpointer`); a commit checkpoints only
            // as a backstop, when the WAL holds this many pages (~40 MiB).
            .pragma("wal_autocheckpoint", AUTOCHECKPOINT_BACKSTOP_PAGES.to_string());
        // No liveness ping before each acquire (`test_before_acquire`, on by default): it
        // is a round trip to the connection's worker thread (~10–20 µs of hand-offs), and
        // it guards against what cannot happen to a local file: no server drops an idle
        // connection. A connection whose worker died fails its next statement, and that
        // one call reports a store error.
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options)
            .await
            .map_err(backend_err)?;
        MIGRATOR.run(&pool).await.map_err(backend_err)?;
        let key_epoch = std::sync::Arc::new(KeyEpoch::open(path).map_err(backend_err)?);
        let wal = match settings.durability {
            Durability::Full => None,
            Durability::Normal => Some(WalFlusher::start(path, settings.flush_interval).map_err(backend_err)?),
        };
        let checkpointer = Checkpointer::start(path, &pool);
        Ok(Self {
            pool,
            vectors: Default::default(),
            passage_vectors: Default::default(),
            key_epoch,
            wal,
            _checkpointer: checkpointer,
            ledger_connections: std::sync::Arc::new(super::ledger::LedgerConnections::new(Self::POSTING_LANES)),
        })
    }

    /// Makes every commit so far durable now: under [`Durability::Normal`], an fsync of
    /// the WAL (on a blocking thread); under [`Durability::Full`] they already are. For
    /// writes that must survive a power loss before they are acknowledged (keys,
    /// processed Stripe events and, through the WAL's order, the grants before them).
    pub(super) async fn make_durable(&self) -> Result<(), StoreError> {
        let Some(wal) = self.wal.clone() else { return Ok(()) };
        tokio::task::spawn_blocking(move || wal.sync()).await.map_err(backend_err)?.map_err(backend_err)
    }

    /// SQLite's `synchronous` setting on a connection of the pool (`2`: full, `1`:
    /// normal), for diagnostics and tests.
    pub async fn synchronous(&self) -> Result<i64, StoreError> {
        sqlx::query_scalar("PRAGMA synchronous").fetch_one(&self.pool).await.map_err(backend_err)
    }

    /// How many times the WAL was fsynced by the flusher or `make_durable`
    /// (`None` under [`Durability::Full`]).
    pub fn wal_syncs(&self) -> Option<u64> {
        self.wal.as_ref().map(|wal| wal.syncs.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// After a key write committed: durable at once (a revocation must survive a power
    /// loss), then a fresh epoch in the sidecar file, so that every process's key cache
    /// drops what it read before.
    async fn announce_key_write(&self) {
        if let Err(err) = self.make_durable().await {
            tracing::error!(error = %err, "cannot fsync the store after a key write");
        }
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

    /// A ledger write: a write transaction, durable as `[store] durability` says (at
    /// once under `full`; within the flush interval under `normal`).
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
impl_ledger_queries!(SqliteStore);
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

/// Under [`Durability::Normal`], fsyncs the WAL file every interval while commits
/// arrive, so that a power loss loses at most the commits of the last interval. A
/// plain thread (a sleep, a `stat` of the WAL and, when it changed, one `fdatasync`),
/// stopped when the store's last handle is dropped. A change is seen by the WAL's
/// length and modification time; the kernel stamps the latter with a coarse clock (one
/// tick, up to 10 ms), so a write in the same tick as the last `stat` looks like no
/// change: the flusher keeps syncing for [`WalFlusher::settle`] after the last change
/// it saw, which covers such writes. The WAL is opened by path for every sync: SQLite
/// deletes and recreates it when the last connection closes, and an fsync through an
/// old descriptor would sync a file nobody writes any more.
#[derive(Debug)]
struct WalFlusher {
    wal: std::path::PathBuf,
    syncs: std::sync::atomic::AtomicU64,
}

impl WalFlusher {
    fn start(database: &Path, interval: Duration) -> std::io::Result<std::sync::Arc<Self>> {
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let flusher = std::sync::Arc::new(Self { wal: wal.into(), syncs: std::sync::atomic::AtomicU64::new(0) });
        let weak = std::sync::Arc::downgrade(&flusher);
        let settle = Self::settle(interval);
        std::thread::Builder::new().name("maestro-wal-flush".into()).spawn(move || {
            let (mut seen, mut changed_at) = (None, None::<std::time::Instant>);
            loop {
                std::thread::sleep(interval);
                let Some(flusher) = weak.upgrade() else { return };
                let synced = flusher.state().and_then(|state| {
                    if state != seen {
                        seen = state;
                        changed_at = Some(std::time::Instant::now());
                    }
                    match changed_at {
                        Some(at) if state.is_some() && at.elapsed() <= settle => flusher.sync(),
                        _ => Ok(()),
                    }
                });
                if let Err(err) = synced {
                    tracing::warn!(error = %err, "cannot fsync the store's WAL; retrying");
                }
            }
        })?;
        Ok(flusher)
    }

    /// How long syncing goes on after the last change seen: three intervals, and at
    /// least 30 ms (three ticks of the coarsest kernel clock).
    fn settle(interval: Duration) -> Duration {
        (interval * 3).max(Duration::from_millis(30))
    }

    fn state(&self) -> std::io::Result<Option<(u64, std::time::SystemTime)>> {
        match std::fs::metadata(&self.wal) {
            Ok(meta) => Ok(Some((meta.len(), meta.modified()?))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    /// `fdatasync`s the WAL (its data and its length, what reading it back needs):
    /// every frame written before this call is on disk when it returns.
    fn sync(&self) -> std::io::Result<()> {
        match std::fs::File::open(&self.wal) {
            Ok(file) => file.sync_data()?,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        }
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }
}

/// Copies the WAL back into the database (`PRAGMA wal_checkpoint(PASSIVE)`) on a pooled
/// connection every [`Checkpointer::EVERY`] while the WAL changes, instead of SQLite's
/// automatic checkpoint, which a commit runs on its own path every 1,000 pages (every
/// ~80 debits: a debit writes ~12 pages) and which waits for two fsyncs (the WAL's and
/// the database's), the largest part of a debit's tail latency. A passive checkpoint
/// blocks no writer and no reader; it syncs exactly as the automatic one does, so the
/// durability of commits is unchanged. A task of the runtime that opened the store,
/// stopped when the store's last handle is dropped; the automatic checkpoint stays as a
/// backstop at [`AUTOCHECKPOINT_BACKSTOP_PAGES`] in case this task cannot run (its
/// runtime ended).
#[derive(Debug)]
struct Checkpointer;

impl Checkpointer {
    /// How often the WAL is looked at (one `stat`) and, when it changed, checkpointed.
    const EVERY: Duration = Duration::from_millis(50);

    fn start(database: &Path, pool: &SqlitePool) -> std::sync::Arc<Self> {
        let alive = std::sync::Arc::new(Self);
        let weak = std::sync::Arc::downgrade(&alive);
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let wal = std::path::PathBuf::from(wal);
        let pool = pool.clone();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // Opened outside a runtime: the automatic checkpoint (the backstop) does it.
            return alive;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(Self::EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut seen = None;
            loop {
                tick.tick().await;
                if weak.upgrade().is_none() {
                    return;
                }
                let state = std::fs::metadata(&wal).ok().map(|m| (m.len(), m.modified().ok()));
                if state.is_none() || state == seen {
                    continue;
                }
                seen = state;
                if let Err(err) = sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&pool).await {
                    tracing::warn!(error = %err, "cannot checkpoint the store's WAL; retrying");
                }
            }
        });
        alive
    }
}

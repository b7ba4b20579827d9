//! Storage adapters (the only module that uses sqlx).
//!
//! One adapter per backend — [`sqlite::SqliteStore`] (the embedded default) and
//! [`postgres::PostgresStore`] — both implementing the core ports. Queries that are the
//! same SQL on both backends are written once in `shared.rs`; a backend file holds only
//! what differs (connecting, pragmas, migrations, and later backend-specific queries such
//! as `FOR UPDATE SKIP LOCKED`). Reads decode into row structs (`#[derive(sqlx::FromRow)]`)
//! converted to domain types in one place per table. Migrations live in `migrations/{sqlite,postgres}` at the
//! workspace root and are embedded in the binary.

mod artifacts;
mod billing;
mod documents;
mod jobs;
mod leases;
mod ledger;
pub mod memories;
mod passages;
pub mod postgres;
mod runs;
mod schedules;
mod search;
mod shared;
mod signal;
pub mod sqlite;
mod unit;
mod vector_cache;

use std::path::Path;
use std::sync::Arc;

use maestro_core::{Store, StoreError};

/// Where the store lives, parsed from config.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreLocation {
    /// An SQLite file, created if missing.
    Sqlite(std::path::PathBuf),
    /// A Postgres server (`postgres://…` URL).
    Postgres(String),
}

impl std::fmt::Debug for StoreLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreLocation::Sqlite(path) => write!(f, "sqlite:{}", path.display()),
            StoreLocation::Postgres(url) => write!(f, "{}", redact_url(url)),
        }
    }
}

impl StoreLocation {
    /// Resolves the store from an optional database URL and the data directory: no URL
    /// means the embedded SQLite file `maestro.db` under the data directory.
    pub fn resolve(database_url: Option<&str>, data_dir: &Path) -> Result<Self, String> {
        match database_url {
            None => Ok(Self::Sqlite(data_dir.join("maestro.db"))),
            Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
                Ok(Self::Postgres(url.to_owned()))
            }
            Some(url) => match url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) {
                Some(path) if !path.is_empty() => Ok(Self::Sqlite(path.into())),
                _ => Err("unsupported database url: use postgres://… or sqlite:PATH".to_owned()),
            },
        }
    }

    /// A description safe to print (no password).
    pub fn describe(&self) -> String {
        format!("{self:?}")
    }
}

/// Opens the store and applies pending migrations. The composition root hands each
/// use-case the ports it needs from it (`Arc<dyn Store>` coerces to `Arc<dyn LedgerStore>`
/// and the other ports).
pub async fn open(location: &StoreLocation) -> Result<Arc<dyn Store>, StoreError> {
    open_with(location, &StoreSettings::default()).await
}

/// [`open`] with the `[store]` settings.
pub async fn open_with(location: &StoreLocation, settings: &StoreSettings) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match location {
        StoreLocation::Sqlite(path) => Arc::new(sqlite::SqliteStore::open_with(path, settings).await?),
        StoreLocation::Postgres(url) => Arc::new(postgres::PostgresStore::open(url).await?),
    })
}

/// When a commit on the embedded SQLite store is on disk (`[store] durability`).
/// Postgres commits follow the server's settings (the ledger's with
/// `synchronous_commit = on`), whatever this says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Durability {
    /// `synchronous=FULL`: every commit waits for its fsync. Nothing that returned is
    /// ever lost, a crash of the process or of the machine alike; every write pays an
    /// fsync (~0.8 ms on the reference machine), paid calls' debits included.
    Full,
    /// `synchronous=NORMAL`, and a flusher that fsyncs the WAL every `flush_interval`
    /// while commits arrive. A crash of the process loses nothing (committed pages are
    /// in the operating system's cache); a power loss or kernel crash may lose the
    /// commits of the last `flush_interval` (plus one fsync), never the database's
    /// consistency. Key writes and processed Stripe events are fsynced before they are
    /// acknowledged, whatever the interval.
    #[default]
    Normal,
}

impl Durability {
    /// The name used in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Full => "full",
            Durability::Normal => "normal",
        }
    }
}

/// The `[store]` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreSettings {
    /// When an SQLite commit is on disk.
    pub durability: Durability,
    /// How often the flusher fsyncs the WAL under [`Durability::Normal`].
    pub flush_interval: std::time::Duration,
}

impl Default for StoreSettings {
    fn default() -> Self {
        Self { durability: Durability::default(), flush_interval: std::time::Duration::from_millis(10) }
    }
}

/// Replaces the password in a URL's user-info, and the value of every query parameter
/// that looks secret (`password`, `sslpassword`, `*secret*`, `*token*`, …), with `***`.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let query_start = rest.find(['?', '#']).unwrap_or(rest.len());
    let (before_query, query) = rest.split_at(query_start);
    // The user-info ends at the last `@` before the query (a password may hold `@` or `/`).
    let before_query = match before_query.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            let masked = if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{masked}@{host}")
        }
        None => before_query.to_owned(),
    };
    format!("{scheme}://{before_query}{}", redact_query(query))
}

/// `?a=1&password=x#f` with secret-looking values replaced.
fn redact_query(query: &str) -> String {
    let Some(params) = query.strip_prefix('?') else {
        return query.to_owned();
    };
    let (params, fragment) = params.split_once('#').map_or((params, None), |(p, f)| (p, Some(f)));
    let redacted: Vec<String> = params
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if is_secret_parameter(key) => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    let fragment = fragment.map_or_else(String::new, |f| format!("#{f}"));
    format!("?{}{fragment}", redacted.join("&"))
}

/// Whether a query parameter carries a secret (compared case-insensitively).
fn is_secret_parameter(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    ["password", "passwd", "pwd", "secret", "token", "apikey", "api_key", "api-key", "sslkey"]
        .iter()
        .any(|word| key.contains(word))
}

/// What a backend adapter names for the shared queries in [`shared`].
trait Backend {
    /// The sqlx database driver.
    type Db: sqlx::Database;
}

/// The newest migration this binary carries, e.g. `1 tenants and keys`.
pub fn latest_migration(location: &StoreLocation) -> String {
    let migrator = match location {
        StoreLocation::Sqlite(_) => &sqlite::MIGRATOR,
        StoreLocation::Postgres(_) => &postgres::MIGRATOR,
    };
    migrator.iter().last().map_or_else(|| "none".to_owned(), |m| format!("{} {}", m.version, m.description))
}

/// Maps a sqlx error to the port's error, naming what conflicted or was missing.
fn map_err(what: &str) -> impl Fn(sqlx::Error) -> StoreError + '_ {
    move |err| match &err {
        sqlx::Error::Database(db) if db.is_unique_violation() => StoreError::Conflict(what.to_owned()),
        sqlx::Error::Database(db) if db.is_foreign_key_violation() => {
            StoreError::NotFound(format!("a row referenced by {what}"))
        }
        _ => StoreError::Backend(Box::new(err)),
    }
}

fn backend_err(err: impl std::error::Error + Send + Sync + 'static) -> StoreError {
    StoreError::Backend(Box::new(err))
}

/// Asserts that each named query is one indexed search on a freshly migrated SQLite
/// store (no table scan, no sort step), so it stays fast however many rows there are.
#[cfg(test)]
pub(crate) async fn assert_indexed_on_sqlite(queries: &[(&str, &str)]) {
    use sqlx::{Connection as _, Row as _};
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("plan.db");
    sqlite::SqliteStore::open(&path).await.expect("store opens and migrates");
    let url = format!("sqlite:{}", path.display());
    let mut conn = sqlx::SqliteConnection::connect(&url).await.expect("connect");
    for (name, sql) in queries {
        let explain = sqlx::AssertSqlSafe(format!("EXPLAIN QUERY PLAN {sql}"));
        let rows = sqlx::raw_sql(explain).fetch_all(&mut conn).await.expect("explain");
        let plan: Vec<String> = rows.iter().map(|r| r.get::<String, _>("detail")).collect();
        assert!(!plan.is_empty(), "{name}: no plan");
        for step in &plan {
            assert!(!step.starts_with("SCAN") && !step.contains("TEMP B-TREE"), "{name} scans or sorts: {plan:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redacts_passwords_but_keeps_the_rest() {
        assert_eq!(redact_url("postgres://u:secret@db:5432/m"), "postgres://u:***@db:5432/m");
        assert_eq!(redact_url("postgres://u@db/m"), "postgres://u@db/m");
        assert_eq!(redact_url("postgres://db/m?x=@"), "postgres://db/m?x=@");
        assert_eq!(redact_url("postgres://u:p@ss@db/m"), "postgres://u:***@db/m");
        assert_eq!(redact_url("postgres://u:pa/ss@db/m"), "postgres://u:***@db/m");
    }

    #[test]
    fn redacts_secret_query_parameters() {
        assert_eq!(redact_url("postgres://u@db/m?password=hunter2"), "postgres://u@db/m?password=***");
        assert_eq!(
            redact_url("postgres://db/m?sslmode=require&password=hunter2&application_name=x"),
            "postgres://db/m?sslmode=require&password=***&application_name=x"
        );
        assert_eq!(
            redact_url("postgres://db/m?sslpassword=k1&PASSWORD=k2"),
            "postgres://db/m?sslpassword=***&PASSWORD=***"
        );
        assert_eq!(
            redact_url("postgres://db?auth_token=t&client_secret=s#frag"),
            "postgres://db?auth_token=***&client_secret=***#frag"
        );
        assert_eq!(redact_url("postgres://u:pw@db?password=x"), "postgres://u:***@db?password=***");
        for secret in ["hunter2", "k1", "k2"] {
            for url in ["postgres://db/m?password=hunter2", "postgres://db/m?sslpassword=k1&password=k2"] {
                assert!(!redact_url(url).contains(secret) || !url.contains(secret), "{url} leaks {secret}");
            }
        }
        assert_eq!(redact_url("postgres://db/m?sslmode=disable"), "postgres://db/m?sslmode=disable");
    }

    #[test]
    fn resolves_locations() {
        let dir = Path::new("/d");
        assert_eq!(StoreLocation::resolve(None, dir).ok(), Some(StoreLocation::Sqlite("/d/maestro.db".into())));
        assert_eq!(
            StoreLocation::resolve(Some("sqlite:/x/y.db"), dir).ok(),
            Some(StoreLocation::Sqlite("/x/y.db".into()))
        );
        assert!(matches!(StoreLocation::resolve(Some("postgresql://h/db"), dir), Ok(StoreLocation::Postgres(_))));
        assert!(StoreLocation::resolve(Some("mysql://h/db"), dir).is_err());
        assert!(StoreLocation::resolve(Some("sqlite:"), dir).is_err());
    }
}

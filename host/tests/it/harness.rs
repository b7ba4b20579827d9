//! `TestHost`: a store per test on the chosen backend, a clock the test moves, the real
//! router driven in-process (`oneshot`) or on a real socket.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use chrono::{DateTime, Utc};
use maestro_core::policy::PolicySet;
use maestro_core::{Clock, Store};
use maestro_host::accounts::Accounts;
use maestro_host::credits::Credits;
use maestro_host::http::{self, AppState, HttpSettings};
use maestro_host::jobs::Jobs;
use maestro_host::orchestrator::Orchestrator;
use maestro_host::orchestrator::hub::EventHub;
use maestro_host::plugins::PluginRegistry;
use maestro_host::policy::PolicyStore;
use maestro_host::schedules::{SchedulePorts, ScheduleSettings, Schedules};
use maestro_host::storage::{self, StoreLocation};
use maestro_host::tools::{SecretValues, Tools};
use serde_json::Value;
use sqlx::Connection as _;
use tower::ServiceExt as _;

/// Which store a test runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// Expands each named `async fn name(backend: Backend)` in the calling module into one
/// test per backend.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::harness::Backend::Postgres).await
                }
            )*
        }
    };
}
pub(crate) use backend_tests;

/// A fresh, empty store location for one test. Dropping it removes the SQLite file;
/// Postgres databases are named `maestro_test_*` and live as long as the test server.
#[derive(Debug)]
pub(crate) struct TestDb {
    pub(crate) location: StoreLocation,
    /// The URL to hand to a `maestro` process.
    pub(crate) url: String,
    _dir: tempfile::TempDir,
}

impl TestDb {
    pub(crate) async fn new(backend: Backend) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        match backend {
            Backend::Sqlite => {
                let path = dir.path().join("maestro.db");
                let url = format!("sqlite:{}", path.display());
                Self { location: StoreLocation::Sqlite(path), url, _dir: dir }
            }
            Backend::Postgres => {
                let url = fresh_postgres_database().await;
                Self { location: StoreLocation::Postgres(url.clone()), url, _dir: dir }
            }
        }
    }

    /// Opens (and migrates) the store; may be called again to reopen it.
    pub(crate) async fn open(&self) -> Arc<dyn Store> {
        storage::open(&self.location).await.expect("store opens and migrates")
    }

    /// A scratch directory that lives as long as this database.
    pub(crate) fn dir(&self) -> PathBuf {
        self._dir.path().to_owned()
    }
}

/// The Postgres server the suite uses. Never skips: a missing server is a failure.
pub(crate) fn postgres_server_url() -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "TEST_DATABASE_URL is not set: the Postgres half of the suite needs a PostgreSQL + pgvector \
             server. Run `scripts/test` (it provisions one), or set TEST_DATABASE_URL, or filter to \
             sqlite tests explicitly with `cargo test sqlite`"
        ),
    }
}

async fn fresh_postgres_database() -> String {
    let server = postgres_server_url();
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).expect("random");
    let name = format!("maestro_test_{}", bytes.iter().map(|b| format!("{b:02x}")).collect::<String>());
    let mut admin = sqlx::PgConnection::connect(&server).await.expect("connect to TEST_DATABASE_URL");
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut admin)
        .await
        .expect("create test database");
    admin.close().await.ok();
    with_database(&server, &name)
}

/// `url` with its database name replaced.
fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").expect("url has a scheme");
    let authority = rest.split('/').next().unwrap_or(rest);
    let query = query.map_or_else(String::new, |q| format!("?{q}"));
    format!("{scheme}://{authority}/{database}{query}")
}

/// Tools over a plugin directory holding `plugins`, with fixed policies.
pub(crate) async fn tools_with(
    plugin_dir: &std::path::Path,
    plugins: &[&str],
    policies: PolicySet,
    credits: Arc<Credits>,
) -> Arc<Tools> {
    std::fs::create_dir_all(plugin_dir).expect("plugin dir");
    for plugin in plugins {
        crate::fixtures::install(plugin_dir, plugin);
    }
    let registry = Arc::new(PluginRegistry::new(crate::fixtures::sandbox(), plugin_dir.to_owned()));
    registry.refresh().await;
    let secrets = SecretValues::new(Default::default(), plugin_dir.join("no-secrets"));
    Arc::new(Tools::new(registry, Arc::new(PolicyStore::fixed(policies)), secrets).with_credits(credits))
}

/// The orchestrator over `store` with the default feed intervals.
pub(crate) fn orchestrator(store: &Arc<dyn Store>, clock: Arc<ManualClock>, tools: &Arc<Tools>) -> Arc<Orchestrator> {
    orchestrator_with(store, clock, tools, EventHub::new(store.clone()))
}

/// The orchestrator over `store` with this hub.
pub(crate) fn orchestrator_with(
    store: &Arc<dyn Store>,
    clock: Arc<ManualClock>,
    tools: &Arc<Tools>,
    hub: EventHub,
) -> Arc<Orchestrator> {
    Arc::new(Orchestrator::new(store.clone(), store.clone(), clock, tools.clone(), Arc::new(hub)))
}

/// The schedule use-cases over `store`.
pub(crate) fn schedules(
    store: &Arc<dyn Store>,
    clock: Arc<ManualClock>,
    tools: &Arc<Tools>,
    settings: ScheduleSettings,
) -> Arc<Schedules> {
    let ports = SchedulePorts {
        store: store.clone(),
        runs: store.clone(),
        unit: store.clone(),
        keys: store.clone(),
        clock,
        tools: tools.clone(),
    };
    Arc::new(Schedules::new(ports, settings))
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub(crate) struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub(crate) fn new() -> Arc<Self> {
        let now = DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).expect("valid time");
        Arc::new(Self(Mutex::new(now)))
    }

    pub(crate) fn advance(&self, by: chrono::Duration) {
        *self.0.lock().expect("clock lock") += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// The API, in process, over one test store.
#[derive(Debug)]
pub(crate) struct TestHost {
    /// Keeps the test database (and its directory) alive.
    _db: TestDb,
    pub(crate) accounts: Accounts,
    pub(crate) clock: Arc<ManualClock>,
    pub(crate) settings: HttpSettings,
    pub(crate) tools: Arc<Tools>,
    /// The credit ledger tool calls are metered on.
    pub(crate) credits: Arc<Credits>,
    /// Stripe top-ups, when a test sets them up (`None`: billing routes answer 503).
    pub(crate) billing: Option<Arc<maestro_host::billing::Billing>>,
    /// Background jobs.
    pub(crate) jobs: Arc<Jobs>,
    /// The whole backend, for tests that hand its ports to use-cases themselves.
    pub(crate) store: Arc<dyn Store>,
    /// Sessions, messages and runs; its hub is shared by every request of this host.
    pub(crate) orchestrator: Arc<Orchestrator>,
    /// Living documents.
    pub(crate) documents: Arc<maestro_host::documents::Documents>,
    /// Schedules (default settings, this host's clock).
    pub(crate) schedules: Arc<Schedules>,
    /// Artifacts, on disk under the test's directory.
    pub(crate) artifacts: maestro_host::artifacts::Artifacts,
    /// Memories, embedded by the deterministic fake embedder (384 dimensions).
    pub(crate) memories: Option<Arc<maestro_host::memory::Memories>>,
    /// The full-text index, when a test opens one ([`TestHost::open_search`]).
    pub(crate) search: Option<maestro_host::search::FullText>,
    /// The embedder: the deterministic fake (`fake_embed`) unless a test replaces it.
    pub(crate) embedder: Arc<dyn maestro_core::embed::Embedder>,
    /// Hybrid search's default half-life (`[search] half_life`; `None`: no decay).
    pub(crate) half_life: Option<std::time::Duration>,
}

/// An answer: status, headers, and the body parsed as JSON (or `Value::String` when it
/// is not JSON).
#[derive(Debug)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Value,
}

impl Reply {
    /// The error code of an error body.
    pub(crate) fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or_else(|| panic!("not an error body: {}", self.body))
    }
}

impl TestHost {
    pub(crate) async fn new(backend: Backend) -> Self {
        Self::with_settings(
            backend,
            HttpSettings { body_limit_bytes: 64 * 1024, cors_allow_origins: vec![], mcp: Default::default() },
        )
        .await
    }

    pub(crate) async fn with_settings(backend: Backend, settings: HttpSettings) -> Self {
        let db = TestDb::new(backend).await;
        let store = db.open().await;
        let clock = ManualClock::new();
        let accounts = Accounts::new(store.clone(), clock.clone());
        let credits = Arc::new(Credits::new(store.clone(), clock.clone()));
        let jobs = Arc::new(Jobs::new(store.clone(), clock.clone()));
        let tools = tools_with(&db.dir().join("plugins"), &[], PolicySet::deny_all(), credits.clone()).await;
        let orchestrator = orchestrator(&store, clock.clone(), &tools);
        let artifacts =
            maestro_host::artifacts::Artifacts::on_disk(db.dir().join("artifacts"), store.clone(), clock.clone());
        let documents = Arc::new(maestro_host::documents::Documents::new(store.clone(), clock.clone()));
        let schedules = schedules(&store, clock.clone(), &tools, ScheduleSettings::default());
        let embedder: Arc<dyn maestro_core::embed::Embedder> =
            Arc::new(crate::fake_embed::FakeEmbedder::named("fake-a"));
        let memories =
            Some(Arc::new(maestro_host::memory::Memories::new(store.clone(), embedder.clone(), clock.clone())));
        Self {
            _db: db,
            accounts,
            clock,
            settings,
            tools,
            credits,
            billing: None,
            jobs,
            store,
            orchestrator,
            documents,
            schedules,
            artifacts,
            memories,
            search: None,
            embedder,
            half_life: None,
        }
    }

    /// The test's directory (the index lives under it).
    pub(crate) fn dir(&self) -> PathBuf {
        self._db.dir()
    }

    /// Installs `plugins` (built fixtures) and runs under `policy` (TOML text).
    pub(crate) async fn with_plugins(backend: Backend, plugins: &[&str], policy: &str) -> Self {
        let mut host = Self::new(backend).await;
        let set = PolicySet::parse([("test-policy.toml", policy)]).unwrap_or_else(|e| panic!("test policy: {e}"));
        host.tools = tools_with(&host._db.dir().join("plugins"), plugins, set, host.credits.clone()).await;
        host.orchestrator = orchestrator(&host.store, host.clock.clone(), &host.tools);
        host.schedules = schedules(&host.store, host.clock.clone(), &host.tools, ScheduleSettings::default());
        host
    }

    /// Replaces the event hub's idle poll and heartbeat intervals (a fresh hub).
    pub(crate) fn set_event_intervals(&mut self, poll: std::time::Duration, heartbeat: std::time::Duration) {
        let hub = EventHub::new(self.store.clone()).with_poll_interval(poll).with_heartbeat_interval(heartbeat);
        self.orchestrator = orchestrator_with(&self.store, self.clock.clone(), &self.tools, hub);
    }

    /// The event hub the API's streams read.
    pub(crate) fn hub(&self) -> &Arc<EventHub> {
        self.orchestrator.hub()
    }

    pub(crate) fn router(&self) -> axum::Router {
        let state = AppState {
            accounts: self.accounts.clone(),
            metrics: Arc::default(),
            tools: self.tools.clone(),
            credits: self.credits.clone(),
            jobs: self.jobs.clone(),
            shutdown: Default::default(),
            billing: self.billing.clone(),
            orchestrator: self.orchestrator.clone(),
            documents: self.documents.clone(),
            schedules: self.schedules.clone(),
            artifacts: self.artifacts.clone(),
            memories: self.memories.clone(),
            search: self.search.clone(),
            embedder: self.embedder.clone(),
            retrieval: Some(Arc::new(maestro_host::retrieval::Retrieval::new(
                self.search.clone(),
                self.store.clone(),
                self.store.clone(),
                self.embedder.clone(),
                self.clock.clone(),
                self.half_life,
            ))),
        };
        http::router(state, &self.settings)
    }

    /// Another platform-admin token, for tests that already bootstrapped.
    pub(crate) async fn platform_token_again(&self) -> String {
        let issued = self
            .accounts
            .create_key(maestro_core::KeyScope::Platform, "second".into(), None)
            .await
            .expect("platform key");
        issued.token.expose_secret().to_owned()
    }

    /// A platform-admin token, created the way first start does.
    pub(crate) async fn platform_token(&self) -> String {
        match self.accounts.bootstrap(None).await.expect("bootstrap") {
            maestro_host::accounts::Bootstrap::Generated(issued) => issued.token.expose_secret().to_owned(),
            other => panic!("expected a generated key, got {other:?}"),
        }
    }

    /// Sends one request through a fresh router.
    pub(crate) async fn send(&self, method: Method, path: &str, token: Option<&str>, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        self.send_raw(method, path, token, body.as_deref().map(|b| ("application/json", b.as_bytes().to_vec())), &[])
            .await
    }

    pub(crate) async fn send_raw(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<(&str, Vec<u8>)>,
        extra_headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        for (name, value) in extra_headers {
            request = request.header(*name, *value);
        }
        let request = match body {
            Some((content_type, bytes)) => request.header("content-type", content_type).body(Body::from(bytes)),
            None => request.body(Body::empty()),
        }
        .expect("valid request");
        let response = self.router().oneshot(request).await.expect("infallible router");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.expect("body");
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        Reply { status, headers, body }
    }

    pub(crate) async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::GET, path, token, None).await
    }

    pub(crate) async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Reply {
        self.send(Method::POST, path, token, Some(body)).await
    }

    pub(crate) async fn delete(&self, path: &str, token: Option<&str>) -> Reply {
        self.send(Method::DELETE, path, token, None).await
    }

    /// Creates a tenant and a key with `role` in it through the API; returns the token.
    pub(crate) async fn tenant_with_key(&self, platform: &str, tenant: &str, role: &str) -> String {
        let created = self.post("/v1/tenants", Some(platform), serde_json::json!({ "name": tenant })).await;
        assert!(created.status == StatusCode::CREATED || created.status == StatusCode::CONFLICT, "{created:?}");
        self.key(platform, serde_json::json!({ "tenant": tenant, "role": role })).await
    }

    /// Creates a key through the API and returns its token.
    pub(crate) async fn key(&self, as_token: &str, body: Value) -> String {
        let reply = self.post("/v1/keys", Some(as_token), body).await;
        assert_eq!(reply.status, StatusCode::CREATED, "{reply:?}");
        reply.body["token"].as_str().expect("token").to_owned()
    }
}

//! Configuration: defaults in code < `--config FILE` (TOML) < `MAESTRO_*` environment
//! < command-line flags.
//!
//! Two stages, like the policies: [`RawConfig`] is exactly what a file may say (unknown
//! keys rejected, a `version`), and [`Config`] is the validated, typed value the rest of
//! the host uses. `main` reads the process environment once into a map and passes it in,
//! so tests never touch process-wide state.

mod raw;

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use maestro_core::KeyToken;

pub use raw::RawConfig;

use crate::storage::{StoreLocation, redact_url};

/// The environment, read once by `main`.
pub type Env = BTreeMap<String, String>;

/// Environment variables Maestro reads, with what they override.
pub const ENV_VARS: &[(&str, &str)] = &[
    ("MAESTRO_CONFIG", "path of the TOML config file (like --config)"),
    ("MAESTRO_LISTEN", "listen address, e.g. 0.0.0.0:8080 (listen)"),
    ("MAESTRO_DATA_DIR", "data directory for the embedded store (data_dir)"),
    ("MAESTRO_DATABASE_URL", "postgres://… or sqlite:PATH (database_url)"),
    ("MAESTRO_ADMIN_KEY", "platform-admin key used on first start (admin_key)"),
    ("MAESTRO_LOG", "log filter, e.g. info or maestro_host=debug (log.level)"),
    ("MAESTRO_LOG_FORMAT", "human or json (log.format)"),
    ("MAESTRO_BODY_LIMIT_BYTES", "largest accepted request body (http.body_limit_bytes)"),
    ("MAESTRO_CORS_ALLOW_ORIGINS", "comma-separated CORS allow-list (http.cors_allow_origins)"),
    ("MAESTRO_PLUGIN_DIR", "directory of installed plugins (plugins.dir)"),
    ("MAESTRO_POLICY_DIR", "directory of policy files (policies.dir)"),
    ("MAESTRO_SECRETS_DIR", "directory of file:KEY secrets (policies.secrets_dir)"),
    ("MAESTRO_MCP_ALLOWED_HOSTS", "comma-separated Host allow-list for /mcp (mcp.allowed_hosts)"),
    ("MAESTRO_MCP_ALLOWED_ORIGINS", "comma-separated Origin allow-list for /mcp (mcp.allowed_origins)"),
    ("MAESTRO_MCP_KEY", "tenant API key for `maestro mcp` (instead of --key)"),
    ("MAESTRO_KEY", "tenant API key for `maestro chat` (instead of --key)"),
    ("MAESTRO_MCP_TOOL_NAMES", "qualified or short (mcp.tool_names)"),
    ("MAESTRO_MCP_SESSION_IDLE_TIMEOUT", "idle MCP sessions close after this (mcp.session_idle_timeout)"),
    ("MAESTRO_MCP_MAX_SESSIONS_PER_KEY", "open MCP sessions per API key (mcp.max_sessions_per_key)"),
    ("MAESTRO_MCP_POLL_TOOLS", "comma-separated tools whose POST stream closes at once (mcp.poll_tools)"),
    (
        "MAESTRO_MCP_STATE_KEY",
        "secret sealing MCP input-required request states, the same on every replica (environment only)",
    ),
    ("MAESTRO_JOBS_CONCURRENCY", "jobs one process runs at once (jobs.concurrency)"),
    ("MAESTRO_JOBS_LEASE", "how long a claimed job is held before another worker may take it (jobs.lease)"),
    ("MAESTRO_JOBS_POLL_INTERVAL", "how often an idle job worker looks for due jobs (jobs.poll_interval)"),
    ("MAESTRO_STRIPE_SECRET_KEY", "Stripe secret API key; turns billing on (environment only)"),
    ("MAESTRO_STRIPE_WEBHOOK_SECRET", "Stripe webhook signing secret, whsec_… (environment only)"),
    ("MAESTRO_STRIPE_API_BASE", "Stripe API base URL (billing.api_base)"),
    ("MAESTRO_RUNS_WAIT_TIMEOUT", "how long a run's question waits for its answer (runs.wait_timeout)"),
    ("MAESTRO_SCHEDULES_TICK_INTERVAL", "how often replicas look for due schedules (schedules.tick_interval)"),
    ("MAESTRO_SCHEDULES_MIN_PERIOD", "the shortest period a schedule may have (schedules.min_period)"),
    ("MAESTRO_SCHEDULES_CATCH_UP_GRACE", "how late a fire still counts as on time (schedules.catch_up_grace)"),
    ("MAESTRO_EVENTS_POLL_INTERVAL", "how often an idle event stream reads the store (events.poll_interval)"),
    ("MAESTRO_STORE_DURABILITY", "full or normal: when SQLite commits are on disk (store.durability)"),
    ("MAESTRO_STORE_FLUSH_INTERVAL", "how often the WAL is fsynced under normal (store.flush_interval)"),
    ("MAESTRO_ARTIFACTS_STORE", "disk or s3 (artifacts.store)"),
    ("MAESTRO_ARTIFACTS_DIR", "directory of the disk artifact store (artifacts.dir)"),
    ("MAESTRO_ARTIFACTS_BUCKET", "S3 bucket of the s3 artifact store (artifacts.bucket)"),
    ("MAESTRO_ARTIFACTS_ENDPOINT", "S3 endpoint URL (artifacts.endpoint)"),
    ("MAESTRO_ARTIFACTS_REGION", "S3 region (artifacts.region)"),
    ("MAESTRO_ARTIFACTS_ALLOW_HTTP", "true to allow a plain http:// S3 endpoint (artifacts.allow_http)"),
    ("MAESTRO_ARTIFACTS_PREFIX", "key prefix in the S3 bucket (artifacts.prefix)"),
    ("MAESTRO_ARTIFACTS_ACCESS_KEY_ID", "env:NAME or file:NAME of the S3 access key id (artifacts.access_key_id)"),
    (
        "MAESTRO_ARTIFACTS_SECRET_ACCESS_KEY",
        "env:NAME or file:NAME of the S3 secret access key (artifacts.secret_access_key)",
    ),
    ("MAESTRO_EMBEDDINGS_PROVIDER", "minilm (built in, offline) or openai (embeddings.provider)"),
    (
        "MAESTRO_EMBEDDINGS_MODEL_DIR",
        "directory of the offline model, as scripts/model.sh prints it (embeddings.model_dir)",
    ),
    ("MAESTRO_EMBEDDINGS_BASE_URL", "base URL of an OpenAI-compatible embeddings service (embeddings.base_url)"),
    ("MAESTRO_EMBEDDINGS_MODEL", "the embeddings service's model name (embeddings.model)"),
    ("MAESTRO_EMBEDDINGS_DIMENSIONS", "numbers per vector of the service's model (embeddings.dimensions)"),
    ("MAESTRO_EMBEDDINGS_BATCH_SIZE", "texts per forward pass or per request (embeddings.batch_size)"),
    ("MAESTRO_EMBEDDINGS_THREADS", "threads of the offline embedder, 0 for one per core (embeddings.threads)"),
    ("MAESTRO_MEMORY_RECALL", "true or false: personas recall memories and earlier sessions (memory.recall)"),
    ("MAESTRO_MEMORY_DISTIL", "true or false: completed runs are distilled into memories (memory.distil)"),
];

/// The config file format version this build reads.
pub const CONFIG_VERSION: u32 = 1;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// Flags that override everything else.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    /// `--listen`.
    pub listen: Option<String>,
    /// `--log-format`.
    pub log_format: Option<LogFormat>,
}

/// The validated configuration.
#[derive(Clone, PartialEq)]
pub struct Config {
    /// Address the HTTP server binds.
    pub listen: SocketAddr,
    /// Directory for the embedded store and, later, caches and indexes.
    pub data_dir: PathBuf,
    /// Where the store lives (derived from `database_url` and `data_dir`).
    pub store: StoreLocation,
    /// Platform-admin key to register on first start instead of generating one.
    pub admin_key: Option<KeyToken>,
    /// Tracing filter directives.
    pub log_filter: String,
    /// Log output format.
    pub log_format: LogFormat,
    /// Largest accepted request body, in bytes.
    pub body_limit_bytes: usize,
    /// Origins allowed by CORS; empty means CORS is off (no CORS headers at all).
    pub cors_allow_origins: Vec<String>,
    /// Directory of installed plugins.
    pub plugin_dir: PathBuf,
    /// How often plugins are re-scanned (`None`: never).
    pub plugin_reload: Option<Duration>,
    /// Directory of policy files.
    pub policy_dir: PathBuf,
    /// How often policies are re-read (`None`: never).
    pub policy_reload: Option<Duration>,
    /// Directory of `file:KEY` secrets.
    pub secrets_dir: PathBuf,
    /// Sandbox engine settings.
    pub sandbox: SandboxSettings,
    /// The MCP endpoint.
    pub mcp: McpSettings,
    /// Stripe top-ups; `None` when `MAESTRO_STRIPE_SECRET_KEY` is not set.
    pub billing: Option<BillingSettings>,
    /// What model calls cost, by model name (used by the orchestrator).
    pub model_prices: Vec<ModelPrice>,
    /// The background job worker.
    pub jobs: JobsSettings,
    /// `[schedules]`.
    pub schedules: crate::schedules::ScheduleSettings,
    /// `[events]`: how often an idle event stream reads the store (the backstop of
    /// notifications from other replicas).
    pub events_poll_interval: Duration,
    /// Model providers and models (`[llm]`); empty when none is configured.
    pub llm: LlmSettings,
    /// Agent runs (`[runs]`).
    pub runs: RunsSettings,
    /// Where artifacts (document exports) are kept (`[artifacts]`).
    pub artifacts: ArtifactSettings,
    /// The full-text index (`[search]`).
    pub search: crate::search::SearchSettings,
    /// The embedder of memories and semantic search (`[embeddings]`).
    pub embeddings: EmbeddingSettings,
    /// What personas recall, and distillation after runs (`[memory]`).
    pub memory: crate::recall::MemorySettings,
    /// `MAESTRO_*` variables that were set but are not known, to warn about once
    /// logging is up.
    pub unknown_env: Vec<String>,
    /// `[store]`: when the embedded store's commits are on disk.
    pub store_settings: crate::storage::StoreSettings,
    /// `[auth]`: the cache of verified API keys.
    pub key_cache: crate::accounts::KeyCacheSettings,
}

/// How tools and prompts are named to MCP clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum McpNames {
    /// Always `plugin.tool`: stable whatever else is installed.
    #[default]
    Qualified,
    /// `tool` when no other tool the caller sees has that name, else `plugin.tool`.
    Short,
}

/// The background job worker of `maestro serve` (`[jobs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobsSettings {
    /// Jobs one process runs at once (1 to 1024).
    pub concurrency: usize,
    /// How long a claimed job is held before another worker may take it over (1s to 1h);
    /// the worker extends it every third of this while the job runs.
    pub lease: Duration,
    /// How often an idle worker looks for due jobs (10ms to 1h).
    pub poll_interval: Duration,
}

/// Agent runs (`[runs]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunsSettings {
    /// How long a run's question to the user waits for its answer before the run ends
    /// `expired` (1s to 365 days).
    pub wait_timeout: Duration,
}

/// The MCP endpoint (`/mcp`) and stdio server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct McpSettings {
    /// Hosts (`name` or `name:port`) accepted in the `Host` header (DNS-rebinding
    /// protection); empty accepts any host.
    pub allowed_hosts: Vec<String>,
    /// Browser origins accepted in the `Origin` header; a request carrying any other
    /// origin is refused. Requests without `Origin` (non-browser clients) pass.
    pub allowed_origins: Vec<String>,
    /// Tool and prompt naming.
    pub names: McpNames,
    /// Idle sessions (2025-11-25 revision) close after this long.
    pub session_idle_timeout: Duration,
    /// Open sessions (2025-11-25 revision) one API key may hold; `initialize` past it
    /// is refused with 429 until one closes (DELETE) or idles out.
    pub max_sessions_per_key: usize,
    /// Tools (by the name clients call them) whose calls' POST streams (2025-11-25
    /// sessions) the server closes right after the first event: the client gets the
    /// progress, logs and result by reconnecting with `GET` and `Last-Event-ID` (SEP-1699
    /// polling), so long calls hold no connection open.
    pub poll_tools: Vec<String>,
    /// The secret input-required request states (a plugin's questions to stateless
    /// clients, SEP-2322) are sealed with (`MAESTRO_MCP_STATE_KEY`, environment only);
    /// `None`: a random key per process, so a state is good only on the process that
    /// issued it.
    pub state_secret: Option<StateSecret>,
}

/// A secret kept out of `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct StateSecret(pub String);

impl std::fmt::Debug for StateSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Default for McpSettings {
    fn default() -> Self {
        Self {
            allowed_hosts: raw::DEFAULT_MCP_HOSTS.iter().map(|h| (*h).to_owned()).collect(),
            allowed_origins: Vec::new(),
            names: McpNames::Qualified,
            session_idle_timeout: Duration::from_secs(30 * 60),
            max_sessions_per_key: usize::try_from(raw::DEFAULT_MCP_MAX_SESSIONS_PER_KEY).expect("a small constant"),
            poll_tools: Vec::new(),
            state_secret: None,
        }
    }
}

/// Engine-wide sandbox settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxSettings {
    /// Threads running plugin code.
    pub workers: usize,
    /// Largest linear memory of any call.
    pub max_memory_bytes: usize,
    /// Instances alive at once.
    pub max_instances: u32,
    /// Calls one tenant may have running at once (more are refused, not queued).
    pub max_calls_in_flight_per_tenant: usize,
    /// Largest plugin component accepted (larger ones are refused before compiling).
    pub max_component_bytes: usize,
    /// Longest a component may take to compile before its plugin is refused.
    pub compile_timeout: Duration,
    /// Compiled-component cache directory.
    pub cache_dir: PathBuf,
}

impl fmt::Debug for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("store", &self.store)
            .field("admin_key", &self.admin_key.as_ref().map(|_| "<redacted>"))
            .field("log_filter", &self.log_filter)
            .field("log_format", &self.log_format)
            .field("body_limit_bytes", &self.body_limit_bytes)
            .field("cors_allow_origins", &self.cors_allow_origins)
            .field("plugin_dir", &self.plugin_dir)
            .field("policy_dir", &self.policy_dir)
            .field("secrets_dir", &self.secrets_dir)
            .field("sandbox", &self.sandbox)
            .field("mcp", &self.mcp)
            .field("billing", &self.billing)
            .field("llm", &self.llm)
            .field("embeddings", &self.embeddings)
            .finish_non_exhaustive()
    }
}

/// Why the configuration could not be loaded. Messages name the file or variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML or has unknown keys or wrong types.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message, with line and column.
        message: String,
    },
    /// A value is out of range or malformed.
    #[error("invalid {key} `{value}`: {reason}")]
    Invalid {
        /// The key or variable.
        key: String,
        /// The value (never a secret).
        value: String,
        /// Why it was refused.
        reason: String,
    },
}

impl Config {
    /// Loads the configuration: `file` (or `MAESTRO_CONFIG`), then `env`, then `overrides`.
    pub fn load(file: Option<&Path>, env: &Env, overrides: &Overrides) -> Result<Self, ConfigError> {
        let env_file = non_empty(env, "MAESTRO_CONFIG").map(PathBuf::from);
        let raw = match file.map(Path::to_path_buf).or(env_file) {
            Some(path) => RawConfig::read(&path)?,
            None => RawConfig::default(),
        };
        Self::from_raw(raw, env, overrides)
    }

    /// Validates a raw config with environment and flag overrides applied on top.
    pub fn from_raw(mut raw: RawConfig, env: &Env, overrides: &Overrides) -> Result<Self, ConfigError> {
        raw.apply_env(env)?;
        if let Some(listen) = &overrides.listen {
            raw.listen = Some(listen.clone());
        }
        let version = raw.version.unwrap_or(CONFIG_VERSION);
        if version != CONFIG_VERSION {
            return Err(invalid("version", version, format!("this build reads config version {CONFIG_VERSION}")));
        }
        let listen_text = raw.listen.unwrap_or_else(|| raw::DEFAULT_LISTEN.to_owned());
        let listen = listen_text
            .parse::<SocketAddr>()
            .map_err(|e| invalid("listen", &listen_text, format!("{e} (expected HOST:PORT, e.g. 127.0.0.1:8080)")))?;
        let data_dir = raw.data_dir.unwrap_or_else(|| PathBuf::from(raw::DEFAULT_DATA_DIR));
        let store = StoreLocation::resolve(raw.database_url.as_deref(), &data_dir).map_err(|e| {
            invalid("database_url", redact_url(raw.database_url.as_deref().unwrap_or("")), e.to_string())
        })?;
        let admin_key = raw
            .admin_key
            .as_deref()
            .map(KeyToken::parse)
            .transpose()
            .map_err(|e| invalid("admin_key", "<redacted>", e.to_string()))?;
        let log_format = match overrides.log_format {
            Some(format) => format,
            None => match raw.log.format.as_deref() {
                None | Some("human") => LogFormat::Human,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(invalid("log.format", other, "expected human or json".into()));
                }
            },
        };
        let body_limit_bytes = raw.http.body_limit_bytes.unwrap_or(raw::DEFAULT_BODY_LIMIT);
        if !(1024..=(256 << 20)).contains(&body_limit_bytes) {
            return Err(invalid("http.body_limit_bytes", body_limit_bytes, "must be between 1 KiB and 256 MiB".into()));
        }
        let cors_allow_origins = raw.http.cors_allow_origins.unwrap_or_default();
        for origin in &cors_allow_origins {
            validate_origin("http.cors_allow_origins", origin)?;
        }
        let plugin_dir = raw.plugins.dir.unwrap_or_else(|| data_dir.join("plugins"));
        let plugin_reload = reload_interval("plugins.reload_interval", raw.plugins.reload_interval.as_deref())?;
        let policy_dir = raw.policies.dir.unwrap_or_else(|| PathBuf::from(raw::DEFAULT_POLICY_DIR));
        let policy_reload = reload_interval("policies.reload_interval", raw.policies.reload_interval.as_deref())?;
        let secrets_dir = raw.policies.secrets_dir.unwrap_or_else(|| data_dir.join("secrets"));
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let workers = match raw.sandbox.workers {
            None | Some(0) => cores,
            Some(n) if n <= 1024 => n,
            Some(n) => return Err(invalid("sandbox.workers", n, "must be at most 1024".into())),
        };
        let max_memory_text = raw.sandbox.max_memory.unwrap_or_else(|| raw::DEFAULT_SANDBOX_MEMORY.to_owned());
        let max_memory_bytes = maestro_core::policy::parse_size(&max_memory_text)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
            .filter(|b| (1 << 20..=4 << 30).contains(b))
            .ok_or_else(|| {
                invalid("sandbox.max_memory", &max_memory_text, "expected a size from 1MiB to 4GiB, e.g. 256MiB".into())
            })?;
        let max_instances = raw.sandbox.max_instances.unwrap_or(raw::DEFAULT_SANDBOX_INSTANCES);
        if !(1..=10_000).contains(&max_instances) {
            return Err(invalid("sandbox.max_instances", max_instances, "must be between 1 and 10000".into()));
        }
        let max_calls_in_flight_per_tenant =
            raw.sandbox.max_calls_in_flight_per_tenant.unwrap_or(crate::tools::DEFAULT_MAX_CALLS_IN_FLIGHT_PER_TENANT);
        if !(1..=100_000).contains(&max_calls_in_flight_per_tenant) {
            return Err(invalid(
                "sandbox.max_calls_in_flight_per_tenant",
                max_calls_in_flight_per_tenant,
                "must be between 1 and 100000".into(),
            ));
        }
        let component_text = raw.sandbox.max_component_size.unwrap_or_else(|| "64MiB".to_owned());
        let max_component_bytes = maestro_core::policy::parse_size(&component_text)
            .ok()
            .and_then(|b| usize::try_from(b).ok())
            .filter(|b| (1 << 20..=1 << 30).contains(b))
            .ok_or_else(|| {
                invalid(
                    "sandbox.max_component_size",
                    &component_text,
                    "expected a size from 1MiB to 1GiB, e.g. 64MiB".into(),
                )
            })?;
        let compile_text = raw.sandbox.compile_timeout.unwrap_or_else(|| "60s".to_owned());
        let compile_timeout = humantime::parse_duration(compile_text.trim())
            .ok()
            .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(3600)).contains(d))
            .ok_or_else(|| {
                invalid("sandbox.compile_timeout", &compile_text, "expected a duration from 1s to 1h, e.g. 60s".into())
            })?;
        let sandbox = SandboxSettings {
            workers,
            max_memory_bytes,
            max_instances,
            max_calls_in_flight_per_tenant,
            max_component_bytes,
            compile_timeout,
            cache_dir: raw.sandbox.cache_dir.unwrap_or_else(|| data_dir.join("cache").join("wasm")),
        };
        let mut mcp = mcp_settings(raw.mcp, listen)?;
        mcp.state_secret = non_empty(env, "MAESTRO_MCP_STATE_KEY").map(|s| StateSecret(s.trim().to_owned()));
        if let Some(secret) = &mcp.state_secret
            && secret.0.len() < 32
        {
            return Err(invalid("MAESTRO_MCP_STATE_KEY", "<redacted>", "must be at least 32 characters".into()));
        }
        let billing = billing_settings(raw.billing, env)?;
        let model_prices = model_prices(raw.credits)?;
        let jobs = jobs_settings(raw.jobs)?;
        let (schedules, events_poll_interval) = schedule_settings(&raw.schedules, &raw.events)?;
        let llm = llm_settings(raw.llm)?;
        let runs = runs_settings(raw.runs)?;
        let artifacts = artifact_settings(raw.artifacts, &data_dir)?;
        let search = search_settings(raw.search, &data_dir)?;
        let embeddings = embedding_settings(raw.embeddings)?;
        let memory = memory_settings(raw.memory)?;
        let (store_settings, key_cache) = store_and_auth_settings(&raw.store, &raw.auth)?;
        let unknown_env = env
            .keys()
            .filter(|k| k.starts_with("MAESTRO_") && !ENV_VARS.iter().any(|(known, _)| known == k))
            .cloned()
            .collect();
        Ok(Self {
            listen,
            data_dir,
            store,
            admin_key,
            log_filter: raw.log.level.unwrap_or_else(|| raw::DEFAULT_LOG_LEVEL.to_owned()),
            log_format,
            body_limit_bytes,
            cors_allow_origins,
            plugin_dir,
            plugin_reload,
            policy_dir,
            policy_reload,
            secrets_dir,
            sandbox,
            mcp,
            billing,
            model_prices,
            jobs,
            schedules,
            events_poll_interval,
            llm,
            runs,
            artifacts,
            search,
            embeddings,
            memory,
            unknown_env,
            store_settings,
            key_cache,
        })
    }
}

/// Stripe top-ups: the API key and webhook secret (environment only, never logged), the
/// API base, where Checkout sends the customer back, and the credit packs on sale.
#[derive(Clone, PartialEq, Eq)]
pub struct BillingSettings {
    /// Stripe secret API key (`sk_…` or a restricted `rk_…`).
    pub secret_key: String,
    /// Webhook signing secret (`whsec_…`).
    pub webhook_secret: String,
    /// Stripe API base URL, ending in `/`.
    pub api_base: String,
    /// Where Checkout redirects after payment (`{CHECKOUT_SESSION_ID}` is filled in by Stripe).
    pub success_url: String,
    /// Where Checkout redirects when the customer gives up.
    pub cancel_url: String,
    /// Credit packs on sale.
    pub packs: Vec<CreditPack>,
}

/// A credit pack: so many credits for a fixed price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreditPack {
    /// Identifier clients ask for, e.g. `starter`.
    pub id: String,
    /// Name shown on the Checkout page.
    pub name: String,
    /// Credits granted once paid.
    pub credits: i64,
    /// Price in the currency's smallest unit (cents).
    pub unit_amount: i64,
    /// Three-letter ISO currency code, lowercase.
    pub currency: String,
}

impl fmt::Debug for BillingSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BillingSettings")
            .field("secret_key", &"<redacted>")
            .field("webhook_secret", &"<redacted>")
            .field("api_base", &self.api_base)
            .field("success_url", &self.success_url)
            .field("cancel_url", &self.cancel_url)
            .field("packs", &self.packs)
            .finish()
    }
}

fn billing_settings(raw: raw::RawBilling, env: &Env) -> Result<Option<BillingSettings>, ConfigError> {
    let Some(secret_key) = non_empty(env, "MAESTRO_STRIPE_SECRET_KEY") else {
        return Ok(None);
    };
    let secret_key = secret_key.trim().to_owned();
    if !(secret_key.starts_with("sk_") || secret_key.starts_with("rk_")) {
        return Err(invalid("MAESTRO_STRIPE_SECRET_KEY", "<redacted>", "expected a Stripe key, sk_… or rk_…".into()));
    }
    let webhook_secret = non_empty(env, "MAESTRO_STRIPE_WEBHOOK_SECRET").map(str::trim).ok_or_else(|| {
        invalid(
            "MAESTRO_STRIPE_WEBHOOK_SECRET",
            "",
            "required when MAESTRO_STRIPE_SECRET_KEY is set (purchases are credited from webhooks)".into(),
        )
    })?;
    let mut api_base = raw.api_base.unwrap_or_else(|| raw::DEFAULT_STRIPE_API_BASE.to_owned());
    if !(api_base.starts_with("https://") || api_base.starts_with("http://")) {
        return Err(invalid("billing.api_base", &api_base, "expected an http(s) URL".into()));
    }
    if !api_base.ends_with('/') {
        api_base.push('/');
    }
    let url = |key: &str, value: Option<String>| {
        value.filter(|v| v.starts_with("https://") || v.starts_with("http://")).ok_or_else(|| {
            invalid(key, "", "required when billing is on: the http(s) URL Checkout returns the customer to".into())
        })
    };
    let success_url = url("billing.success_url", raw.success_url)?;
    let cancel_url = url("billing.cancel_url", raw.cancel_url)?;
    let mut packs: Vec<CreditPack> = Vec::new();
    for pack in raw.packs.unwrap_or_default() {
        let key = format!("billing.packs[{}]", pack.id);
        let id_ok = !pack.id.is_empty()
            && pack.id.len() <= 64
            && pack.id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if !id_ok {
            return Err(invalid("billing.packs.id", &pack.id, "expected 1-64 of a-z, 0-9, - and _".into()));
        }
        if packs.iter().any(|p| p.id == pack.id) {
            return Err(invalid("billing.packs.id", &pack.id, "listed twice".into()));
        }
        if pack.credits <= 0 {
            return Err(invalid(&format!("{key}.credits"), pack.credits, "must be positive".into()));
        }
        if pack.unit_amount <= 0 {
            return Err(invalid(&format!("{key}.unit_amount"), pack.unit_amount, "must be positive".into()));
        }
        let currency = pack.currency.to_ascii_lowercase();
        if currency.len() != 3 || !currency.chars().all(|c| c.is_ascii_lowercase()) {
            return Err(invalid(
                &format!("{key}.currency"),
                &pack.currency,
                "expected a 3-letter code, e.g. usd".into(),
            ));
        }
        let name = pack.name.unwrap_or_else(|| format!("{} credits", pack.credits));
        packs.push(CreditPack { id: pack.id, name, credits: pack.credits, unit_amount: pack.unit_amount, currency });
    }
    if packs.is_empty() {
        return Err(invalid("billing.packs", "[]", "billing is on but no [[billing.packs]] are configured".into()));
    }
    Ok(Some(BillingSettings {
        secret_key,
        webhook_secret: webhook_secret.to_owned(),
        api_base,
        success_url,
        cancel_url,
        packs,
    }))
}

/// What a model's tokens cost, in credits per million tokens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    /// Model name.
    pub model: String,
    /// Credits per million input tokens.
    pub input_per_million: i64,
    /// Credits per million output tokens.
    pub output_per_million: i64,
}

impl ModelPrice {
    /// Credits for a call, rounded up so that no call is free by rounding (checked:
    /// `None` on overflow).
    pub fn cost(&self, input_tokens: u64, output_tokens: u64) -> Option<i64> {
        let part = |tokens: u64, per_million: i64| {
            i128::from(tokens).checked_mul(i128::from(per_million)).map(|micro| (micro + 999_999) / 1_000_000)
        };
        let total =
            part(input_tokens, self.input_per_million)?.checked_add(part(output_tokens, self.output_per_million)?)?;
        i64::try_from(total).ok()
    }
}

fn model_prices(raw: raw::RawCredits) -> Result<Vec<ModelPrice>, ConfigError> {
    let mut prices: Vec<ModelPrice> = Vec::new();
    for price in raw.models.unwrap_or_default() {
        let name = price.model.trim();
        if name.is_empty() || name.len() > 200 {
            return Err(invalid("credits.models.model", &price.model, "expected a model name".into()));
        }
        if prices.iter().any(|p| p.model == name) {
            return Err(invalid("credits.models.model", name, "listed twice".into()));
        }
        for (key, value) in
            [("input_per_million", price.input_per_million), ("output_per_million", price.output_per_million)]
        {
            if !(0..=maestro_core::ledger::MAX_AMOUNT).contains(&value) {
                return Err(invalid(&format!("credits.models.{key}"), value, "must be between 0 and 10^12".into()));
            }
        }
        prices.push(ModelPrice {
            model: name.to_owned(),
            input_per_million: price.input_per_million,
            output_per_million: price.output_per_million,
        });
    }
    Ok(prices)
}

/// Model providers and the models they serve (`[llm]`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LlmSettings {
    /// The tier of the model the `router` strategy asks each turn (`None`: `fast`).
    pub router_tier: Option<maestro_core::plugin::ModelTier>,
    /// `[[llm.providers]]`.
    pub providers: Vec<LlmProviderSettings>,
    /// `[[llm.models]]`, in the order written (the first of a tier is its default).
    pub models: Vec<LlmModelSettings>,
}

/// The wire format of a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmProviderKind {
    /// OpenAI-compatible Chat Completions (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter…).
    OpenAi,
    /// Anthropic Messages.
    Anthropic,
}

/// One model provider. Its key is named by where it is read (`env:NAME`, `file:NAME`),
/// never held here, so `Debug` shows nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmProviderSettings {
    /// Name models refer to.
    pub name: String,
    /// Wire format.
    pub kind: LlmProviderKind,
    /// Base URL; only its origin is reachable (the provider's network allow-list).
    pub base_url: String,
    /// Where its API key is read (`None`: it needs none, as local servers).
    pub api_key: Option<maestro_core::policy::SecretSource>,
    /// Whether the base URL may be loopback or private (Ollama, vLLM on the host).
    pub allow_private: bool,
    /// Connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// From sending a request to the first token.
    pub first_token_timeout: Duration,
    /// Longest gap between two chunks of an answer.
    pub idle_timeout: Duration,
    /// Retries on one model before falling back.
    pub max_retries: u32,
}

/// One model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmModelSettings {
    /// Id Maestro calls it by (prices in `[[credits.models]]`, personas and fallbacks
    /// use it).
    pub id: String,
    /// Its provider's name.
    pub provider: String,
    /// The provider's name for the model.
    pub upstream: String,
    /// Its tier.
    pub tier: maestro_core::plugin::ModelTier,
    /// Context window, in tokens.
    pub context_window: u32,
    /// Largest answer, in tokens.
    pub max_output_tokens: u32,
    /// Model ids tried next, in order, when this one is unavailable.
    pub fallbacks: Vec<String>,
}

/// Default context window of a model, in tokens.
pub const DEFAULT_CONTEXT_WINDOW: u32 = 128_000;
/// Default largest answer of a model, in tokens.
pub const DEFAULT_MAX_OUTPUT_TOKENS: u32 = 4096;

fn llm_settings(raw: raw::RawLlm) -> Result<LlmSettings, ConfigError> {
    let name_ok = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    let mut providers: Vec<LlmProviderSettings> = Vec::new();
    for p in raw.providers.unwrap_or_default() {
        if !name_ok(&p.name) {
            return Err(invalid("llm.providers.name", &p.name, "expected 1-64 of a-z, A-Z, 0-9, _, - and .".into()));
        }
        if providers.iter().any(|q| q.name == p.name) {
            return Err(invalid("llm.providers.name", &p.name, "listed twice".into()));
        }
        let key = |field: &str| format!("llm.providers[{}].{field}", p.name);
        let kind = match p.kind.trim() {
            "openai" => LlmProviderKind::OpenAi,
            "anthropic" => LlmProviderKind::Anthropic,
            other => {
                return Err(invalid(
                    &key("kind"),
                    other,
                    "expected openai (any OpenAI-compatible server) or anthropic".into(),
                ));
            }
        };
        let base_url = p.base_url.trim().to_owned();
        let origin = base_url
            .split_once("://")
            .filter(|(scheme, _)| matches!(*scheme, "http" | "https"))
            .map(|(scheme, rest)| (scheme, rest.split('/').next().unwrap_or_default()))
            .filter(|(_, authority)| !authority.is_empty() && !authority.contains(['@', '?', '#']))
            .map(|(scheme, authority)| format!("{scheme}://{authority}"))
            .filter(|_| !base_url.contains(['?', '#']))
            .ok_or_else(|| {
                invalid(
                    &key("base_url"),
                    &base_url,
                    "expected an http(s) URL without query, e.g. https://api.openai.com/v1".into(),
                )
            })?;
        let allow_private = p.allow_private.unwrap_or(false);
        maestro_core::policy::NetworkRule::parse(&origin, allow_private)
            .map_err(|reason| invalid(&key("base_url"), &base_url, reason))?;
        let api_key = match p.api_key.as_deref().map(str::trim) {
            None => None,
            Some(text) => {
                let source = match text.split_once(':') {
                    Some(("env", name)) if !name.is_empty() => maestro_core::policy::SecretSource::Env(name.to_owned()),
                    Some(("file", name)) if !name.is_empty() => {
                        maestro_core::policy::SecretSource::File(name.to_owned())
                    }
                    _ => {
                        return Err(invalid(
                            &key("api_key"),
                            "<redacted>",
                            "expected env:NAME (an environment variable) or file:NAME (a file in the secrets \
                             directory); a key written in the config file is refused"
                                .into(),
                        ));
                    }
                };
                Some(source)
            }
        };
        let duration = |field: &str, text: Option<String>, default: Duration| -> Result<Duration, ConfigError> {
            let Some(text) = text else { return Ok(default) };
            humantime::parse_duration(text.trim())
                .ok()
                .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d))
                .ok_or_else(|| invalid(&key(field), &text, "expected a duration from 100ms to 1h, e.g. 60s".into()))
        };
        let max_retries = p.max_retries.unwrap_or(2);
        if max_retries > 10 {
            return Err(invalid(&key("max_retries"), max_retries, "must be at most 10".into()));
        }
        providers.push(LlmProviderSettings {
            connect_timeout: duration("connect_timeout", p.connect_timeout, Duration::from_secs(10))?,
            first_token_timeout: duration("first_token_timeout", p.first_token_timeout, Duration::from_secs(60))?,
            idle_timeout: duration("idle_timeout", p.idle_timeout, Duration::from_secs(60))?,
            name: p.name,
            kind,
            base_url,
            api_key,
            allow_private,
            max_retries,
        });
    }
    let mut models: Vec<LlmModelSettings> = Vec::new();
    for m in raw.models.unwrap_or_default() {
        let id = m.id.trim().to_owned();
        if id.is_empty() || id.len() > 200 || id.contains(char::is_whitespace) {
            return Err(invalid("llm.models.id", &m.id, "expected a model id without spaces".into()));
        }
        if models.iter().any(|n| n.id == id) {
            return Err(invalid("llm.models.id", &id, "listed twice".into()));
        }
        let key = |field: &str| format!("llm.models[{id}].{field}");
        if !providers.iter().any(|p| p.name == m.provider) {
            return Err(invalid(&key("provider"), &m.provider, "no [[llm.providers]] has this name".into()));
        }
        let tier_text = m.tier.unwrap_or_else(|| "balanced".to_owned());
        let tier = maestro_core::llm::parse_tier(tier_text.trim())
            .ok_or_else(|| invalid(&key("tier"), &tier_text, "expected fast, balanced or best".into()))?;
        let context_window = m.context_window.unwrap_or(DEFAULT_CONTEXT_WINDOW);
        if context_window < 256 {
            return Err(invalid(&key("context_window"), context_window, "must be at least 256 tokens".into()));
        }
        let max_output_tokens = m.max_output_tokens.unwrap_or(DEFAULT_MAX_OUTPUT_TOKENS.min(context_window));
        if max_output_tokens == 0 || max_output_tokens > context_window {
            return Err(invalid(
                &key("max_output_tokens"),
                max_output_tokens,
                "must be at least 1 and at most the context window".into(),
            ));
        }
        let upstream = m.model.map(|u| u.trim().to_owned()).unwrap_or_else(|| id.clone());
        if upstream.is_empty() {
            return Err(invalid(&key("model"), "", "expected the provider's model name".into()));
        }
        models.push(LlmModelSettings {
            upstream,
            provider: m.provider,
            tier,
            context_window,
            max_output_tokens,
            fallbacks: m.fallbacks.unwrap_or_default(),
            id,
        });
    }
    for model in &models {
        for fallback in &model.fallbacks {
            if !models.iter().any(|m| &m.id == fallback) {
                return Err(invalid(
                    &format!("llm.models[{}].fallbacks", model.id),
                    fallback,
                    "not a configured model id".into(),
                ));
            }
        }
        // A cycle: following fallbacks from this model leads back to it.
        let mut seen = vec![model.id.as_str()];
        let mut queue: Vec<&str> = model.fallbacks.iter().map(String::as_str).collect();
        while let Some(next) = queue.pop() {
            if next == model.id {
                return Err(invalid(
                    &format!("llm.models[{}].fallbacks", model.id),
                    model.fallbacks.join(", "),
                    "the fallbacks lead back to this model (a cycle)".into(),
                ));
            }
            if seen.contains(&next) {
                continue;
            }
            seen.push(next);
            if let Some(m) = models.iter().find(|m| m.id == next) {
                queue.extend(m.fallbacks.iter().map(String::as_str));
            }
        }
    }
    let router_tier = match raw.router_tier {
        None => None,
        Some(name) => Some(
            maestro_core::llm::parse_tier(name.trim())
                .ok_or_else(|| invalid("llm.router_tier", &name, "expected fast, balanced or best".into()))?,
        ),
    };
    Ok(LlmSettings { router_tier, providers, models })
}

fn mcp_settings(raw: raw::RawMcp, listen: SocketAddr) -> Result<McpSettings, ConfigError> {
    let allowed_hosts = match raw.allowed_hosts {
        Some(hosts) => hosts,
        None => {
            let mut hosts: Vec<String> = raw::DEFAULT_MCP_HOSTS.iter().map(|h| (*h).to_owned()).collect();
            // A server bound to one address is reached by that address too.
            if !listen.ip().is_unspecified() && !listen.ip().is_loopback() {
                hosts.push(listen.ip().to_string());
            }
            hosts
        }
    };
    for host in &allowed_hosts {
        let valid = !host.is_empty()
            && !host.contains(|c: char| c.is_whitespace() || matches!(c, '/' | '*' | '@' | ',' | '?' | '#'));
        if !valid {
            return Err(invalid(
                "mcp.allowed_hosts",
                host,
                "expected a host name or host:port, e.g. mcp.example.com".into(),
            ));
        }
    }
    let allowed_origins = raw.allowed_origins.unwrap_or_default();
    for origin in &allowed_origins {
        validate_origin("mcp.allowed_origins", origin)?;
    }
    let names = match raw.tool_names.as_deref().map(str::trim) {
        None | Some("qualified") => McpNames::Qualified,
        Some("short") => McpNames::Short,
        Some(other) => return Err(invalid("mcp.tool_names", other, "expected qualified or short".into())),
    };
    let idle_text = raw.session_idle_timeout.unwrap_or_else(|| raw::DEFAULT_MCP_SESSION_IDLE.to_owned());
    let session_idle_timeout = humantime::parse_duration(idle_text.trim())
        .ok()
        .filter(|d| (Duration::from_secs(1)..=Duration::from_secs(7 * 24 * 3600)).contains(d))
        .ok_or_else(|| {
            invalid("mcp.session_idle_timeout", &idle_text, "expected a duration from 1s to 7d, e.g. 30m".into())
        })?;
    let max_sessions = raw.max_sessions_per_key.unwrap_or(raw::DEFAULT_MCP_MAX_SESSIONS_PER_KEY);
    if !(1..=10_000).contains(&max_sessions) {
        return Err(invalid("mcp.max_sessions_per_key", max_sessions, "must be between 1 and 10000".into()));
    }
    let max_sessions_per_key = usize::try_from(max_sessions).expect("at most 10000 fits in usize");
    let poll_tools = raw.poll_tools.unwrap_or_default().into_iter().map(|t| t.trim().to_owned()).collect();
    Ok(McpSettings {
        allowed_hosts,
        allowed_origins,
        names,
        session_idle_timeout,
        max_sessions_per_key,
        poll_tools,
        state_secret: None,
    })
}

fn jobs_settings(raw: raw::RawJobs) -> Result<JobsSettings, ConfigError> {
    let concurrency = raw.concurrency.unwrap_or(raw::DEFAULT_JOBS_CONCURRENCY);
    if !(1..=1024).contains(&concurrency) {
        return Err(invalid("jobs.concurrency", concurrency, "must be between 1 and 1024".into()));
    }
    let duration = |key: &str, text: Option<String>, default: &str, range: std::ops::RangeInclusive<Duration>| {
        let text = text.unwrap_or_else(|| default.to_owned());
        humantime::parse_duration(text.trim()).ok().filter(|d| range.contains(d)).ok_or_else(|| {
            invalid(
                key,
                &text,
                format!("expected a duration from {:?} to {:?}, e.g. {default}", range.start(), range.end()),
            )
        })
    };
    let hour = Duration::from_secs(3600);
    Ok(JobsSettings {
        concurrency,
        lease: duration("jobs.lease", raw.lease, raw::DEFAULT_JOBS_LEASE, Duration::from_secs(1)..=hour)?,
        poll_interval: duration(
            "jobs.poll_interval",
            raw.poll_interval,
            raw::DEFAULT_JOBS_POLL_INTERVAL,
            Duration::from_millis(10)..=hour,
        )?,
    })
}

fn runs_settings(raw: raw::RawRuns) -> Result<RunsSettings, ConfigError> {
    let text = raw.wait_timeout.unwrap_or_else(|| raw::DEFAULT_RUNS_WAIT_TIMEOUT.to_owned());
    let range = Duration::from_secs(1)..=Duration::from_secs(365 * 24 * 3600);
    let wait_timeout = humantime::parse_duration(text.trim()).ok().filter(|d| range.contains(d)).ok_or_else(|| {
        invalid("runs.wait_timeout", &text, "expected a duration from 1s to 365days, e.g. 24h".into())
    })?;
    Ok(RunsSettings { wait_timeout })
}

/// `[search]`, with the index under the data directory by default.
fn search_settings(
    raw: raw::RawSearch,
    data_dir: &std::path::Path,
) -> Result<crate::search::SearchSettings, ConfigError> {
    let defaults = crate::search::SearchSettings::under(data_dir);
    let duration = |key: &str, text: Option<String>, default: Duration, range: std::ops::RangeInclusive<Duration>| {
        let Some(text) = text else { return Ok(default) };
        humantime::parse_duration(text.trim()).ok().filter(|d| range.contains(d)).ok_or_else(|| {
            invalid(key, &text, format!("expected a duration from {:?} to {:?}", range.start(), range.end()))
        })
    };
    let count = |key: &str, value: Option<usize>, default: usize, range: std::ops::RangeInclusive<usize>| {
        let value = value.unwrap_or(default);
        if range.contains(&value) {
            Ok(value)
        } else {
            Err(invalid(key, value, format!("expected {} to {}", range.start(), range.end())))
        }
    };
    let (ms, second, hour, day) =
        (Duration::from_millis(1), Duration::from_secs(1), Duration::from_secs(3600), Duration::from_secs(86_400));
    Ok(crate::search::SearchSettings {
        dir: raw.dir.unwrap_or(defaults.dir),
        commit_interval: duration(
            "search.commit_interval",
            raw.commit_interval,
            defaults.commit_interval,
            ms.saturating_mul(10)..=hour,
        )?,
        commit_batch: count("search.commit_batch", raw.commit_batch, defaults.commit_batch, 1..=1_000_000)?,
        poll_interval: duration("search.poll_interval", raw.poll_interval, defaults.poll_interval, ms..=hour)?,
        writer_memory_bytes: count(
            "search.writer_memory_bytes",
            raw.writer_memory_bytes,
            defaults.writer_memory_bytes,
            15_000_000..=4_000_000_000,
        )?,
        outbox_retention: duration(
            "search.outbox_retention",
            raw.outbox_retention,
            defaults.outbox_retention,
            second.saturating_mul(60)..=day.saturating_mul(3650),
        )?,
        max_query_chars: count("search.max_query_chars", raw.max_query_chars, defaults.max_query_chars, 1..=100_000)?,
        half_life: Some(duration(
            "search.half_life",
            raw.half_life,
            Duration::ZERO,
            Duration::ZERO..=day.saturating_mul(36_500),
        )?)
        .filter(|d| !d.is_zero()),
    })
}

/// `[memory]`.
fn memory_settings(raw: raw::RawMemory) -> Result<crate::recall::MemorySettings, ConfigError> {
    let defaults = crate::recall::MemorySettings::default();
    let recall_tokens = raw.recall_tokens.unwrap_or(defaults.recall_tokens);
    if !(100..=100_000).contains(&recall_tokens) {
        return Err(invalid("memory.recall_tokens", recall_tokens, "expected 100 to 100000".into()));
    }
    let recall_min_score = raw.recall_min_score.unwrap_or(defaults.recall_min_score);
    if !(-1.0..=1.0).contains(&recall_min_score) {
        return Err(invalid("memory.recall_min_score", recall_min_score, "expected a similarity from -1 to 1".into()));
    }
    let recall_min_text_score = raw.recall_min_text_score.unwrap_or(defaults.recall_min_text_score);
    if !(0.0..=1000.0).contains(&recall_min_text_score) {
        return Err(invalid("memory.recall_min_text_score", recall_min_text_score, "expected 0 to 1000".into()));
    }
    let recall_skip = raw.recall_skip.unwrap_or_default();
    if let Some(bad) = recall_skip.iter().find(|p| maestro_core::plugin::split_qualified(p).is_none()) {
        return Err(invalid("memory.recall_skip", bad, "expected qualified persona names (plugin.persona)".into()));
    }
    let distil_max_facts = raw.distil_max_facts.unwrap_or(defaults.distil_max_facts);
    if !(1..=100).contains(&distil_max_facts) {
        return Err(invalid("memory.distil_max_facts", distil_max_facts, "expected 1 to 100".into()));
    }
    Ok(crate::recall::MemorySettings {
        recall: raw.recall.unwrap_or(defaults.recall),
        recall_tokens,
        recall_min_score,
        recall_min_text_score,
        recall_skip,
        distil: raw.distil.unwrap_or(defaults.distil),
        distil_max_facts,
    })
}

fn schedule_settings(
    raw: &raw::RawSchedules,
    events: &raw::RawEvents,
) -> Result<(crate::schedules::ScheduleSettings, Duration), ConfigError> {
    let duration = |key: &str, text: Option<&String>, default: &str, range: std::ops::RangeInclusive<Duration>| {
        let text = text.cloned().unwrap_or_else(|| default.to_owned());
        humantime::parse_duration(text.trim()).ok().filter(|d| range.contains(d)).ok_or_else(|| {
            invalid(
                key,
                &text,
                format!("expected a duration from {:?} to {:?}, e.g. {default}", range.start(), range.end()),
            )
        })
    };
    let (second, hour, day) = (Duration::from_secs(1), Duration::from_secs(3600), Duration::from_secs(86_400));
    let settings = crate::schedules::ScheduleSettings {
        tick: duration(
            "schedules.tick_interval",
            raw.tick_interval.as_ref(),
            raw::DEFAULT_SCHEDULES_TICK_INTERVAL,
            second..=hour,
        )?,
        min_period: duration(
            "schedules.min_period",
            raw.min_period.as_ref(),
            raw::DEFAULT_SCHEDULES_MIN_PERIOD,
            second..=day,
        )?,
        catch_up_grace: duration(
            "schedules.catch_up_grace",
            raw.catch_up_grace.as_ref(),
            raw::DEFAULT_SCHEDULES_CATCH_UP_GRACE,
            second..=day,
        )?,
    };
    let poll = duration(
        "events.poll_interval",
        events.poll_interval.as_ref(),
        raw::DEFAULT_EVENTS_POLL_INTERVAL,
        Duration::from_millis(10)..=hour,
    )?;
    Ok((settings, poll))
}

/// `[store]` and `[auth]`.
fn store_and_auth_settings(
    store: &raw::RawStore,
    auth: &raw::RawAuth,
) -> Result<(crate::storage::StoreSettings, crate::accounts::KeyCacheSettings), ConfigError> {
    use crate::storage::{Durability, StoreSettings};
    let defaults = StoreSettings::default();
    let durability = match store.durability.as_deref().map(str::trim) {
        None => defaults.durability,
        Some("full") => Durability::Full,
        Some("normal") => Durability::Normal,
        Some(other) => return Err(invalid("store.durability", other, "expected full or normal".into())),
    };
    let duration = |key: &str, text: Option<&String>, range: std::ops::RangeInclusive<Duration>| {
        let Some(text) = text else { return Ok(None) };
        humantime::parse_duration(text.trim()).ok().filter(|d| range.contains(d)).map(Some).ok_or_else(|| {
            invalid(key, text, format!("expected a duration from {:?} to {:?}", range.start(), range.end()))
        })
    };
    let flush_interval = duration(
        "store.flush_interval",
        store.flush_interval.as_ref(),
        Duration::from_millis(1)..=Duration::from_secs(1),
    )?
    .unwrap_or(defaults.flush_interval);
    let cache = crate::accounts::KeyCacheSettings::default();
    let ttl = duration("auth.key_cache_ttl", auth.key_cache_ttl.as_ref(), Duration::ZERO..=Duration::from_secs(3600))?
        .unwrap_or(cache.ttl);
    let entries = auth.key_cache_entries.unwrap_or(cache.entries);
    if entries > 1_000_000 {
        return Err(invalid("auth.key_cache_entries", entries, "must be at most 1000000".into()));
    }
    Ok((StoreSettings { durability, flush_interval }, crate::accounts::KeyCacheSettings { entries, ttl }))
}

fn reload_interval(key: &str, text: Option<&str>) -> Result<Option<Duration>, ConfigError> {
    let text = text.unwrap_or(raw::DEFAULT_RELOAD_INTERVAL);
    let interval = humantime::parse_duration(text.trim())
        .map_err(|e| invalid(key, text, format!("{e} (expected a duration such as 2s; 0s disables reloading)")))?;
    if interval.is_zero() {
        return Ok(None);
    }
    if interval < Duration::from_millis(100) {
        return Err(invalid(key, text, "must be 0s (off) or at least 100ms".into()));
    }
    Ok(Some(interval))
}

fn validate_origin(key: &str, origin: &str) -> Result<(), ConfigError> {
    let shape_ok = (origin.starts_with("https://") || origin.starts_with("http://"))
        && !origin.trim_end_matches('/').contains(|c: char| c == '*' || c.is_whitespace())
        && origin.split("://").nth(1).is_some_and(|host| !host.is_empty() && !host.contains('/'));
    if shape_ok {
        Ok(())
    } else {
        Err(invalid(key, origin, "expected an origin like https://app.example.com (no path, no wildcard)".into()))
    }
}

fn invalid(key: &str, value: impl fmt::Display, reason: String) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), value: value.to_string(), reason }
}

/// A variable's value, treating an empty value as unset (as compose files often do).
pub(crate) fn non_empty<'a>(env: &'a Env, key: &str) -> Option<&'a str> {
    env.get(key).map(String::as_str).filter(|v| !v.trim().is_empty())
}

/// Where artifacts are kept (`[artifacts]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactSettings {
    /// Files under a directory (default `<data_dir>/artifacts`).
    Disk {
        /// The directory.
        dir: PathBuf,
    },
    /// An S3-compatible bucket.
    S3(S3Settings),
}

/// An S3-compatible bucket. Its keys are named by where they are read (`env:NAME`,
/// `file:NAME`), never held here, so `Debug` shows nothing secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Settings {
    /// The bucket.
    pub bucket: String,
    /// The endpoint (`None`: AWS's for the region).
    pub endpoint: Option<String>,
    /// The region.
    pub region: String,
    /// Whether a plain `http://` endpoint is allowed.
    pub allow_http: bool,
    /// Key prefix inside the bucket.
    pub prefix: String,
    /// Where the access key id is read.
    pub access_key_id: maestro_core::policy::SecretSource,
    /// Where the secret access key is read.
    pub secret_access_key: maestro_core::policy::SecretSource,
}

/// Default region of an S3 store.
pub const DEFAULT_S3_REGION: &str = "us-east-1";
/// Default key prefix of an S3 store.
pub const DEFAULT_S3_PREFIX: &str = "artifacts/";

fn secret_source(key: &str, text: &str) -> Result<maestro_core::policy::SecretSource, ConfigError> {
    use maestro_core::policy::SecretSource;
    let name_ok = |name: &str| {
        !name.is_empty()
            && !name.starts_with('.')
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    match text.trim().split_once(':') {
        Some(("env", name)) if name_ok(name) => Ok(SecretSource::Env(name.to_owned())),
        Some(("file", name)) if name_ok(name) => Ok(SecretSource::File(name.to_owned())),
        _ => Err(invalid(
            key,
            "<redacted>",
            "expected env:NAME (an environment variable) or file:NAME (a file in the secrets directory); a key \
             written in the config file is refused"
                .into(),
        )),
    }
}

fn artifact_settings(raw: raw::RawArtifacts, data_dir: &std::path::Path) -> Result<ArtifactSettings, ConfigError> {
    let store = raw.store.as_deref().map(str::trim).unwrap_or("disk");
    let s3_only = [
        ("artifacts.bucket", raw.bucket.is_some()),
        ("artifacts.endpoint", raw.endpoint.is_some()),
        ("artifacts.region", raw.region.is_some()),
        ("artifacts.allow_http", raw.allow_http.is_some()),
        ("artifacts.prefix", raw.prefix.is_some()),
        ("artifacts.access_key_id", raw.access_key_id.is_some()),
        ("artifacts.secret_access_key", raw.secret_access_key.is_some()),
    ];
    match store {
        "disk" => {
            if let Some((key, _)) = s3_only.iter().find(|(_, set)| *set) {
                return Err(invalid(key, "(set)", "only used with artifacts.store = \"s3\"".into()));
            }
            Ok(ArtifactSettings::Disk { dir: raw.dir.unwrap_or_else(|| data_dir.join("artifacts")) })
        }
        "s3" => {
            if raw.dir.is_some() {
                return Err(invalid("artifacts.dir", "(set)", "only used with artifacts.store = \"disk\"".into()));
            }
            let bucket = raw.bucket.map(|b| b.trim().to_owned()).unwrap_or_default();
            let bucket_ok = (3..=63).contains(&bucket.len())
                && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'));
            if !bucket_ok {
                return Err(invalid(
                    "artifacts.bucket",
                    &bucket,
                    "expected a bucket name: 3-63 of a-z, 0-9, - and .".into(),
                ));
            }
            let allow_http = raw.allow_http.unwrap_or(false);
            let endpoint = match raw.endpoint.map(|e| e.trim().trim_end_matches('/').to_owned()) {
                None => None,
                Some(e) if e.starts_with("https://") && e.len() > 8 => Some(e),
                Some(e) if e.starts_with("http://") && e.len() > 7 && allow_http => Some(e),
                Some(e) if e.starts_with("http://") => {
                    return Err(invalid(
                        "artifacts.endpoint",
                        &e,
                        "a plain http:// endpoint needs artifacts.allow_http = true".into(),
                    ));
                }
                Some(e) => return Err(invalid("artifacts.endpoint", &e, "expected an http(s) URL".into())),
            };
            let access_key_id = raw.access_key_id.ok_or_else(|| {
                invalid("artifacts.access_key_id", "(unset)", "the s3 store needs env:NAME or file:NAME".into())
            })?;
            let secret_access_key = raw.secret_access_key.ok_or_else(|| {
                invalid("artifacts.secret_access_key", "(unset)", "the s3 store needs env:NAME or file:NAME".into())
            })?;
            Ok(ArtifactSettings::S3(S3Settings {
                bucket,
                endpoint,
                region: raw.region.map(|r| r.trim().to_owned()).unwrap_or_else(|| DEFAULT_S3_REGION.to_owned()),
                allow_http,
                prefix: raw.prefix.unwrap_or_else(|| DEFAULT_S3_PREFIX.to_owned()),
                access_key_id: secret_source("artifacts.access_key_id", &access_key_id)?,
                secret_access_key: secret_source("artifacts.secret_access_key", &secret_access_key)?,
            }))
        }
        other => Err(invalid("artifacts.store", other, "expected disk or s3".into())),
    }
}

/// The embedder (`[embeddings]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmbeddingSettings {
    /// all-MiniLM-L6-v2 run in process (384 dimensions), from the files
    /// `scripts/model.sh` fetches.
    MiniLm {
        /// The directory holding `config.json`, `tokenizer.json` and `model.safetensors`.
        model_dir: PathBuf,
        /// Texts per forward pass (1 to 1024).
        batch_size: usize,
        /// Threads of the inference pool (0: one per core).
        threads: usize,
    },
    /// An OpenAI-compatible `/v1/embeddings` service.
    OpenAi(OpenAiEmbeddingSettings),
}

/// An OpenAI-compatible embeddings service. Its key is named by where it is read, never
/// held here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenAiEmbeddingSettings {
    /// Base URL; requests go to `{base_url}/embeddings`, only its origin is reachable.
    pub base_url: String,
    /// The service's model name.
    pub model: String,
    /// Numbers per vector the model answers.
    pub dimensions: u32,
    /// Whether to ask for `dimensions` in each request (OpenAI `text-embedding-3-*`).
    pub send_dimensions: bool,
    /// Inputs per request (1 to 2048).
    pub batch_size: usize,
    /// Where its API key is read (`None`: it needs none).
    pub api_key: Option<maestro_core::policy::SecretSource>,
    /// Whether the base URL may be loopback or private.
    pub allow_private: bool,
    /// One request, from sending it to the end of its answer.
    pub timeout: Duration,
    /// Retries of one batch (at most 10).
    pub max_retries: u32,
}

/// Default texts per forward pass of the offline embedder.
pub const DEFAULT_MINILM_BATCH_SIZE: usize = 32;
/// Default inputs per request to an embeddings service.
pub const DEFAULT_OPENAI_EMBEDDINGS_BATCH_SIZE: usize = 64;

fn embedding_settings(raw: raw::RawEmbeddings) -> Result<EmbeddingSettings, ConfigError> {
    let provider = raw.provider.as_deref().map(str::trim).unwrap_or("minilm");
    let only = |keys: &[(&str, bool)], provider: &str| match keys.iter().find(|(_, set)| *set) {
        Some((key, _)) => {
            Err(invalid(&format!("embeddings.{key}"), "(set)", format!("only used with provider = \"{provider}\"")))
        }
        None => Ok(()),
    };
    match provider {
        "minilm" => {
            only(
                &[
                    ("base_url", raw.base_url.is_some()),
                    ("model", raw.model.is_some()),
                    ("dimensions", raw.dimensions.is_some()),
                    ("send_dimensions", raw.send_dimensions.is_some()),
                    ("api_key", raw.api_key.is_some()),
                    ("allow_private", raw.allow_private.is_some()),
                    ("timeout", raw.timeout.is_some()),
                    ("max_retries", raw.max_retries.is_some()),
                ],
                "openai",
            )?;
            let batch_size = raw.batch_size.unwrap_or(DEFAULT_MINILM_BATCH_SIZE);
            if !(1..=1024).contains(&batch_size) {
                return Err(invalid("embeddings.batch_size", batch_size, "must be between 1 and 1024".into()));
            }
            let threads = raw.threads.unwrap_or(0);
            if threads > 256 {
                return Err(invalid("embeddings.threads", threads, "must be at most 256 (0: one per core)".into()));
            }
            let model_dir = raw.model_dir.unwrap_or_else(|| PathBuf::from(raw::DEFAULT_EMBEDDINGS_MODEL_DIR));
            Ok(EmbeddingSettings::MiniLm { model_dir, batch_size, threads })
        }
        "openai" => {
            only(&[("model_dir", raw.model_dir.is_some()), ("threads", raw.threads.is_some())], "minilm")?;
            let base_url = raw.base_url.map(|u| u.trim().to_owned()).unwrap_or_default();
            let origin = base_url
                .split_once("://")
                .filter(|(scheme, rest)| matches!(*scheme, "http" | "https") && !rest.is_empty())
                .map(|(scheme, rest)| format!("{scheme}://{}", rest.split('/').next().unwrap_or_default()))
                .filter(|_| !base_url.contains(['?', '#', '@']))
                .ok_or_else(|| {
                    invalid(
                        "embeddings.base_url",
                        &base_url,
                        "expected an http(s) URL without query, e.g. https://api.openai.com/v1".into(),
                    )
                })?;
            let allow_private = raw.allow_private.unwrap_or(false);
            maestro_core::policy::NetworkRule::parse(&origin, allow_private)
                .map_err(|reason| invalid("embeddings.base_url", &base_url, reason))?;
            let model = raw.model.map(|m| m.trim().to_owned()).filter(|m| !m.is_empty()).ok_or_else(|| {
                invalid("embeddings.model", "", "expected the service's model name, e.g. text-embedding-3-small".into())
            })?;
            let dimensions = raw.dimensions.filter(|d| (1..=65_536).contains(d)).ok_or_else(|| {
                invalid(
                    "embeddings.dimensions",
                    raw.dimensions.map_or("(unset)".to_owned(), |d| d.to_string()),
                    "expected the model's vector length, from 1 to 65536 (e.g. 1536)".into(),
                )
            })?;
            let batch_size = raw.batch_size.unwrap_or(DEFAULT_OPENAI_EMBEDDINGS_BATCH_SIZE);
            if !(1..=2048).contains(&batch_size) {
                return Err(invalid("embeddings.batch_size", batch_size, "must be between 1 and 2048".into()));
            }
            let api_key = raw.api_key.as_deref().map(|text| secret_source("embeddings.api_key", text)).transpose()?;
            let timeout_text = raw.timeout.unwrap_or_else(|| "60s".to_owned());
            let timeout = humantime::parse_duration(timeout_text.trim())
                .ok()
                .filter(|d| (Duration::from_millis(100)..=Duration::from_secs(3600)).contains(d))
                .ok_or_else(|| {
                    invalid(
                        "embeddings.timeout",
                        &timeout_text,
                        "expected a duration from 100ms to 1h, e.g. 60s".into(),
                    )
                })?;
            let max_retries = raw.max_retries.unwrap_or(2);
            if max_retries > 10 {
                return Err(invalid("embeddings.max_retries", max_retries, "must be at most 10".into()));
            }
            Ok(EmbeddingSettings::OpenAi(OpenAiEmbeddingSettings {
                base_url,
                model,
                dimensions,
                send_dimensions: raw.send_dimensions.unwrap_or(false),
                batch_size,
                api_key,
                allow_private,
                timeout,
                max_retries,
            }))
        }
        other => Err(invalid("embeddings.provider", other, "expected minilm (built in) or openai".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_prices_validate_and_round_calls_up() {
        let raw = |text: &str| RawConfig::parse(text, std::path::Path::new("t.toml")).expect("parses");
        let config = Config::from_raw(
            raw("[[credits.models]]\nmodel = \"m\"\ninput_per_million = 3000\noutput_per_million = 15000\n"),
            &Env::new(),
            &Overrides::default(),
        )
        .expect("valid");
        let price = &config.model_prices[0];
        assert_eq!(price.cost(1_000_000, 0), Some(3000));
        assert_eq!(price.cost(1, 1), Some(2), "a token is never free");
        assert_eq!(price.cost(0, 0), Some(0));
        let dear = ModelPrice { model: "d".into(), input_per_million: 1_000_000_000_000, output_per_million: 0 };
        assert_eq!(dear.cost(u64::MAX, 0), None, "overflow is refused, not wrapped");
        for bad in [
            "[[credits.models]]\nmodel = \"m\"\ninput_per_million = -1\noutput_per_million = 1\n",
            "[[credits.models]]\nmodel = \" \"\ninput_per_million = 1\noutput_per_million = 1\n",
            "[[credits.models]]\nmodel = \"m\"\ninput_per_million = 1\noutput_per_million = 1\n[[credits.models]]\nmodel = \"m\"\ninput_per_million = 2\noutput_per_million = 2\n",
        ] {
            let err = Config::from_raw(raw(bad), &Env::new(), &Overrides::default()).expect_err(bad).to_string();
            assert!(err.contains("credits.models"), "{err}");
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn defaults_use_embedded_sqlite_under_data() {
        let config = Config::load(None, &Env::new(), &Overrides::default()).expect("defaults are valid");
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.store, StoreLocation::Sqlite(PathBuf::from("data/maestro.db")));
        assert_eq!(config.log_format, LogFormat::Human);
        assert!(config.cors_allow_origins.is_empty());
    }

    #[test]
    fn env_overrides_file_and_flags_override_env() {
        let raw = RawConfig::parse("listen = \"127.0.0.1:1\"\n", Path::new("t.toml")).expect("parses");
        let env = env(&[("MAESTRO_LISTEN", "127.0.0.1:2"), ("MAESTRO_LOG_FORMAT", "json")]);
        let config = Config::from_raw(raw.clone(), &env, &Overrides::default()).expect("valid");
        assert_eq!(config.listen.port(), 2);
        assert_eq!(config.log_format, LogFormat::Json);
        let flags = Overrides { listen: Some("127.0.0.1:3".into()), log_format: Some(LogFormat::Human) };
        let config = Config::from_raw(raw, &env, &flags).expect("valid");
        assert_eq!(config.listen.port(), 3);
        assert_eq!(config.log_format, LogFormat::Human);
    }

    #[test]
    fn empty_env_values_count_as_unset() {
        let config = Config::load(None, &env(&[("MAESTRO_DATABASE_URL", "")]), &Overrides::default()).expect("valid");
        assert!(matches!(config.store, StoreLocation::Sqlite(_)));
    }

    #[test]
    fn debug_output_redacts_secrets() {
        let env = env(&[
            ("MAESTRO_DATABASE_URL", "postgres://maestro:hunter2@db/maestro"),
            ("MAESTRO_ADMIN_KEY", "mk_0123456789abcdefghijABCDEFGHIJ0123456789"),
        ]);
        let shown = format!("{:?}", Config::load(None, &env, &Overrides::default()).expect("valid"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(!shown.contains("0123456789abcdefghij"), "{shown}");
    }

    #[test]
    fn rejects_bad_values_naming_the_key() {
        let cases = [
            ("MAESTRO_LISTEN", "nonsense", "listen"),
            ("MAESTRO_ADMIN_KEY", "sk_live_123", "admin_key"),
            ("MAESTRO_LOG_FORMAT", "xml", "log.format"),
            ("MAESTRO_BODY_LIMIT_BYTES", "12", "http.body_limit_bytes"),
            ("MAESTRO_BODY_LIMIT_BYTES", "lots", "MAESTRO_BODY_LIMIT_BYTES"),
            ("MAESTRO_CORS_ALLOW_ORIGINS", "*", "http.cors_allow_origins"),
            ("MAESTRO_DATABASE_URL", "mysql://x", "database_url"),
            ("MAESTRO_MCP_TOOL_NAMES", "bare", "mcp.tool_names"),
            ("MAESTRO_MCP_ALLOWED_ORIGINS", "*", "mcp.allowed_origins"),
            ("MAESTRO_MCP_ALLOWED_HOSTS", "evil.example/path", "mcp.allowed_hosts"),
            ("MAESTRO_MCP_SESSION_IDLE_TIMEOUT", "0s", "mcp.session_idle_timeout"),
            ("MAESTRO_MCP_MAX_SESSIONS_PER_KEY", "0", "mcp.max_sessions_per_key"),
            ("MAESTRO_MCP_MAX_SESSIONS_PER_KEY", "many", "MAESTRO_MCP_MAX_SESSIONS_PER_KEY"),
        ];
        for (var, value, key) in cases {
            let err = Config::load(None, &env(&[(var, value)]), &Overrides::default()).expect_err(value);
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }

    #[test]
    fn billing_is_off_without_a_key_and_validated_with_one() {
        let config = Config::load(None, &Env::new(), &Overrides::default()).expect("valid");
        assert_eq!(config.billing, None);
        let text = "[billing]\nsuccess_url = \"https://app.example/ok\"\ncancel_url = \"https://app.example/no\"\n\
                    [[billing.packs]]\nid = \"starter\"\ncredits = 1000\nunit_amount = 500\ncurrency = \"USD\"\n";
        let raw = RawConfig::parse(text, Path::new("t.toml")).expect("parses");
        let secrets =
            env(&[("MAESTRO_STRIPE_SECRET_KEY", "sk_test_abc123"), ("MAESTRO_STRIPE_WEBHOOK_SECRET", "whsec_xyz789")]);
        let config = Config::from_raw(raw.clone(), &secrets, &Overrides::default()).expect("valid");
        let billing = config.billing.as_ref().expect("billing on");
        assert_eq!(billing.api_base, "https://api.stripe.com/");
        assert_eq!(billing.packs[0].currency, "usd");
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk_test_abc123") && !shown.contains("whsec_xyz789"), "{shown}");
        let no_webhook = env(&[("MAESTRO_STRIPE_SECRET_KEY", "sk_test_abc123")]);
        let err = Config::from_raw(raw, &no_webhook, &Overrides::default()).expect_err("needs the webhook secret");
        assert!(err.to_string().contains("MAESTRO_STRIPE_WEBHOOK_SECRET"), "{err}");
        let err = Config::load(None, &secrets, &Overrides::default()).expect_err("needs urls and packs");
        assert!(err.to_string().contains("billing."), "{err}");
    }

    #[test]
    fn reports_unknown_maestro_variables() {
        let config = Config::load(None, &env(&[("MAESTRO_LISTNE", "x"), ("HOME", "/root")]), &Overrides::default())
            .expect("valid");
        assert_eq!(config.unknown_env, vec!["MAESTRO_LISTNE".to_owned()]);
    }

    fn llm(text: &str) -> Result<LlmSettings, ConfigError> {
        let raw = RawConfig::parse(text, Path::new("t.toml"))?;
        Config::from_raw(raw, &Env::new(), &Overrides::default()).map(|c| c.llm)
    }

    const PROVIDER: &str =
        "[[llm.providers]]\nname = \"p\"\nkind = \"anthropic\"\nbase_url = \"https://api.anthropic.com\"\n";

    #[test]
    fn llm_settings_default_and_validate() {
        assert_eq!(llm("").expect("none"), LlmSettings::default());
        let text = format!(
            "{PROVIDER}api_key = \"file:anthropic\"\nidle_timeout = \"5s\"\nmax_retries = 0\n\
             [[llm.models]]\nid = \"sonnet\"\nprovider = \"p\"\nmodel = \"claude-sonnet-4-5\"\ntier = \"best\"\n\
             fallbacks = [\"haiku\"]\n[[llm.models]]\nid = \"haiku\"\nprovider = \"p\"\n"
        );
        let settings = llm(&text).expect("valid");
        let provider = &settings.providers[0];
        assert_eq!(provider.kind, LlmProviderKind::Anthropic);
        assert_eq!(provider.api_key, Some(maestro_core::policy::SecretSource::File("anthropic".into())));
        assert_eq!(
            (provider.connect_timeout, provider.first_token_timeout, provider.idle_timeout, provider.max_retries),
            (Duration::from_secs(10), Duration::from_secs(60), Duration::from_secs(5), 0)
        );
        assert!(!provider.allow_private);
        assert_eq!(settings.router_tier, None);
        assert_eq!(
            llm("[llm]\nrouter_tier = \"best\"\n").expect("valid").router_tier,
            Some(maestro_core::plugin::ModelTier::Large)
        );
        let err = llm("[llm]\nrouter_tier = \"huge\"\n").expect_err("unknown tier").to_string();
        assert!(err.contains("llm.router_tier"), "{err}");
        let haiku = &settings.models[1];
        assert_eq!(haiku.upstream, "haiku", "the upstream name defaults to the id");
        assert_eq!(haiku.tier, maestro_core::plugin::ModelTier::Medium);
        assert_eq!(
            (haiku.context_window, haiku.max_output_tokens),
            (DEFAULT_CONTEXT_WINDOW, DEFAULT_MAX_OUTPUT_TOKENS)
        );
        assert_eq!(settings.models[0].tier, maestro_core::plugin::ModelTier::Large);
    }

    #[test]
    fn llm_settings_refuse_bad_values_naming_the_key() {
        let model = |extra: &str| format!("{PROVIDER}[[llm.models]]\nid = \"m\"\nprovider = \"p\"\n{extra}");
        let cases = [
            (PROVIDER.replace("anthropic\"\nbase", "gemini\"\nbase"), "llm.providers[p].kind"),
            (PROVIDER.replace("https://api.anthropic.com", "ftp://x"), "llm.providers[p].base_url"),
            (PROVIDER.replace("https://api.anthropic.com", "https://a.example/v1?key=1"), "llm.providers[p].base_url"),
            (format!("{PROVIDER}api_key = \"sk-ant-123\"\n"), "llm.providers[p].api_key"),
            (format!("{PROVIDER}api_key = \"env:\"\n"), "llm.providers[p].api_key"),
            (format!("{PROVIDER}first_token_timeout = \"never\"\n"), "llm.providers[p].first_token_timeout"),
            (format!("{PROVIDER}max_retries = 11\n"), "llm.providers[p].max_retries"),
            (format!("{PROVIDER}{PROVIDER}"), "llm.providers.name"),
            (model("tier = \"huge\"\n"), "llm.models[m].tier"),
            (model("context_window = 1000\nmax_output_tokens = 2000\n"), "llm.models[m].max_output_tokens"),
            (model("fallbacks = [\"nope\"]\n"), "llm.models[m].fallbacks"),
            (model("fallbacks = [\"m\"]\n"), "llm.models[m].fallbacks"),
            (format!("{PROVIDER}[[llm.models]]\nid = \"m\"\nprovider = \"q\"\n"), "llm.models[m].provider"),
        ];
        for (text, key) in cases {
            let err = llm(&text).expect_err(&text).to_string();
            assert!(err.contains(key), "{text}\n→ {err}");
            assert!(!err.contains("sk-ant-123"), "a literal key is never echoed: {err}");
        }
    }

    #[test]
    fn agent_settings_read_the_environment_over_the_file() {
        let text = "[runs]\nwait_timeout = \"1h\"\n[schedules]\ntick_interval = \"30s\"\n\
                    [events]\npoll_interval = \"2s\"\n";
        let raw = RawConfig::parse(text, Path::new("t.toml")).expect("parses");
        let vars = env(&[
            ("MAESTRO_RUNS_WAIT_TIMEOUT", "2h"),
            ("MAESTRO_SCHEDULES_TICK_INTERVAL", "5s"),
            ("MAESTRO_SCHEDULES_MIN_PERIOD", "10m"),
            ("MAESTRO_SCHEDULES_CATCH_UP_GRACE", "30s"),
            ("MAESTRO_EVENTS_POLL_INTERVAL", "250ms"),
        ]);
        let config = Config::from_raw(raw.clone(), &vars, &Overrides::default()).expect("valid");
        assert_eq!(config.runs.wait_timeout, Duration::from_secs(2 * 3600));
        assert_eq!(
            config.schedules,
            crate::schedules::ScheduleSettings {
                tick: Duration::from_secs(5),
                min_period: Duration::from_secs(600),
                catch_up_grace: Duration::from_secs(30),
            }
        );
        assert_eq!(config.events_poll_interval, Duration::from_millis(250));
        assert!(config.unknown_env.is_empty(), "{:?}", config.unknown_env);
        let file_only = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("valid");
        assert_eq!(file_only.runs.wait_timeout, Duration::from_secs(3600), "the file without the environment");

        let s3 = env(&[
            ("MAESTRO_ARTIFACTS_STORE", "s3"),
            ("MAESTRO_ARTIFACTS_BUCKET", "maestro-artifacts"),
            ("MAESTRO_ARTIFACTS_ENDPOINT", "http://127.0.0.1:9000/"),
            ("MAESTRO_ARTIFACTS_REGION", "eu-west-1"),
            ("MAESTRO_ARTIFACTS_ALLOW_HTTP", "true"),
            ("MAESTRO_ARTIFACTS_PREFIX", "exports/"),
            ("MAESTRO_ARTIFACTS_ACCESS_KEY_ID", "env:S3_KEY_ID"),
            ("MAESTRO_ARTIFACTS_SECRET_ACCESS_KEY", "file:s3-secret"),
        ]);
        let config = Config::load(None, &s3, &Overrides::default()).expect("valid");
        assert_eq!(
            config.artifacts,
            ArtifactSettings::S3(S3Settings {
                bucket: "maestro-artifacts".into(),
                endpoint: Some("http://127.0.0.1:9000".into()),
                region: "eu-west-1".into(),
                allow_http: true,
                prefix: "exports/".into(),
                access_key_id: maestro_core::policy::SecretSource::Env("S3_KEY_ID".into()),
                secret_access_key: maestro_core::policy::SecretSource::File("s3-secret".into()),
            })
        );
        let disk = env(&[("MAESTRO_ARTIFACTS_DIR", "/var/lib/maestro/artifacts")]);
        let config = Config::load(None, &disk, &Overrides::default()).expect("valid");
        assert_eq!(config.artifacts, ArtifactSettings::Disk { dir: "/var/lib/maestro/artifacts".into() });
    }

    #[test]
    fn agent_settings_refuse_bad_environment_values_naming_the_key() {
        let s3 = |extra: &[(&str, &str)]| {
            let mut vars = env(&[
                ("MAESTRO_ARTIFACTS_STORE", "s3"),
                ("MAESTRO_ARTIFACTS_BUCKET", "maestro-artifacts"),
                ("MAESTRO_ARTIFACTS_ACCESS_KEY_ID", "env:S3_KEY_ID"),
                ("MAESTRO_ARTIFACTS_SECRET_ACCESS_KEY", "env:S3_SECRET"),
            ]);
            vars.extend(env(extra));
            vars
        };
        let cases = [
            (env(&[("MAESTRO_RUNS_WAIT_TIMEOUT", "forever")]), "runs.wait_timeout"),
            (env(&[("MAESTRO_RUNS_WAIT_TIMEOUT", "0s")]), "runs.wait_timeout"),
            (env(&[("MAESTRO_SCHEDULES_TICK_INTERVAL", "2h")]), "schedules.tick_interval"),
            (env(&[("MAESTRO_SCHEDULES_MIN_PERIOD", "soon")]), "schedules.min_period"),
            (env(&[("MAESTRO_SCHEDULES_CATCH_UP_GRACE", "2days")]), "schedules.catch_up_grace"),
            (env(&[("MAESTRO_EVENTS_POLL_INTERVAL", "1ms")]), "events.poll_interval"),
            (env(&[("MAESTRO_ARTIFACTS_STORE", "tape")]), "artifacts.store"),
            (env(&[("MAESTRO_ARTIFACTS_BUCKET", "maestro-artifacts")]), "artifacts.bucket"),
            (s3(&[("MAESTRO_ARTIFACTS_BUCKET", "Not A Bucket")]), "artifacts.bucket"),
            (s3(&[("MAESTRO_ARTIFACTS_ENDPOINT", "http://minio:9000")]), "artifacts.endpoint"),
            (s3(&[("MAESTRO_ARTIFACTS_ALLOW_HTTP", "yes")]), "MAESTRO_ARTIFACTS_ALLOW_HTTP"),
            (s3(&[("MAESTRO_ARTIFACTS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI/K7MDENG")]), "artifacts.secret_access_key"),
            (env(&[("MAESTRO_STORE_DURABILITY", "sometimes")]), "store.durability"),
            (env(&[("MAESTRO_STORE_FLUSH_INTERVAL", "5s")]), "store.flush_interval"),
        ];
        for (vars, key) in cases {
            let err = Config::load(None, &vars, &Overrides::default()).expect_err(key).to_string();
            assert!(err.contains(key), "{vars:?}: {err}");
            assert!(!err.contains("wJalrXUtnFEMI"), "a literal key is never echoed: {err}");
        }
        let full = env(&[("MAESTRO_STORE_DURABILITY", "full"), ("MAESTRO_STORE_FLUSH_INTERVAL", "2ms")]);
        let config = Config::load(None, &full, &Overrides::default()).expect("valid");
        assert_eq!(config.store_settings.durability, crate::storage::Durability::Full);
        assert_eq!(config.store_settings.flush_interval, Duration::from_millis(2));
    }

    #[test]
    fn jobs_settings_default_and_read_the_environment() {
        let config = Config::load(None, &Env::new(), &Overrides::default()).expect("valid");
        assert_eq!(
            config.jobs,
            JobsSettings { concurrency: 4, lease: Duration::from_secs(30), poll_interval: Duration::from_secs(1) }
        );
        let vars = env(&[
            ("MAESTRO_JOBS_CONCURRENCY", "2"),
            ("MAESTRO_JOBS_LEASE", "3s"),
            ("MAESTRO_JOBS_POLL_INTERVAL", "50ms"),
        ]);
        let config = Config::load(None, &vars, &Overrides::default()).expect("valid");
        assert_eq!(
            config.jobs,
            JobsSettings { concurrency: 2, lease: Duration::from_secs(3), poll_interval: Duration::from_millis(50) }
        );
        for (var, value, key) in [
            ("MAESTRO_JOBS_CONCURRENCY", "0", "jobs.concurrency"),
            ("MAESTRO_JOBS_CONCURRENCY", "many", "MAESTRO_JOBS_CONCURRENCY"),
            ("MAESTRO_JOBS_LEASE", "0s", "jobs.lease"),
            ("MAESTRO_JOBS_POLL_INTERVAL", "soon", "jobs.poll_interval"),
        ] {
            let err = Config::load(None, &env(&[(var, value)]), &Overrides::default()).expect_err(value);
            assert!(err.to_string().contains(key), "{var}={value}: {err}");
        }
    }

    fn embeddings(text: &str, env: &[(&str, &str)]) -> Result<EmbeddingSettings, ConfigError> {
        let raw = RawConfig::parse(text, Path::new("t.toml"))?;
        Config::from_raw(raw, &self::env(env), &Overrides::default()).map(|c| c.embeddings)
    }

    #[test]
    fn embeddings_default_to_the_offline_model_where_the_script_puts_it() {
        assert_eq!(
            embeddings("", &[]).expect("defaults"),
            EmbeddingSettings::MiniLm {
                model_dir: PathBuf::from("/var/tmp/maestro-cache/models/all-minilm-l6-v2-0.1.0"),
                batch_size: 32,
                threads: 0,
            }
        );
        let moved = embeddings(
            "[embeddings]\nbatch_size = 8\n",
            &[("MAESTRO_EMBEDDINGS_MODEL_DIR", "/models/minilm"), ("MAESTRO_EMBEDDINGS_THREADS", "1")],
        )
        .expect("valid");
        assert_eq!(
            moved,
            EmbeddingSettings::MiniLm { model_dir: PathBuf::from("/models/minilm"), batch_size: 8, threads: 1 }
        );
    }

    #[test]
    fn an_embeddings_service_needs_its_model_and_dimension_and_reads_its_key_from_a_source() {
        let text = "[embeddings]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:11434/v1\"\n\
                    allow_private = true\nmodel = \"nomic-embed-text\"\ndimensions = 768\napi_key = \"env:OLLAMA_KEY\"\n";
        let EmbeddingSettings::OpenAi(service) = embeddings(text, &[]).expect("valid") else {
            panic!("an openai embedder")
        };
        assert_eq!((service.model.as_str(), service.dimensions, service.batch_size), ("nomic-embed-text", 768, 64));
        assert_eq!(service.api_key, Some(maestro_core::policy::SecretSource::Env("OLLAMA_KEY".into())));
        assert_eq!(
            (service.timeout, service.max_retries, service.send_dimensions),
            (Duration::from_secs(60), 2, false)
        );
        let from_env = embeddings(
            "",
            &[
                ("MAESTRO_EMBEDDINGS_PROVIDER", "openai"),
                ("MAESTRO_EMBEDDINGS_BASE_URL", "https://api.openai.com/v1"),
                ("MAESTRO_EMBEDDINGS_MODEL", "text-embedding-3-small"),
                ("MAESTRO_EMBEDDINGS_DIMENSIONS", "1536"),
                ("MAESTRO_EMBEDDINGS_BATCH_SIZE", "100"),
            ],
        )
        .expect("valid");
        assert!(matches!(from_env, EmbeddingSettings::OpenAi(s) if s.dimensions == 1536 && s.batch_size == 100));
        let openai = "[embeddings]\nprovider = \"openai\"\nbase_url = \"https://api.openai.com/v1\"\n";
        let cases = [
            ("[embeddings]\nprovider = \"word2vec\"\n".to_owned(), "embeddings.provider"),
            ("[embeddings]\nbase_url = \"https://x.example/v1\"\n".to_owned(), "embeddings.base_url"),
            ("[embeddings]\nbatch_size = 0\n".to_owned(), "embeddings.batch_size"),
            (format!("{openai}dimensions = 8\n"), "embeddings.model"),
            (format!("{openai}model = \"m\"\n"), "embeddings.dimensions"),
            (format!("{openai}model = \"m\"\ndimensions = 8\nmodel_dir = \"x\"\n"), "embeddings.model_dir"),
            (format!("{openai}model = \"m\"\ndimensions = 8\napi_key = \"sk-live-123\"\n"), "embeddings.api_key"),
            (format!("{openai}model = \"m\"\ndimensions = 8\nbatch_size = 4096\n"), "embeddings.batch_size"),
            (format!("{openai}model = \"m\"\ndimensions = 8\ntimeout = \"soon\"\n"), "embeddings.timeout"),
            (
                "[embeddings]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\ndimensions = 8\n"
                    .to_owned(),
                "embeddings.base_url",
            ),
        ];
        for (text, key) in cases {
            let err = embeddings(&text, &[]).expect_err(&text).to_string();
            assert!(err.contains(key), "{text}\n→ {err}");
            assert!(!err.contains("sk-live-123"), "a literal key is never echoed: {err}");
        }
        let err = embeddings("", &[("MAESTRO_EMBEDDINGS_DIMENSIONS", "many")]).expect_err("not a number").to_string();
        assert!(err.contains("MAESTRO_EMBEDDINGS_DIMENSIONS"), "{err}");
    }
}

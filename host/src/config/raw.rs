//! The config file as written: every key optional, unknown keys rejected.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{ConfigError, Env, non_empty};

pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub(super) const DEFAULT_DATA_DIR: &str = "data";
pub(super) const DEFAULT_LOG_LEVEL: &str = "info";
pub(super) const DEFAULT_BODY_LIMIT: usize = 1 << 20;
pub(super) const DEFAULT_POLICY_DIR: &str = "policies";
pub(super) const DEFAULT_RELOAD_INTERVAL: &str = "2s";
pub(super) const DEFAULT_SANDBOX_MEMORY: &str = "256MiB";
pub(super) const DEFAULT_SANDBOX_INSTANCES: u32 = 256;
pub(super) const DEFAULT_MCP_HOSTS: &[&str] = &["localhost", "127.0.0.1", "::1"];
pub(super) const DEFAULT_MCP_SESSION_IDLE: &str = "30m";
pub(super) const DEFAULT_MCP_MAX_SESSIONS_PER_KEY: u32 = 32;
pub(super) const DEFAULT_JOBS_CONCURRENCY: usize = 4;
pub(super) const DEFAULT_JOBS_LEASE: &str = "30s";
pub(super) const DEFAULT_JOBS_POLL_INTERVAL: &str = "1s";
pub(super) const DEFAULT_RUNS_WAIT_TIMEOUT: &str = "24h";
pub(super) const DEFAULT_SCHEDULES_TICK_INTERVAL: &str = "15s";
pub(super) const DEFAULT_SCHEDULES_MIN_PERIOD: &str = "1m";
pub(super) const DEFAULT_SCHEDULES_CATCH_UP_GRACE: &str = "2m";
pub(super) const DEFAULT_EVENTS_POLL_INTERVAL: &str = "1s";
pub(super) const DEFAULT_STRIPE_API_BASE: &str = "https://api.stripe.com/";
/// Where `scripts/model.sh` puts the offline model (with its default cache dir).
pub(super) const DEFAULT_EMBEDDINGS_MODEL_DIR: &str = "/var/tmp/maestro-cache/models/all-minilm-l6-v2-0.1.0";

/// The raw config file. See `config/maestro.toml` for every key and its default.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// Format version; 1 for this build.
    pub version: Option<u32>,
    /// Listen address.
    pub listen: Option<String>,
    /// Data directory.
    pub data_dir: Option<PathBuf>,
    /// Database URL; unset means embedded SQLite under `data_dir`.
    pub database_url: Option<String>,
    /// Platform-admin key for first start.
    pub admin_key: Option<String>,
    /// `[log]`.
    #[serde(default)]
    pub log: RawLog,
    /// `[http]`.
    #[serde(default)]
    pub http: RawHttp,
    /// `[plugins]`.
    #[serde(default)]
    pub plugins: RawPlugins,
    /// `[policies]`.
    #[serde(default)]
    pub policies: RawPolicies,
    /// `[sandbox]`.
    #[serde(default)]
    pub sandbox: RawSandbox,
    /// `[mcp]`.
    #[serde(default)]
    pub mcp: RawMcp,
    /// `[billing]`.
    #[serde(default)]
    pub billing: RawBilling,
    /// `[credits]`.
    #[serde(default)]
    pub credits: RawCredits,
    /// `[jobs]`.
    #[serde(default)]
    pub jobs: RawJobs,
    /// `[llm]`.
    #[serde(default)]
    pub llm: RawLlm,
    /// `[runs]`.
    #[serde(default)]
    pub runs: RawRuns,
    /// `[schedules]`.
    #[serde(default)]
    pub schedules: RawSchedules,
    /// `[events]`.
    #[serde(default)]
    pub events: RawEvents,
    /// `[artifacts]`.
    #[serde(default)]
    pub artifacts: RawArtifacts,
    /// `[search]`.
    #[serde(default)]
    pub search: RawSearch,
    /// `[embeddings]`.
    #[serde(default)]
    pub embeddings: RawEmbeddings,
    /// `[memory]`.
    #[serde(default)]
    pub memory: RawMemory,
    /// `[store]`.
    #[serde(default)]
    pub store: RawStore,
    /// `[auth]`.
    #[serde(default)]
    pub auth: RawAuth,
}

/// `[store]`: when the embedded store's commits are on disk.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStore {
    /// `full` or `normal`.
    pub durability: Option<String>,
    /// How often the WAL is fsynced under `normal`.
    pub flush_interval: Option<String>,
}

/// `[auth]`: the cache of verified API keys.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    /// The most keys cached (`0`: no cache).
    pub key_cache_entries: Option<usize>,
    /// How long a cached key is trusted at most.
    pub key_cache_ttl: Option<String>,
}

/// `[memory]`: what personas recall, and distillation after runs.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMemory {
    /// Whether personas recall before answering.
    pub recall: Option<bool>,
    /// The recalled block's budget, by the prompt token bound.
    pub recall_tokens: Option<u32>,
    /// The least cosine similarity recalled.
    pub recall_min_score: Option<f32>,
    /// The least BM25 score of a recalled full-text hit.
    pub recall_min_text_score: Option<f32>,
    /// Personas that never recall.
    pub recall_skip: Option<Vec<String>>,
    /// Whether completed runs are distilled into memories.
    pub distil: Option<bool>,
    /// The most facts one run's distillation stores.
    pub distil_max_facts: Option<u32>,
}

/// `[search]`: the full-text index.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSearch {
    /// The index directory (default `<data_dir>/index`).
    pub dir: Option<std::path::PathBuf>,
    /// Commit at most this often while changes arrive.
    pub commit_interval: Option<String>,
    /// Or as soon as this many changes wait.
    pub commit_batch: Option<usize>,
    /// How often an idle indexer reads the outbox.
    pub poll_interval: Option<String>,
    /// The index writer's memory budget in bytes.
    pub writer_memory_bytes: Option<usize>,
    /// How long outbox rows are kept.
    pub outbox_retention: Option<String>,
    /// Longest accepted query, in characters.
    pub max_query_chars: Option<usize>,
    /// Hybrid search's default recency half-life (`0s`: none).
    pub half_life: Option<String>,
}

/// `[schedules]`: how schedules fire.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSchedules {
    /// How often every replica looks for due schedules.
    pub tick_interval: Option<String>,
    /// The shortest period a schedule may have.
    pub min_period: Option<String>,
    /// How late a fire may run and still count as on time.
    pub catch_up_grace: Option<String>,
}

/// `[events]`: live run events.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEvents {
    /// How often an idle event stream reads the store (the backstop of notifications).
    pub poll_interval: Option<String>,
}

/// `[runs]`: how agent runs behave.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRuns {
    /// How long a run's question to the user waits for an answer, e.g. `24h`.
    pub wait_timeout: Option<String>,
}

/// `[artifacts]`: where exported files are kept.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawArtifacts {
    /// `disk` (default) or `s3`.
    pub store: Option<String>,
    /// Directory of the disk store; default `<data_dir>/artifacts`.
    pub dir: Option<PathBuf>,
    /// S3 bucket.
    pub bucket: Option<String>,
    /// S3 endpoint URL; unset: AWS's for the region.
    pub endpoint: Option<String>,
    /// S3 region.
    pub region: Option<String>,
    /// Whether an `http://` endpoint is allowed.
    pub allow_http: Option<bool>,
    /// Key prefix in the bucket.
    pub prefix: Option<String>,
    /// `env:NAME` or `file:NAME`; never the key itself.
    pub access_key_id: Option<String>,
    /// `env:NAME` or `file:NAME`; never the key itself.
    pub secret_access_key: Option<String>,
}

/// `[llm]`: model providers and the models they serve.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlm {
    /// The tier of the model that routes turns (`fast` when unset).
    pub router_tier: Option<String>,
    /// `[[llm.providers]]`.
    pub providers: Option<Vec<RawLlmProvider>>,
    /// `[[llm.models]]`.
    pub models: Option<Vec<RawLlmModel>>,
}

/// One `[[llm.providers]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlmProvider {
    /// Name models refer to.
    pub name: String,
    /// `openai` (any OpenAI-compatible server) or `anthropic`.
    pub kind: String,
    /// Base URL.
    pub base_url: String,
    /// `env:NAME` or `file:NAME`; never the key itself.
    pub api_key: Option<String>,
    /// Whether the base URL may be loopback or private.
    pub allow_private: Option<bool>,
    /// Connecting, e.g. `10s`.
    pub connect_timeout: Option<String>,
    /// Until the first token, e.g. `60s`.
    pub first_token_timeout: Option<String>,
    /// Longest gap between chunks, e.g. `60s`.
    pub idle_timeout: Option<String>,
    /// Retries on one model before falling back.
    pub max_retries: Option<u32>,
}

/// One `[[llm.models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLlmModel {
    /// Id Maestro calls it by.
    pub id: String,
    /// Provider name.
    pub provider: String,
    /// Upstream model name; defaults to the id.
    pub model: Option<String>,
    /// `fast`, `balanced` or `best`.
    pub tier: Option<String>,
    /// Context window, in tokens.
    pub context_window: Option<u32>,
    /// Largest answer, in tokens.
    pub max_output_tokens: Option<u32>,
    /// Model ids tried next.
    pub fallbacks: Option<Vec<String>>,
}

/// `[jobs]`: the background job worker of `maestro serve`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawJobs {
    /// Jobs one process runs at once.
    pub concurrency: Option<usize>,
    /// How long a claimed job is held before another worker may take it over.
    pub lease: Option<String>,
    /// How often an idle worker looks for due jobs.
    pub poll_interval: Option<String>,
}

/// `[credits]`: prices that are not set per tool by policy.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCredits {
    /// `[[credits.models]]`: what model calls cost.
    pub models: Option<Vec<RawModelPrice>>,
}

/// One `[[credits.models]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModelPrice {
    /// Model name as the orchestrator asks for it.
    pub model: String,
    /// Credits per million input tokens.
    pub input_per_million: i64,
    /// Credits per million output tokens.
    pub output_per_million: i64,
}

/// `[billing]`: Stripe top-ups. The API key and webhook secret come only from the
/// environment (`MAESTRO_STRIPE_SECRET_KEY`, `MAESTRO_STRIPE_WEBHOOK_SECRET`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBilling {
    /// Stripe API base URL.
    pub api_base: Option<String>,
    /// Where Checkout sends the customer after paying.
    pub success_url: Option<String>,
    /// Where Checkout sends the customer after giving up.
    pub cancel_url: Option<String>,
    /// `[[billing.packs]]`.
    pub packs: Option<Vec<RawPack>>,
}

/// One `[[billing.packs]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPack {
    /// Identifier clients ask for.
    pub id: String,
    /// Name on the Checkout page.
    pub name: Option<String>,
    /// Credits granted.
    pub credits: i64,
    /// Price in the currency's smallest unit.
    pub unit_amount: i64,
    /// ISO currency code.
    pub currency: String,
}

/// `[mcp]`: the MCP endpoint.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMcp {
    /// Hosts accepted in the `Host` header of `/mcp` requests.
    pub allowed_hosts: Option<Vec<String>>,
    /// Browser origins accepted in the `Origin` header of `/mcp` requests.
    pub allowed_origins: Option<Vec<String>>,
    /// `qualified` or `short`.
    pub tool_names: Option<String>,
    /// Idle sessions (2025-11-25 revision) close after this long.
    pub session_idle_timeout: Option<String>,
    /// Open sessions (2025-11-25 revision) one API key may hold at once.
    pub max_sessions_per_key: Option<u32>,
    /// Tools whose calls' POST streams the server closes at once (clients poll).
    pub poll_tools: Option<Vec<String>>,
}

/// `[plugins]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlugins {
    /// Directory of installed plugins (`<name>/plugin.toml` + component).
    pub dir: Option<PathBuf>,
    /// How often to look for changed plugins, e.g. `2s`; `0s` disables reloading.
    pub reload_interval: Option<String>,
}

/// `[policies]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicies {
    /// Directory of policy files (`*.toml`).
    pub dir: Option<PathBuf>,
    /// How often to look for changed policies; `0s` disables reloading.
    pub reload_interval: Option<String>,
    /// Directory holding `file:KEY` secrets (one file per key).
    pub secrets_dir: Option<PathBuf>,
}

/// `[sandbox]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSandbox {
    /// Threads running plugin code (0: one per core).
    pub workers: Option<usize>,
    /// Largest linear memory any call may get, e.g. `256MiB`.
    pub max_memory: Option<String>,
    /// Plugin instances alive at once.
    pub max_instances: Option<u32>,
    /// Tool calls and persona renderings one tenant may have running at once.
    pub max_calls_in_flight_per_tenant: Option<usize>,
    /// Largest plugin component accepted, e.g. `64MiB`.
    pub max_component_size: Option<String>,
    /// Longest a component may take to compile, e.g. `60s`.
    pub compile_timeout: Option<String>,
    /// Compiled-component cache; default `<data_dir>/cache/wasm`.
    pub cache_dir: Option<PathBuf>,
}

/// `[log]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLog {
    /// Filter directives.
    pub level: Option<String>,
    /// `human` or `json`.
    pub format: Option<String>,
}

/// `[http]` section.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHttp {
    /// Largest accepted request body.
    pub body_limit_bytes: Option<usize>,
    /// CORS allow-list.
    pub cors_allow_origins: Option<Vec<String>>,
}

/// `[embeddings]`: the embedder of memories and semantic search.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawEmbeddings {
    /// `minilm` (built in, offline) or `openai` (an OpenAI-compatible service).
    pub provider: Option<String>,
    /// minilm: the model directory `scripts/model.sh` prints.
    pub model_dir: Option<PathBuf>,
    /// minilm: threads of the inference pool (0: one per core).
    pub threads: Option<usize>,
    /// Texts per forward pass (minilm) or inputs per request (openai).
    pub batch_size: Option<usize>,
    /// openai: base URL, e.g. `https://api.openai.com/v1`.
    pub base_url: Option<String>,
    /// openai: the service's model name.
    pub model: Option<String>,
    /// openai: numbers per vector the model answers.
    pub dimensions: Option<u32>,
    /// openai: whether to ask for `dimensions` in each request.
    pub send_dimensions: Option<bool>,
    /// openai: `env:NAME` or `file:NAME`; never the key itself.
    pub api_key: Option<String>,
    /// openai: whether the base URL may be loopback or private.
    pub allow_private: Option<bool>,
    /// openai: one request, e.g. `60s`.
    pub timeout: Option<String>,
    /// openai: retries of one batch.
    pub max_retries: Option<u32>,
}

impl RawConfig {
    /// Reads and parses a config file.
    pub fn read(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        Self::parse(&text, path)
    }

    /// Parses config text; `path` is for messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse { path: path.to_owned(), message: e.to_string() })
    }

    /// Applies `MAESTRO_*` variables on top of the file.
    pub(super) fn apply_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        let get = |key| non_empty(env, key).map(str::to_owned);
        if let Some(v) = get("MAESTRO_LISTEN") {
            self.listen = Some(v);
        }
        if let Some(v) = get("MAESTRO_DATA_DIR") {
            self.data_dir = Some(v.into());
        }
        if let Some(v) = get("MAESTRO_DATABASE_URL") {
            self.database_url = Some(v);
        }
        if let Some(v) = get("MAESTRO_ADMIN_KEY") {
            self.admin_key = Some(v);
        }
        if let Some(v) = get("MAESTRO_LOG") {
            self.log.level = Some(v);
        }
        if let Some(v) = get("MAESTRO_LOG_FORMAT") {
            self.log.format = Some(v);
        }
        if let Some(v) = get("MAESTRO_BODY_LIMIT_BYTES") {
            let bytes = v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "MAESTRO_BODY_LIMIT_BYTES".into(),
                value: v.clone(),
                reason: "expected a number of bytes".into(),
            })?;
            self.http.body_limit_bytes = Some(bytes);
        }
        if let Some(v) = get("MAESTRO_PLUGIN_DIR") {
            self.plugins.dir = Some(v.into());
        }
        if let Some(v) = get("MAESTRO_POLICY_DIR") {
            self.policies.dir = Some(v.into());
        }
        if let Some(v) = get("MAESTRO_SECRETS_DIR") {
            self.policies.secrets_dir = Some(v.into());
        }
        let list = |v: String| v.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
        if let Some(v) = get("MAESTRO_MCP_ALLOWED_HOSTS") {
            self.mcp.allowed_hosts = Some(list(v));
        }
        if let Some(v) = get("MAESTRO_MCP_ALLOWED_ORIGINS") {
            self.mcp.allowed_origins = Some(list(v));
        }
        if let Some(v) = get("MAESTRO_MCP_TOOL_NAMES") {
            self.mcp.tool_names = Some(v);
        }
        if let Some(v) = get("MAESTRO_MCP_SESSION_IDLE_TIMEOUT") {
            self.mcp.session_idle_timeout = Some(v);
        }
        if let Some(v) = get("MAESTRO_MCP_MAX_SESSIONS_PER_KEY") {
            let sessions = v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "MAESTRO_MCP_MAX_SESSIONS_PER_KEY".into(),
                value: v.clone(),
                reason: "expected a number of sessions".into(),
            })?;
            self.mcp.max_sessions_per_key = Some(sessions);
        }
        if let Some(v) = get("MAESTRO_MCP_POLL_TOOLS") {
            self.mcp.poll_tools = Some(list(v));
        }
        if let Some(v) = get("MAESTRO_JOBS_CONCURRENCY") {
            let n = v.trim().parse().map_err(|_| ConfigError::Invalid {
                key: "MAESTRO_JOBS_CONCURRENCY".into(),
                value: v.clone(),
                reason: "expected a number of jobs".into(),
            })?;
            self.jobs.concurrency = Some(n);
        }
        if let Some(v) = get("MAESTRO_JOBS_LEASE") {
            self.jobs.lease = Some(v);
        }
        if let Some(v) = get("MAESTRO_JOBS_POLL_INTERVAL") {
            self.jobs.poll_interval = Some(v);
        }
        if let Some(v) = get("MAESTRO_STRIPE_API_BASE") {
            self.billing.api_base = Some(v);
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_PROVIDER") {
            self.embeddings.provider = Some(v);
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_MODEL_DIR") {
            self.embeddings.model_dir = Some(v.into());
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_BASE_URL") {
            self.embeddings.base_url = Some(v);
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_MODEL") {
            self.embeddings.model = Some(v);
        }
        let number = |key: &str, v: &str| {
            v.trim().parse::<u32>().map_err(|_| ConfigError::Invalid {
                key: key.into(),
                value: v.to_owned(),
                reason: "expected a whole number".into(),
            })
        };
        if let Some(v) = get("MAESTRO_EMBEDDINGS_DIMENSIONS") {
            self.embeddings.dimensions = Some(number("MAESTRO_EMBEDDINGS_DIMENSIONS", &v)?);
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_BATCH_SIZE") {
            self.embeddings.batch_size = Some(number("MAESTRO_EMBEDDINGS_BATCH_SIZE", &v)? as usize);
        }
        if let Some(v) = get("MAESTRO_EMBEDDINGS_THREADS") {
            self.embeddings.threads = Some(number("MAESTRO_EMBEDDINGS_THREADS", &v)? as usize);
        }
        if let Some(v) = get("MAESTRO_CORS_ALLOW_ORIGINS") {
            let origins = v.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_owned).collect();
            self.http.cors_allow_origins = Some(origins);
        }
        self.apply_agent_env(env)
    }

    /// The `[runs]`, `[schedules]`, `[events]`, `[artifacts]` and `[memory]` variables. Values are
    /// validated with the file's, so a bad one is refused naming the config key.
    fn apply_agent_env(&mut self, env: &Env) -> Result<(), ConfigError> {
        let get = |key| non_empty(env, key).map(str::to_owned);
        if let Some(v) = get("MAESTRO_RUNS_WAIT_TIMEOUT") {
            self.runs.wait_timeout = Some(v);
        }
        if let Some(v) = get("MAESTRO_SCHEDULES_TICK_INTERVAL") {
            self.schedules.tick_interval = Some(v);
        }
        if let Some(v) = get("MAESTRO_SCHEDULES_MIN_PERIOD") {
            self.schedules.min_period = Some(v);
        }
        if let Some(v) = get("MAESTRO_SCHEDULES_CATCH_UP_GRACE") {
            self.schedules.catch_up_grace = Some(v);
        }
        if let Some(v) = get("MAESTRO_EVENTS_POLL_INTERVAL") {
            self.events.poll_interval = Some(v);
        }
        if let Some(v) = get("MAESTRO_STORE_DURABILITY") {
            self.store.durability = Some(v);
        }
        if let Some(v) = get("MAESTRO_STORE_FLUSH_INTERVAL") {
            self.store.flush_interval = Some(v);
        }
        let artifacts = &mut self.artifacts;
        if let Some(v) = get("MAESTRO_ARTIFACTS_STORE") {
            artifacts.store = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_DIR") {
            artifacts.dir = Some(v.into());
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_BUCKET") {
            artifacts.bucket = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_ENDPOINT") {
            artifacts.endpoint = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_REGION") {
            artifacts.region = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_ALLOW_HTTP") {
            let allow = match v.trim() {
                "true" => true,
                "false" => false,
                _ => {
                    return Err(ConfigError::Invalid {
                        key: "MAESTRO_ARTIFACTS_ALLOW_HTTP".into(),
                        value: v.clone(),
                        reason: "expected true or false".into(),
                    });
                }
            };
            artifacts.allow_http = Some(allow);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_PREFIX") {
            artifacts.prefix = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_ACCESS_KEY_ID") {
            artifacts.access_key_id = Some(v);
        }
        if let Some(v) = get("MAESTRO_ARTIFACTS_SECRET_ACCESS_KEY") {
            artifacts.secret_access_key = Some(v);
        }
        for (key, slot) in
            [("MAESTRO_MEMORY_RECALL", &mut self.memory.recall), ("MAESTRO_MEMORY_DISTIL", &mut self.memory.distil)]
        {
            if let Some(v) = get(key) {
                *slot = Some(match v.trim() {
                    "true" => true,
                    "false" => false,
                    _ => {
                        return Err(ConfigError::Invalid {
                            key: key.into(),
                            value: v.clone(),
                            reason: "expected true or false".into(),
                        });
                    }
                });
            }
        }
        Ok(())
    }
}

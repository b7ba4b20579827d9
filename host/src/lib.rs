//! `maestro-host`: the adapters around `maestro-core` and the composition root.
//!
//! This file is the only place that names concrete adapters (which store, which clock);
//! everything else receives ports. See `ARCHITECTURE.md` for the module map.

pub mod accounts;
pub mod artifacts;
pub mod billing;
pub mod cli;
pub mod config;
pub mod credits;
pub mod distil;
pub mod documents;
pub mod export;
pub mod http;
pub mod jobs;
pub mod mcp;
pub mod memory;
pub mod orchestrator;
pub mod passages;
pub mod plugins;
pub mod policy;
mod poll;
mod random;
pub mod recall;
pub mod retrieval;
pub mod schedules;
pub mod search;
pub mod storage;
pub mod telemetry;
pub mod tools;

/// The offline embedder (crate `maestro-embed`), under its module name.
pub use maestro_embed as embed;
/// The model providers (crate `maestro-llm`), under its module name.
pub use maestro_llm as llm;
/// The one outbound HTTP client (crate `maestro-outbound`), under its module name.
pub use maestro_outbound as outbound;
/// The plugin sandbox (crate `maestro-sandbox`), under its module name.
pub use maestro_sandbox as sandbox;

use std::future::Future;
use std::sync::Arc;

use accounts::{Accounts, Bootstrap, SystemClock};
use config::Config;
use maestro_core::{Clock, Store, StoreError};

/// Opens the configured store (migrating it): the whole backend, whose ports the caller
/// hands to the use-cases (`Accounts` its tenants and keys, `Credits` its ledger, …).
pub async fn open_store(config: &Config) -> Result<Arc<dyn Store>, StoreError> {
    storage::open_with(&config.store, &config.store_settings).await
}

/// Opens the configured store (migrating it) and builds the account use-cases on it.
pub async fn open_accounts(config: &Config) -> Result<Accounts, StoreError> {
    Ok(Accounts::new(open_store(config).await?, Arc::new(SystemClock)).with_key_cache(config.key_cache))
}

/// How often the hold-expiry sweep runs (one job per slot of this length, whatever the
/// number of replicas).
pub const EXPIRE_HOLDS_EVERY: std::time::Duration = std::time::Duration::from_secs(30);

/// How often finished jobs older than [`jobs::RETENTION`] are deleted.
pub const PRUNE_JOBS_EVERY: std::time::Duration = std::time::Duration::from_secs(3600);

/// The HTTP settings from the config.
pub fn http_settings(config: &Config) -> http::HttpSettings {
    http::HttpSettings {
        body_limit_bytes: config.body_limit_bytes,
        cors_allow_origins: config.cors_allow_origins.clone(),
        mcp: config.mcp.clone(),
    }
}

/// The sandbox configured from the config.
pub fn sandbox(config: &Config) -> Result<sandbox::Sandbox, sandbox::SandboxError> {
    sandbox::Sandbox::new(sandbox::SandboxConfig {
        cache_dir: Some(config.sandbox.cache_dir.clone()),
        workers: config.sandbox.workers,
        max_memory_bytes: config.sandbox.max_memory_bytes,
        max_instances: config.sandbox.max_instances,
        max_component_bytes: config.sandbox.max_component_bytes,
        compile_timeout: config.sandbox.compile_timeout,
        ..sandbox::SandboxConfig::default()
    })
}

/// When [`open_tools`] loads the plugins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PluginLoading {
    /// Before returning (a server reports ready with its plugins loaded).
    Now,
    /// In the background (stdio answers `initialize` while compiling; callers wait on
    /// [`plugins::PluginRegistry::first_scan`] before using the catalog).
    Background,
}

/// Starts the sandbox, loads plugins and policies, and starts their reload watchers.
pub async fn open_tools(
    config: &Config,
    env: &config::Env,
    loading: PluginLoading,
    credits: Arc<credits::Credits>,
) -> anyhow::Result<Arc<tools::Tools>> {
    open_tools_with(config, env, loading, credits, Vec::new()).await
}

/// The tools of [`open_tools`] plus the host's built-in tools (`documents.*`, …).
pub async fn open_tools_with(
    config: &Config,
    env: &config::Env,
    loading: PluginLoading,
    credits: Arc<credits::Credits>,
    host_tools: Vec<Arc<dyn tools::HostTool>>,
) -> anyhow::Result<Arc<tools::Tools>> {
    use anyhow::Context as _;
    let sandbox = Arc::new(sandbox(config)?);
    let registry = Arc::new(plugins::PluginRegistry::new(sandbox, config.plugin_dir.clone()));
    let first_load = {
        let (registry, dir, reload) = (registry.clone(), config.plugin_dir.clone(), config.plugin_reload);
        async move {
            registry.refresh().await;
            let catalog = registry.catalog();
            tracing::info!(
                dir = %dir.display(),
                loaded = catalog.plugins().count(),
                refused = catalog.refused().len(),
                "plugins"
            );
            if let Some(interval) = reload {
                registry.watch(interval);
            }
        }
    };
    match loading {
        PluginLoading::Now => first_load.await,
        PluginLoading::Background => drop(tokio::spawn(first_load)),
    }
    let policies = Arc::new(
        policy::PolicyStore::open(config.policy_dir.clone())
            .with_context(|| format!("invalid policies in {}", config.policy_dir.display()))?,
    );
    let (grants, denies) = policies.current().rule_counts();
    tracing::info!(dir = %config.policy_dir.display(), grants, denies, "policies");
    if let Some(interval) = config.policy_reload {
        policies.watch(interval);
    }
    let secrets = tools::SecretValues::new(env.clone(), config.secrets_dir.clone());
    let models = open_models(config, env)?;
    Ok(Arc::new(
        tools::Tools::new(registry, policies, secrets)
            .with_credits(credits)
            .with_tenant_limit(config.sandbox.max_calls_in_flight_per_tenant)
            .with_host_tools(host_tools)
            .with_models(models, config.model_prices.clone()),
    ))
}

/// The model providers configured in `[llm]`: a provider whose `models()` is empty and
/// whose calls answer `no_model_provider` when none is configured. Keys are read from
/// the environment or the secrets directory when each request is sent; one that is not
/// available at start is refused here, naming the provider and where it was looked for.
pub fn open_models(config: &Config, env: &config::Env) -> anyhow::Result<Arc<dyn maestro_core::llm::ModelProvider>> {
    use anyhow::Context as _;
    if config.llm.providers.is_empty() {
        return Ok(Arc::new(llm::NoProvider));
    }
    let secrets = tools::SecretValues::new(env.clone(), config.secrets_dir.clone());
    let mut providers = Vec::new();
    for p in &config.llm.providers {
        let api_key = match &p.api_key {
            None => None,
            Some(source) => {
                if secrets.get(source).is_none() {
                    anyhow::bail!(
                        "llm provider `{}`: its api_key {source} is not set (environment variable, or file in {})",
                        p.name,
                        config.secrets_dir.display()
                    );
                }
                let (secrets, source) = (secrets.clone(), source.clone());
                Some(llm::ApiKey::new(move || secrets.get(&source)))
            }
        };
        providers.push(llm::ProviderConfig {
            name: p.name.clone(),
            kind: match p.kind {
                config::LlmProviderKind::OpenAi => llm::ProviderKind::OpenAi,
                config::LlmProviderKind::Anthropic => llm::ProviderKind::Anthropic,
            },
            base_url: p.base_url.clone(),
            api_key,
            allow_private: p.allow_private,
            connect_timeout: p.connect_timeout,
            first_token_timeout: p.first_token_timeout,
            idle_timeout: p.idle_timeout,
            max_retries: p.max_retries,
        });
    }
    let models = config
        .llm
        .models
        .iter()
        .map(|m| llm::ModelConfig {
            id: m.id.clone(),
            provider: m.provider.clone(),
            upstream: m.upstream.clone(),
            tier: m.tier,
            context_window: m.context_window,
            max_output_tokens: m.max_output_tokens,
            fallbacks: m.fallbacks.clone(),
        })
        .collect();
    let models = llm::Llm::new(providers, models).context("invalid [llm] configuration")?;
    tracing::info!(providers = config.llm.providers.len(), models = config.llm.models.len(), "model providers");
    Ok(Arc::new(models))
}

/// The embedder configured in `[embeddings]`, one for the whole server.
///
/// `minilm` (the default) starts loading the offline model in the background and
/// returns at once: `maestro serve` never waits for it or dies without it. When its
/// files are missing the load fails with a warning naming `scripts/model.sh`, `/readyz`
/// reports the embedder `unavailable`, and every embedding call answers
/// `EmbedError::Unavailable` (memory and semantic search fail; everything else works).
/// `openai` checks the service's settings and that its key is available now; the key is
/// read again for each request.
pub fn open_embedder(config: &Config, env: &config::Env) -> anyhow::Result<Arc<dyn maestro_core::embed::Embedder>> {
    use anyhow::Context as _;
    match &config.embeddings {
        config::EmbeddingSettings::MiniLm { model_dir, batch_size, threads } => {
            let options = embed::MiniLmOptions { batch_size: *batch_size, threads: *threads };
            tracing::info!(provider = embed::PROVIDER, model = embed::MODEL, dir = %model_dir.display(), "embedder loading");
            Ok(Arc::new(embed::BackgroundMiniLm::spawn(model_dir.clone(), options)))
        }
        config::EmbeddingSettings::OpenAi(service) => {
            let api_key = match &service.api_key {
                None => None,
                Some(source) => {
                    let secrets = tools::SecretValues::new(env.clone(), config.secrets_dir.clone());
                    if secrets.get(source).is_none() {
                        anyhow::bail!(
                            "embeddings: its api_key {source} is not set (environment variable, or file in {})",
                            config.secrets_dir.display()
                        );
                    }
                    let source = source.clone();
                    Some(llm::ApiKey::new(move || secrets.get(&source)))
                }
            };
            let embedder = llm::embeddings::OpenAiEmbedder::new(llm::embeddings::EmbeddingsConfig {
                base_url: service.base_url.clone(),
                model: service.model.clone(),
                dimensions: service.dimensions,
                send_dimensions: service.send_dimensions,
                batch_size: service.batch_size,
                api_key,
                allow_private: service.allow_private,
                connect_timeout: llm::DEFAULT_CONNECT_TIMEOUT,
                timeout: service.timeout,
                max_retries: service.max_retries,
            })
            .context("invalid [embeddings] configuration")?;
            tracing::info!(provider = "openai", model = %service.model, dimensions = service.dimensions, "embedder");
            Ok(Arc::new(embedder))
        }
    }
}

/// The artifact use-cases over the configured blob store (`[artifacts]`: a directory,
/// or an S3-compatible bucket whose keys are read from their `env:`/`file:` sources
/// now; one that is missing is refused here, naming where it was looked for).
pub fn open_artifacts(
    config: &Config,
    env: &config::Env,
    rows: Arc<dyn maestro_core::ports::ArtifactStore>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<artifacts::Artifacts> {
    let blobs: Arc<dyn maestro_core::ports::BlobStore> = match &config.artifacts {
        config::ArtifactSettings::Disk { dir } => Arc::new(artifacts::disk::DiskBlobs::new(dir.clone())),
        config::ArtifactSettings::S3(s3) => {
            let secrets = tools::SecretValues::new(env.clone(), config.secrets_dir.clone());
            let read = |key: &str, source: &maestro_core::policy::SecretSource| {
                secrets.get(source).ok_or_else(|| {
                    anyhow::anyhow!(
                        "artifacts.{key}: {source} is not set (environment variable, or file in {})",
                        config.secrets_dir.display()
                    )
                })
            };
            Arc::new(artifacts::s3::S3Blobs::new(artifacts::s3::S3Options {
                bucket: s3.bucket.clone(),
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone(),
                allow_http: s3.allow_http,
                prefix: s3.prefix.clone(),
                access_key_id: read("access_key_id", &s3.access_key_id)?,
                secret_access_key: read("secret_access_key", &s3.secret_access_key)?,
            })?)
        }
    };
    tracing::info!(store = blobs.kind(), "artifacts");
    Ok(artifacts::Artifacts::new(blobs, rows, clock))
}

/// The full-text index of `[search]`, holding its writer (refused when another process
/// on this data directory holds it).
pub fn open_search(
    config: &Config,
    store: Arc<dyn maestro_core::SearchStore>,
    clock: Arc<dyn Clock>,
) -> anyhow::Result<search::FullText> {
    use anyhow::Context as _;
    let index = search::FullText::open(config.search.clone(), store, clock, search::Access::Write)
        .with_context(|| format!("cannot open the search index in {}", config.search.dir.display()))?;
    let status = index.status();
    tracing::info!(
        dir = %config.search.dir.display(),
        docs = status.docs,
        rebuild = index.needs_rebuild(),
        "search index"
    );
    Ok(index)
}

/// `maestro serve`: opens the store, bootstraps the first admin key, loads plugins and
/// policies, and serves HTTP until `shutdown` completes.
pub async fn serve(
    config: Config,
    env: &config::Env,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let store =
        open_store(&config).await.with_context(|| format!("cannot open the store at {}", config.store.describe()))?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let accounts = Accounts::new(store.clone(), clock.clone()).with_key_cache(config.key_cache);
    report_bootstrap(accounts.bootstrap(config.admin_key.as_ref()).await?);
    let credits = Arc::new(credits::Credits::new(store.clone(), clock.clone()));
    let jobs = Arc::new(jobs::Jobs::new(store.clone(), clock.clone()));
    let documents = Arc::new(documents::Documents::new(store.clone(), clock.clone()).with_signal(store.clone()));
    let embedder = open_embedder(&config, env)?;
    let memories =
        Arc::new(memory::Memories::new(store.clone(), embedder.clone(), clock.clone()).with_signal(store.clone()));
    let mut host_tools = tools::documents::tools(documents.clone());
    let (run_tools, more) = orchestrator::tools::tools();
    host_tools.extend(more);
    host_tools.extend(tools::memory::tools(memories.clone()));
    let tools = open_tools_with(&config, env, PluginLoading::Now, credits.clone(), host_tools).await?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let address = listener.local_addr()?;
    let stopping = tokio_util::sync::CancellationToken::new();
    let billing = match &config.billing {
        Some(settings) => Some(Arc::new(
            billing::Billing::new(store.clone(), store.clone(), clock.clone(), settings.clone())
                .context("cannot set up billing")?,
        )),
        None => None,
    };
    let hub = Arc::new(
        orchestrator::hub::EventHub::new(store.clone())
            .with_poll_interval(config.events_poll_interval)
            .with_signal(store.clone()),
    );
    let schedules = Arc::new(schedules::Schedules::new(
        schedules::SchedulePorts {
            store: store.clone(),
            runs: store.clone(),
            unit: store.clone(),
            keys: store.clone(),
            clock: clock.clone(),
            tools: tools.clone(),
        },
        config.schedules,
    ));
    // One set of model providers for runs and plugins' completions.
    let models = match tools.models() {
        Some(models) => models,
        None => open_models(&config, env)?,
    };
    let runner = orchestrator::Runner::new(
        orchestrator::RunnerPorts {
            runs: store.clone(),
            unit: store.clone(),
            tenants: store.clone(),
            clock: clock.clone(),
            tools: tools.clone(),
            credits: credits.clone(),
            models: models.clone(),
            prices: config.model_prices.clone(),
            hub: hub.clone(),
        },
        orchestrator::RunnerSettings {
            router_tier: config.llm.router_tier.unwrap_or(maestro_core::plugin::ModelTier::Small),
            wait_timeout: config.runs.wait_timeout,
            ..orchestrator::RunnerSettings::default()
        },
    );
    let embedder = open_embedder(&config, env)?;
    let memories = Arc::new(memory::Memories::new(store.clone(), embedder.clone(), clock.clone()));
    let search = open_search(&config, store.clone(), clock.clone())?;
    let recall = Arc::new(recall::Recall::new(
        recall::RecallPorts {
            memories: store.clone(),
            passages: store.clone(),
            embedder: embedder.clone(),
            search: Some(search.clone()),
            clock: clock.clone(),
        },
        config.memory.clone(),
    ));
    let distil = distil::Distil::new(
        distil::DistilPorts {
            runs: store.clone(),
            models: models.clone(),
            memories: memories.clone(),
            credits: credits.clone(),
            prices: config.model_prices.clone(),
            clock: clock.clone(),
        },
        config.memory.distil_max_facts,
    );
    let runner = runner.with_memory(Some(recall), config.memory.distil);
    let orchestrator = Arc::new(orchestrator::Orchestrator::new(
        store.clone(),
        store.clone(),
        clock.clone(),
        tools.clone(),
        hub.clone(),
    ));
    run_tools.bind(&orchestrator);
    let worker = jobs::Worker::new(
        store.clone(),
        clock.clone(),
        jobs::Registry::builtin(credits.clone(), store.clone(), clock.clone())
            .register(orchestrator::RUN_JOB, Arc::new(runner))
            .register(orchestrator::EXPIRE_WAIT_JOB, Arc::new(orchestrator::ExpireWaits(orchestrator.clone())))
            .register(maestro_core::schedule::FIRE_JOB, Arc::new(schedules::Fire(schedules.clone())))
            .register(schedules::TICK_JOB, Arc::new(schedules::Tick(schedules.clone())))
            .register(memory::REEMBED_JOB, Arc::new(memory::Reembed(memories.clone())))
            .register(distil::DISTIL_JOB, Arc::new(distil)),
        jobs::WorkerSettings::new(config.jobs.concurrency, config.jobs.lease, config.jobs.poll_interval),
    )
    .spawn(stopping.clone());
    // Memories embedded by another embedder than the configured one are re-embedded in
    // the background; a failure to enqueue only delays that to the next start.
    if let Err(err) = memories.enqueue_reembed(store.as_ref()).await {
        tracing::warn!(error = %err, "cannot enqueue the re-embedding of memories");
    }
    jobs.schedule_every(jobs::EXPIRE_HOLDS, EXPIRE_HOLDS_EVERY, stopping.clone());
    jobs.schedule_every(jobs::PRUNE, PRUNE_JOBS_EVERY, stopping.clone());
    jobs.schedule_every(schedules::TICK_JOB, config.schedules.tick, stopping.clone());
    let artifacts = open_artifacts(&config, env, store.clone(), clock.clone())?;
    let indexer = search.spawn_indexer(stopping.clone());
    // Vectors of messages and documents follow the same outbox, one position shared by
    // every replica.
    let passage_follower = passages::PassageFollower::new(
        store.clone(),
        store.clone(),
        embedder.clone(),
        passages::FollowerSettings { poll_interval: config.search.poll_interval, ..Default::default() },
    )
    .with_lease(store.clone())
    .spawn(stopping.clone());
    let state = http::AppState {
        accounts,
        metrics: Arc::default(),
        tools,
        credits,
        jobs,
        shutdown: stopping.clone(),
        billing,
        orchestrator,
        documents,
        schedules,
        artifacts,
        memories: Some(memories),
        search: Some(search.clone()),
        retrieval: Some(Arc::new(retrieval::Retrieval::new(
            Some(search.clone()),
            store.clone(),
            store.clone(),
            embedder.clone(),
            clock.clone(),
            config.search.half_life,
        ))),
        embedder,
    };
    let app = http::router(state, &http_settings(&config));
    tracing::info!(%address, store = %config.store.describe(), "maestro listening on http://{address} (MCP at /mcp)");
    let shutdown = async move {
        shutdown.await;
        stopping.cancel();
    };
    http::serve(listener, app, shutdown).await?;
    if let Err(err) = worker.await {
        tracing::error!(error = %err, "the job worker failed");
    }
    if let Err(err) = indexer.await {
        tracing::error!(error = %err, "the search indexer failed");
    }
    if let Err(err) = passage_follower.await {
        tracing::error!(error = %err, "the passage follower failed");
    }
    tracing::info!("maestro stopped");
    Ok(())
}

fn report_bootstrap(bootstrap: Bootstrap) {
    match bootstrap {
        Bootstrap::AlreadyDone => {}
        Bootstrap::RegisteredConfiguredKey(key) => {
            tracing::info!(key_id = %key.id, prefix = %key.display_prefix(), "registered MAESTRO_ADMIN_KEY as the platform-admin key");
        }
        Bootstrap::Generated(issued) => {
            tracing::info!(key_id = %issued.key.id, prefix = %issued.key.display_prefix(), "created the platform-admin key");
            // The token goes to stdout, never to the log.
            println!(
                "\nFirst start: created a platform-admin key. It is shown only this once:\n\n    {}\n\n\
                 Send it as `Authorization: Bearer <key>`. Keep it in a secret store; lose it and you\n\
                 can create another offline with `maestro key create --platform`.\n",
                issued.token.expose_secret()
            );
        }
    }
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(%err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(%err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested, draining requests");
}

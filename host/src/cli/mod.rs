//! The command line: `maestro serve`, `migrate`, offline administration of tenants and
//! keys against the same store the server uses, plugin authoring (`plugin new|build|
//! inspect`) and policy checks (`policy check|explain`).

pub mod chat;
mod index;
mod plugin;
mod policy;

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Parser, Subcommand};
use maestro_core::{ApiKey, KeyScope, Role, Tenant};
use serde_json::json;

use crate::accounts::{Accounts, expiry_after, validate_key_name};
use crate::config::{Config, Env, LogFormat, Overrides};

/// Maestro: a self-hosted agent platform.
#[derive(Debug, Parser)]
#[command(name = "maestro", version, about, propagate_version = true)]
pub struct Cli {
    /// TOML config file (default: none, or MAESTRO_CONFIG).
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Log format.
    #[arg(long, global = true, value_enum)]
    pub log_format: Option<LogFormatArg>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `--log-format` (the CLI's spelling of [`LogFormat`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// Human-readable lines.
    Human,
    /// One JSON object per line.
    Json,
}

impl From<LogFormatArg> for LogFormat {
    fn from(arg: LogFormatArg) -> Self {
        match arg {
            LogFormatArg::Human => LogFormat::Human,
            LogFormatArg::Json => LogFormat::Json,
        }
    }
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the server.
    Serve(ServeArgs),
    /// Serve MCP over stdin/stdout for one caller, for assistants that start a
    /// process (Claude Desktop, IDEs). Logs go to stderr.
    Mcp(McpArgs),
    /// Apply pending database migrations and exit.
    Migrate,
    /// Exit 0 if the server at the configured listen address answers /healthz (for
    /// container health checks; needs no curl).
    Healthcheck(HealthcheckArgs),
    /// Manage tenants.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// Manage API keys.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Credits: balances, grants, the ledger and its audit.
    #[command(subcommand)]
    Credits(CreditsCommand),
    /// Write, build and inspect plugins.
    #[command(subcommand)]
    Plugin(plugin::PluginCommand),
    /// Validate and explain policies.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
    /// Chat with a session's team on a running server: posts each line of stdin and
    /// streams the run (who speaks, tokens, tool calls, costs). Ctrl-C cancels the run.
    Chat(chat::ChatArgs),
    /// The full-text search index: status, rebuild.
    #[command(subcommand)]
    Index(index::IndexCommand),
}

/// `maestro serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on (overrides MAESTRO_LISTEN and the config file).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
}

/// `maestro mcp`.
#[derive(Debug, Args)]
pub struct McpArgs {
    /// A tenant API key to act as (or set MAESTRO_MCP_KEY, which keeps it out of the
    /// process list).
    #[arg(long, value_name = "KEY", conflicts_with_all = ["tenant", "role"])]
    pub key: Option<String>,
    /// Act as this tenant without a key: for a local operator who can already open
    /// the store. Needs --role.
    #[arg(long, requires = "role")]
    pub tenant: Option<String>,
    /// The role to act with (admin, member or viewer). Needs --tenant.
    #[arg(long, requires = "tenant")]
    pub role: Option<Role>,
}

/// `maestro credits …`.
#[derive(Debug, Subcommand)]
pub enum CreditsCommand {
    /// Show a tenant's balance.
    Balance {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Grant credits to a tenant (promotional credits).
    Grant {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Credits to grant (1 to 10^12).
        #[arg(long)]
        amount: i64,
        /// Makes the grant safe to retry: the same key never grants twice (default: a
        /// new key, printed so that you can retry with it).
        #[arg(long, value_name = "KEY")]
        idempotency_key: Option<String>,
        /// Why (shown in the ledger).
        #[arg(long, default_value = "grant")]
        memo: String,
    },
    /// List a tenant's transactions, oldest first.
    Ledger {
        /// Tenant name.
        #[arg(long)]
        tenant: String,
        /// Continue after this cursor.
        #[arg(long)]
        after: Option<String>,
        /// At most this many (1 to 500).
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Check the whole ledger: every transaction sums to zero and cached balances equal
    /// the sum of entries. Exits non-zero on any violation.
    Audit {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `maestro healthcheck`.
#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// Address to probe (default: the configured listen address; 0.0.0.0 means 127.0.0.1).
    #[arg(long, value_name = "ADDR")]
    pub address: Option<std::net::SocketAddr>,
}

/// `maestro tenant …`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant.
    Create {
        /// Name: lowercase letters, digits and `-`.
        name: String,
    },
    /// List tenants.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

/// `maestro key …`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create a key; its token is printed once on stdout.
    Create {
        /// Tenant the key belongs to.
        #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
        tenant: Option<String>,
        /// Role within the tenant: admin, member or viewer.
        #[arg(long, required_unless_present = "platform", conflicts_with = "platform")]
        role: Option<Role>,
        /// Create a platform-admin key (cross-tenant administration).
        #[arg(long)]
        platform: bool,
        /// Label shown in listings.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime, e.g. 30d, 12h, 90m (default: never expires).
        #[arg(long, value_name = "DURATION")]
        expires: Option<String>,
        /// Print JSON (including the token).
        #[arg(long)]
        json: bool,
    },
    /// List keys (never their tokens).
    List {
        /// Only this tenant's keys.
        #[arg(long)]
        tenant: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a key by id.
    Revoke {
        /// Key id (`key_…`).
        id: String,
    },
}

/// Runs a parsed command line with the environment read once by `main`.
pub fn run(cli: Cli, env: &Env) -> anyhow::Result<()> {
    let listen = match &cli.command {
        Command::Serve(args) => args.listen.clone(),
        _ => None,
    };
    let overrides = Overrides { listen, log_format: cli.log_format.map(LogFormat::from) };
    let config = Config::load(cli.config.as_deref(), env, &overrides)?;
    let filter = match &cli.command {
        Command::Serve(_) | Command::Mcp(_) => config.log_filter.clone(),
        // Offline commands print their results; only warnings belong on stderr.
        _ => env.get("MAESTRO_LOG").cloned().unwrap_or_else(|| "warn".to_owned()),
    };
    match &cli.command {
        Command::Healthcheck(args) => return healthcheck(args.address.unwrap_or(config.listen)),
        // Policy commands print their findings themselves and need no runtime.
        Command::Policy(command) => return policy::run(command, &config),
        _ => {}
    }
    crate::telemetry::init(&filter, config.log_format).map_err(anyhow::Error::msg)?;
    for name in &config.unknown_env {
        tracing::warn!(variable = %name, "unknown MAESTRO_ variable ignored");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("cannot start tokio")?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(_) => crate::serve(config, env, crate::shutdown_signal()).await,
            Command::Mcp(args) => mcp(&config, env, args).await,
            Command::Migrate => migrate(&config).await,
            Command::Healthcheck(_) | Command::Policy(_) => unreachable!("answered before the runtime starts"),
            Command::Plugin(command) => plugin::run(command, &config).await,
            Command::Tenant(command) => tenant(&open(&config).await?, command).await,
            Command::Key(command) => key(&open(&config).await?, command).await,
            Command::Credits(command) => credits(open_store(&config).await?, command).await,
            Command::Chat(args) => chat::run(&config, env, args).await,
            Command::Index(command) => index::run(command, &config).await,
        }
    })
}

/// A minimal HTTP/1.0 probe of `/healthz` with std only, so the runtime image needs no
/// HTTP client.
fn healthcheck(mut address: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::io::{Read as _, Write as _};
    if address.ip().is_unspecified() {
        address.set_ip(if address.is_ipv4() { [127, 0, 0, 1].into() } else { std::net::Ipv6Addr::LOCALHOST.into() });
    }
    let timeout = std::time::Duration::from_secs(3);
    let mut stream = std::net::TcpStream::connect_timeout(&address, timeout)
        .with_context(|| format!("cannot connect to {address}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut reply = Vec::new();
    stream.take(4096).read_to_end(&mut reply)?;
    let status_line = String::from_utf8_lossy(&reply).lines().next().unwrap_or_default().to_owned();
    if status_line.split_whitespace().nth(1) == Some("200") {
        println!("healthy: {address}");
        Ok(())
    } else {
        bail!("unhealthy: {address} answered `{status_line}`")
    }
}

/// `maestro mcp`: resolves the caller, loads plugins and policies, serves stdio.
async fn mcp(config: &Config, env: &Env, args: McpArgs) -> anyhow::Result<()> {
    let store = open_store(config).await?;
    // The process refuses its key on the very next request after a revocation. On
    // Postgres another process's revocation reaches the cache by a notice that may come
    // after that request, so the key is read from the store every time there.
    let key_cache = match store.backend() {
        "postgres" => crate::accounts::KeyCacheSettings { entries: 0, ..config.key_cache },
        _ => config.key_cache,
    };
    let accounts = Accounts::new(store.clone(), Arc::new(crate::accounts::SystemClock)).with_key_cache(key_cache);
    let key = args.key.or_else(|| env.get("MAESTRO_MCP_KEY").filter(|k| !k.trim().is_empty()).cloned());
    let (principal, key_check) = match (key, args.tenant, args.role) {
        (Some(key), None, None) => {
            let token = key.trim().to_owned();
            let caller = match accounts.authenticate(Some(&token)).await? {
                Ok(caller) => caller,
                Err(err) => bail!("cannot use that key: {err}"),
            };
            let Some(tenant_id) = caller.scope.tenant_id() else {
                bail!("platform-admin keys cannot use MCP; create a tenant key with `maestro key create`")
            };
            let tenant = accounts.tenant_name(tenant_id).await?;
            let principal = crate::tools::principal(&caller, Some(tenant.as_str()))?;
            let check = StdioKey { accounts: accounts.clone(), token, key_id: caller.key_id.as_str().to_owned() };
            (principal, Some(Arc::new(check) as Arc<dyn crate::mcp::KeyCheck>))
        }
        (None, Some(tenant), Some(role)) => {
            let tenant = accounts.tenant_named(&tenant).await?;
            let principal = crate::tools::Principal {
                tenant: tenant.name.to_string(),
                tenant_id: tenant.id,
                role,
                key_id: "local-operator".to_owned(),
            };
            (principal, None)
        }
        _ => bail!("give --key KEY (or MAESTRO_MCP_KEY), or --tenant T --role R"),
    };
    // Answer `initialize` at once; requests that need the plugins wait for them (a
    // first start compiles every component, which can take seconds).
    let clock: Arc<dyn maestro_core::Clock> = Arc::new(crate::accounts::SystemClock);
    let credits = Arc::new(crate::credits::Credits::new(store.clone(), clock.clone()));
    // Documents written by `maestro serve` replicas reach this process's subscribers too.
    let documents = Arc::new(crate::documents::Documents::new(store.clone(), clock.clone()).with_signal(store.clone()));
    let mut host_tools = crate::tools::documents::tools(documents.clone());
    let (run_tools, more) = crate::orchestrator::tools::tools();
    host_tools.extend(more);
    // The embedder loads in the background; memory calls made meanwhile wait for it.
    let embedder = crate::open_embedder(config, env)?;
    // Memories changed by `maestro serve` replicas reach this process's subscribers too.
    let memories =
        Arc::new(crate::memory::Memories::new(store.clone(), embedder, clock.clone()).with_signal(store.clone()));
    host_tools.extend(crate::tools::memory::tools(memories.clone()));
    let tools = crate::open_tools_with(config, env, crate::PluginLoading::Background, credits, host_tools).await?;
    // Runs started here are executed by the job workers of `maestro serve` on the same
    // store; their events reach this process by polling the store.
    let hub = Arc::new(crate::orchestrator::hub::EventHub::new(store.clone()));
    let orchestrator =
        Arc::new(crate::orchestrator::Orchestrator::new(store.clone(), store.clone(), clock, tools.clone(), hub));
    run_tools.bind(&orchestrator);
    tracing::info!(tenant = %principal.tenant, role = %principal.role, "serving MCP on stdio");
    let agents = crate::mcp::Agents { documents, runs: run_tools, memories: Some(memories) };
    crate::mcp::serve_stdio(crate::mcp::Mcp::with_agents(tools, config.mcp.names, agents), principal, key_check)
        .await?;
    drop(orchestrator);
    Ok(())
}

/// The key a `maestro mcp` process acts as, looked up again before every request (one
/// indexed read and a hash), so that revoking it or its expiry takes effect at once.
struct StdioKey {
    accounts: Accounts,
    token: String,
    key_id: String,
}

impl std::fmt::Debug for StdioKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StdioKey").field("key_id", &self.key_id).finish_non_exhaustive()
    }
}

#[async_trait::async_trait]
impl crate::mcp::KeyCheck for StdioKey {
    async fn check(&self) -> Result<(), String> {
        match self.accounts.authenticate(Some(&self.token)).await {
            Ok(Ok(caller)) if caller.key_id.as_str() == self.key_id => Ok(()),
            Ok(Ok(_)) => Err("the API key of this `maestro mcp` process changed; restart it".to_owned()),
            Ok(Err(err)) => Err(format!(
                "the API key of this `maestro mcp` process can no longer be used ({err}); restart it with a valid key"
            )),
            Err(err) => {
                tracing::error!(error = %err, "cannot check the API key");
                Err("cannot check the API key: the store is not available, try again later".to_owned())
            }
        }
    }
}

async fn credits(store: Arc<dyn maestro_core::Store>, command: CreditsCommand) -> anyhow::Result<()> {
    let accounts = &Accounts::new(store.clone(), Arc::new(crate::accounts::SystemClock));
    let credits = crate::credits::Credits::new(store, Arc::new(crate::accounts::SystemClock));
    match command {
        CreditsCommand::Balance { tenant, json } => {
            let tenant = accounts.tenant_named(&tenant).await?;
            let balance = credits.balance(&tenant.id).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &json!({ "tenant": tenant.name.to_string(), "available": balance.available, "held": balance.held })
                    )?
                );
            } else {
                println!("{}\tavailable {}\theld {}", tenant.name, balance.available, balance.held);
            }
        }
        CreditsCommand::Grant { tenant, amount, idempotency_key, memo } => {
            let tenant = accounts.tenant_named(&tenant).await?;
            let key =
                idempotency_key.unwrap_or_else(|| format!("cli-{}", hex::encode(crate::random::random_bytes::<12>())));
            let posted = credits.grant(&tenant.id, amount, &format!("grant:{key}"), &memo).await?;
            let verb = if posted.replayed { "already granted" } else { "granted" };
            println!(
                "{verb} {amount} credits to {} ({}; idempotency key {key}); available {}",
                tenant.name, posted.transaction.id, posted.balance_after.available
            );
        }
        CreditsCommand::Ledger { tenant, after, limit, json } => {
            let tenant = accounts.tenant_named(&tenant).await?;
            if !(1..=maestro_core::TransactionQuery::MAX_LIMIT).contains(&limit) {
                bail!("--limit must be between 1 and 500");
            }
            let query = maestro_core::TransactionQuery { after, limit, ..Default::default() };
            let page = credits.transactions(&tenant.id, &query).await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&json!({ "transactions": page.transactions, "next": page.next }))?
                );
            } else {
                print_table(
                    &["ID", "KIND", "AMOUNT", "MEMO", "POSTED"],
                    page.transactions.iter().map(|t| {
                        vec![
                            t.id.to_string(),
                            t.kind.as_str().to_owned(),
                            t.amount.to_string(),
                            t.memo.clone(),
                            time(t.created_at),
                        ]
                    }),
                );
                if let Some(next) = page.next {
                    println!("more: --after {next}");
                }
            }
        }
        CreditsCommand::Audit { json } => {
            let report = credits.audit().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                println!("{} transactions, {} entries", report.transactions, report.entries);
                for (tx, sum) in &report.imbalanced {
                    println!("IMBALANCED transaction {tx}: entries sum to {sum}");
                }
                for m in report.mismatches.iter().chain(&report.holds_mismatched) {
                    println!("MISMATCH {}: cached {}, entries sum to {}", m.account, m.cached, m.computed);
                }
                for (account, balance) in &report.negative {
                    println!("NEGATIVE {account}: {balance}");
                }
                for tx in &report.orphaned {
                    println!("ORPHANED entries of transaction {tx}: no such transaction");
                }
            }
            if !report.is_clean() {
                bail!("the ledger audit found violations");
            }
            if !json {
                println!("ledger audit: clean");
            }
        }
    }
    Ok(())
}

async fn open(config: &Config) -> anyhow::Result<Accounts> {
    Ok(Accounts::new(open_store(config).await?, Arc::new(crate::accounts::SystemClock)))
}

async fn open_store(config: &Config) -> anyhow::Result<Arc<dyn maestro_core::Store>> {
    crate::open_store(config).await.with_context(|| format!("cannot open the store at {}", config.store.describe()))
}

async fn migrate(config: &Config) -> anyhow::Result<()> {
    open(config).await?;
    println!(
        "{} is up to date (latest migration: {})",
        config.store.describe(),
        crate::storage::latest_migration(&config.store)
    );
    Ok(())
}

async fn tenant(accounts: &Accounts, command: TenantCommand) -> anyhow::Result<()> {
    match command {
        TenantCommand::Create { name } => {
            let tenant = accounts.create_tenant(&name).await?;
            println!("{}\t{}", tenant.id, tenant.name);
        }
        TenantCommand::List { json } => {
            let tenants = accounts.list_tenants().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&tenants)?);
            } else {
                print_table(
                    &["ID", "NAME", "CREATED"],
                    tenants.iter().map(|t| vec![t.id.to_string(), t.name.to_string(), time(t.created_at)]),
                );
            }
        }
    }
    Ok(())
}

async fn key(accounts: &Accounts, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { tenant, role, platform, name, expires, json } => {
            let name = validate_key_name(&name).map_err(anyhow::Error::msg)?;
            let expires_at =
                expires.as_deref().map(|e| expiry_after(accounts.now(), e)).transpose().map_err(anyhow::Error::msg)?;
            let (scope, tenant_name) = match (platform, tenant, role) {
                (true, _, _) => (KeyScope::Platform, "-".to_owned()),
                (false, Some(tenant), Some(role)) => {
                    let tenant = accounts.tenant_named(&tenant).await?;
                    (KeyScope::Tenant { tenant_id: tenant.id, role }, tenant.name.to_string())
                }
                _ => bail!("give --tenant and --role, or --platform"),
            };
            let issued = accounts.create_key(scope, name, expires_at).await?;
            if json {
                let mut value = key_json(&issued.key, &tenant_name, accounts.now());
                value["token"] = json!(issued.token.expose_secret());
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                eprintln!(
                    "created key {} ({}, {}, expires {}); the token below is shown only this once:",
                    issued.key.id,
                    tenant_name,
                    role_name(&issued.key.scope),
                    issued.key.expires_at.map_or_else(|| "never".to_owned(), time),
                );
                println!("{}", issued.token.expose_secret());
            }
        }
        KeyCommand::List { tenant, json } => {
            let tenants = accounts.list_tenants().await?;
            let filter = match tenant {
                Some(name) => Some(accounts.tenant_named(&name).await?.id),
                None => None,
            };
            let keys = accounts.list_keys(filter.as_ref()).await?;
            let now = accounts.now();
            let tenant_of = |key: &ApiKey| tenant_name(&tenants, &key.scope);
            if json {
                let values: Vec<_> = keys.iter().map(|k| key_json(k, &tenant_of(k), now)).collect();
                println!("{}", serde_json::to_string_pretty(&values)?);
            } else {
                print_table(
                    &["ID", "TENANT", "ROLE", "NAME", "PREFIX", "STATUS", "CREATED", "EXPIRES"],
                    keys.iter().map(|k| {
                        vec![
                            k.id.to_string(),
                            tenant_of(k),
                            role_name(&k.scope).to_owned(),
                            k.name.clone(),
                            k.display_prefix(),
                            status(k, now).to_owned(),
                            time(k.created_at),
                            k.expires_at.map_or_else(|| "never".to_owned(), time),
                        ]
                    }),
                );
            }
        }
        KeyCommand::Revoke { id } => {
            let key = accounts.revoke_key(&id, None).await?;
            let at = key.revoked_at.map_or_else(String::new, time);
            println!("revoked {} at {at}", key.id);
        }
    }
    Ok(())
}

fn key_json(key: &ApiKey, tenant: &str, now: DateTime<Utc>) -> serde_json::Value {
    json!({
        "id": key.id,
        "tenant": tenant,
        "tenant_id": key.scope.tenant_id(),
        "role": role_name(&key.scope),
        "name": key.name,
        "prefix": key.display_prefix(),
        "status": status(key, now),
        "created_at": key.created_at,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
    })
}

fn tenant_name(tenants: &[Tenant], scope: &KeyScope) -> String {
    match scope.tenant_id() {
        None => "-".to_owned(),
        Some(id) => tenants.iter().find(|t| t.id == *id).map_or_else(|| id.to_string(), |t| t.name.to_string()),
    }
}

fn role_name(scope: &KeyScope) -> &'static str {
    match scope {
        KeyScope::Platform => "platform",
        KeyScope::Tenant { role, .. } => role.as_str(),
    }
}

fn status(key: &ApiKey, now: DateTime<Utc>) -> &'static str {
    if key.revoked_at.is_some() {
        "revoked"
    } else if key.expires_at.is_some_and(|at| at <= now) {
        "expired"
    } else {
        "active"
    }
}

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn print_table(header: &[&str], rows: impl Iterator<Item = Vec<String>>) {
    let rows: Vec<Vec<String>> = rows.collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let padded: Vec<String> = cells.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", padded.join("  ").trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

//! Tools and personas for a caller: what policy lets it see, and calls run under the
//! caller's policy, paid for in credits. Used by the HTTP API, MCP and (next) the
//! orchestrator, all through one pipeline ([`Tools::call`], [`Tools::render_persona`]):
//!
//! authorise (`authorize.rs`) → rate (`rate.rs`) → admit (calls in flight per tenant,
//! `inflight.rs`) → charge (`charge.rs`) → run (the [`ToolExecutor`] port; the sandbox
//! implements it) → settle (refund a host-side failure, meter, log).
//!
//! Metering: a call's price (its grant's `credits`) is debited from the tenant's wallet
//! atomically with the balance check, before the plugin runs; a tenant that cannot pay
//! gets [`CallError::InsufficientCredits`] and nothing runs. Every outcome in which the
//! plugin ran is charged — success, its own errors, timeout, fuel, memory, trap, network
//! denial, oversized output, and a cancellation by the caller — because the sandbox did
//! the work. Only a host-side failure ([`Failure::is_host_side`]: no instance slot free,
//! the sandbox runtime failed) is refunded, exactly once.
//!
//! Every way a call can fail has one stable [`Code`] ([`CallError::code`],
//! [`Failure::code`]): the one table HTTP and MCP answer with.

mod authorize;
mod charge;
pub mod documents;
pub mod host;
mod inflight;
pub mod memory;
mod network;
mod platform;
mod rate;
mod resources;
mod secrets;

use std::sync::Arc;
use std::time::Duration;

use maestro_core::call::{Code, Failure, Job, Metering, Outcome, Replay, RunLimits, ToolExecutor};
use maestro_core::plugin::{PersonaSpec, Prompt, Rendered, ToolOutput, ToolSpec};
use maestro_core::policy::{Grant, PolicySet, Subject};
use maestro_core::run::EventBody;
use maestro_core::{Caller, KeyScope, Role, TenantId};

pub use host::{HostCall, HostResult, HostTool, Origin};
pub use inflight::DEFAULT_MAX_CALLS_IN_FLIGHT_PER_TENANT;
pub use maestro_core::call::Observe;
pub use secrets::SecretValues;

use crate::plugins::{Catalog, InstalledPlugin, PluginRegistry};
use crate::policy::PolicyStore;
use crate::sandbox::LoadedPlugin;
use crate::sandbox::net::NetPolicy;

/// The executor calls run on: the sandbox, or a stand-in.
pub type Executor = dyn ToolExecutor<Plugin = LoadedPlugin, Network = NetPolicy>;

/// Who is asking, in the terms policies use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// Tenant name.
    pub tenant: String,
    /// Tenant id (whose wallet pays).
    pub tenant_id: TenantId,
    /// Role within the tenant.
    pub role: Role,
    /// The key's id.
    pub key_id: String,
}

impl Principal {
    fn subject(&self) -> Subject<'_> {
        Subject { tenant: &self.tenant, role: self.role, key_id: &self.key_id }
    }
}

/// A tool this caller may use.
#[derive(Debug, Clone)]
pub struct VisibleTool {
    /// `plugin.tool`.
    pub name: String,
    /// The plugin; `None` for a tool built into the host (see [`host`]).
    pub plugin: Option<Arc<InstalledPlugin>>,
    /// Its spec.
    pub spec: ToolSpec,
    /// Credits one call costs.
    pub credits: u64,
}

impl VisibleTool {
    /// Who provides it: the plugin's name, or the built-in tool's area (`documents`).
    pub fn provider(&self) -> &str {
        match &self.plugin {
            Some(plugin) => &plugin.manifest.name,
            None => self.name.split_once('.').map_or(self.name.as_str(), |(area, _)| area),
        }
    }
}

/// A persona this caller may use.
#[derive(Debug, Clone)]
pub struct VisiblePersona {
    /// `plugin.persona`.
    pub name: String,
    /// The plugin.
    pub plugin: Arc<InstalledPlugin>,
    /// Its spec.
    pub spec: PersonaSpec,
}

/// Why a call was not run.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No such tool is loaded.
    #[error("no tool named `{0}`")]
    UnknownTool(String),
    /// No such persona is loaded.
    #[error("no persona named `{0}`")]
    UnknownPersona(String),
    /// Platform keys administer; they do not call tools.
    #[error("platform-admin keys cannot call tools; use a tenant key")]
    NotATenant,
    /// Policy denies it.
    #[error("{0}")]
    Denied(String),
    /// The grant's rate is exhausted.
    #[error("rate limit of {limit} reached; retry in {retry_after:?}")]
    RateLimited {
        /// The rate, e.g. `60/60s`.
        limit: String,
        /// When a call will be admitted again.
        retry_after: Duration,
    },
    /// The tenant already has as many calls running as it may.
    #[error("{limit} calls of this tenant are already running; retry when one has finished")]
    TooManyCallsInFlight {
        /// The per-tenant limit.
        limit: usize,
    },
    /// The arguments are not a JSON object.
    #[error("arguments must be a JSON object")]
    ArgumentsNotObject,
    /// The arguments do not fit the persona's prompt arguments.
    #[error("invalid arguments: {0}")]
    InvalidArguments(String),
    /// A secret the grant injects is not available on this host (its name is logged;
    /// the caller's message is generic, like every 5xx).
    #[error("a secret this call needs is not available on this host")]
    SecretMissing(String),
    /// The tenant's credits do not cover the price; nothing ran.
    #[error("insufficient credits: the call costs {price}, the balance is {available}")]
    InsufficientCredits {
        /// Credits available.
        available: i64,
        /// The call's price.
        price: u64,
    },
    /// The ledger could not be reached; nothing ran (the detail is in the log).
    #[error("the credit ledger is not available, try again later")]
    LedgerUnavailable,
    /// No plugin serves this resource to the caller (none serves it, or policy does not
    /// let the caller read it: the two look alike).
    #[error("no resource `{0}`")]
    UnknownResource(String),
}

impl CallError {
    /// The stable code callers see (the one table: HTTP status and MCP treatment).
    pub fn code(&self) -> Code {
        match self {
            CallError::UnknownTool(_) | CallError::UnknownPersona(_) | CallError::UnknownResource(_) => Code::NotFound,
            CallError::NotATenant | CallError::Denied(_) => Code::Forbidden,
            CallError::RateLimited { .. } => Code::RateLimited,
            CallError::TooManyCallsInFlight { .. } => Code::TooManyCallsInFlight,
            CallError::ArgumentsNotObject | CallError::InvalidArguments(_) => Code::InvalidRequest,
            CallError::InsufficientCredits { .. } => Code::InsufficientCredits,
            CallError::SecretMissing(_) | CallError::LedgerUnavailable => Code::Unavailable,
        }
    }

    /// When the caller may try again, if waiting helps (whole seconds, rounded up).
    pub fn retry_after_secs(&self) -> Option<u64> {
        match self {
            CallError::RateLimited { retry_after, .. } => {
                Some(retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0))
            }
            CallError::TooManyCallsInFlight { .. } => Some(1),
            _ => None,
        }
    }
}

/// A finished call (the plugin ran, or the host failed to run it) with what it cost.
#[derive(Debug)]
pub struct Call<T> {
    /// The result or typed failure, with metering (`credits_charged` included).
    pub outcome: Outcome<T>,
    /// Credits the policy prices the call at.
    pub credits: u64,
    /// Credits actually charged (0 when free or refunded), with the model completions
    /// the call asked for and got answered before it ended.
    pub charged: u64,
    /// Run events a built-in tool asks its caller to record with the result (empty for
    /// plugin tools and personas).
    pub events: Vec<EventBody>,
}

/// A finished tool call.
pub type ToolCall = Call<ToolOutput>;

/// A finished persona rendering: the prompt (the plugin's rendering, or the persona's
/// system prompt when the plugin has no renderer for it) and the messages after it.
pub type PersonaRendering = Call<Prompt>;

/// The tool use-cases.
pub struct Tools {
    registry: Arc<PluginRegistry>,
    policies: Arc<PolicyStore>,
    secrets: SecretValues,
    rates: rate::RateLimiter,
    in_flight: Arc<inflight::InFlight>,
    charger: charge::Charger,
    executor: Arc<Executor>,
    host_tools: Vec<Arc<dyn HostTool>>,
    models: Option<Arc<platform::Models>>,
}

impl std::fmt::Debug for Tools {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tools")
            .field("registry", &self.registry)
            .field("in_flight", &self.in_flight)
            .field("charger", &self.charger)
            .finish_non_exhaustive()
    }
}

/// What the pipeline runs: a tool or a persona.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tool,
    Persona,
    Resource,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Tool => "tool",
            Kind::Persona => "persona",
            Kind::Resource => "resource",
        }
    }
}

/// What an executor produces for one kind of work.
trait Work: Sized + Send + 'static {
    const KIND: Kind;
    fn execute<'a>(
        executor: &'a Executor,
        plugin: &'a LoadedPlugin,
        job: Job<NetPolicy>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome<Self>> + Send + 'a>>;
}

impl Work for ToolOutput {
    const KIND: Kind = Kind::Tool;
    fn execute<'a>(
        executor: &'a Executor,
        plugin: &'a LoadedPlugin,
        job: Job<NetPolicy>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome<Self>> + Send + 'a>> {
        executor.call_tool(plugin, job)
    }
}

impl Work for Rendered {
    const KIND: Kind = Kind::Persona;
    fn execute<'a>(
        executor: &'a Executor,
        plugin: &'a LoadedPlugin,
        job: Job<NetPolicy>,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Outcome<Self>> + Send + 'a>> {
        executor.render_persona(plugin, job)
    }
}

impl Tools {
    /// Builds the use-cases; calls run in the registry's sandbox.
    pub fn new(registry: Arc<PluginRegistry>, policies: Arc<PolicyStore>, secrets: SecretValues) -> Self {
        let executor: Arc<Executor> = registry.sandbox().clone();
        Self {
            registry,
            policies,
            secrets,
            rates: rate::RateLimiter::default(),
            in_flight: Arc::default(),
            charger: charge::Charger::default(),
            executor,
            host_tools: Vec::new(),
            models: None,
        }
    }

    /// Offers `tools`, built into the host, next to the plugins' tools (same policy,
    /// same pipeline). A name given twice keeps the first.
    #[must_use]
    pub fn with_host_tools(mut self, tools: Vec<Arc<dyn HostTool>>) -> Self {
        for tool in tools {
            if !self.host_tools.iter().any(|t| t.name() == tool.name()) {
                self.host_tools.push(tool);
            }
        }
        self
    }

    /// The built-in tools (whatever the caller may see).
    pub fn host_tools(&self) -> &[Arc<dyn HostTool>] {
        &self.host_tools
    }

    /// The context blocks the built-in tools give models working in `session` for the
    /// principal (see [`HostTool::context`]), in registration order.
    pub async fn host_context(&self, principal: &Principal, session: &maestro_core::run::SessionId) -> Vec<String> {
        let mut blocks = Vec::new();
        for tool in &self.host_tools {
            blocks.extend(tool.context(principal, session).await);
        }
        blocks
    }

    fn host_tool(&self, name: &str) -> Option<&Arc<dyn HostTool>> {
        self.host_tools.iter().find(|t| t.name() == name)
    }

    /// Lets tools that policy grants model access (`model_tiers`) ask `models` for
    /// completions, priced by `prices` and paid from the caller's credits.
    #[must_use]
    pub fn with_models(
        mut self,
        models: Arc<dyn maestro_core::llm::ModelProvider>,
        prices: Vec<crate::config::ModelPrice>,
    ) -> Self {
        self.models = Some(Arc::new(platform::Models::new(models, prices)));
        self
    }

    /// The model providers plugins' completions use, if any.
    pub fn models(&self) -> Option<Arc<dyn maestro_core::llm::ModelProvider>> {
        self.models.as_ref().map(|m| m.provider.clone())
    }

    /// Meters calls on `credits` (without it, as in some tests, calls are free).
    #[must_use]
    pub fn with_credits(mut self, credits: Arc<crate::credits::Credits>) -> Self {
        self.charger = charge::Charger::new(credits);
        self
    }

    /// Lets each tenant run at most `limit` calls (tools and personas together) at once;
    /// more are refused with [`CallError::TooManyCallsInFlight`]. The default is
    /// [`DEFAULT_MAX_CALLS_IN_FLIGHT_PER_TENANT`].
    #[must_use]
    pub fn with_tenant_limit(mut self, limit: usize) -> Self {
        self.in_flight = Arc::new(inflight::InFlight::with_limit(limit));
        self
    }

    /// Runs calls on `executor` instead of the registry's sandbox.
    #[must_use]
    pub fn with_executor(mut self, executor: Arc<Executor>) -> Self {
        self.executor = executor;
        self
    }

    /// Tool calls and persona renderings running right now.
    pub fn calls_in_flight(&self) -> usize {
        self.in_flight.total()
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The policy store.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// The current catalog (for administrators).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.registry.catalog()
    }

    /// The current policies.
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.policies.current()
    }

    /// Runs a tool for the principal under its policy. `Err`: refused before running
    /// (nothing charged); `Ok`: ran (or the host failed to run it, refunded), with the
    /// outcome.
    pub async fn call(
        &self,
        principal: &Principal,
        tool: &str,
        arguments: serde_json::Value,
        observe: Observe,
    ) -> Result<ToolCall, CallError> {
        self.call_in(principal, tool, arguments, observe, None).await
    }

    /// [`Tools::call`] from a place in a run (`origin`): built-in tools learn where they
    /// are called from (a document's author is the persona in its step) and may return
    /// events for the run ([`Call::events`]); plugin tools ignore it.
    pub async fn call_in(
        &self,
        principal: &Principal,
        tool: &str,
        arguments: serde_json::Value,
        observe: Observe,
        origin: Option<&Origin>,
    ) -> Result<ToolCall, CallError> {
        if let Some(host) = self.host_tool(tool).cloned() {
            let grant = self.authorize(principal, tool)?;
            if !arguments.is_object() {
                return Err(CallError::ArgumentsNotObject);
            }
            let call = HostCall { principal: principal.clone(), arguments, origin: origin.cloned(), observe };
            let bytes_in = call.arguments.to_string().len();
            let execute = |()| async move {
                let started = std::time::Instant::now();
                let HostResult { outcome, events } = host.call(call).await;
                let bytes_out = outcome.as_ref().map_or(0, ToolOutput::json_len);
                let metering = Metering { duration: started.elapsed(), bytes_in, bytes_out, ..Metering::default() };
                (Outcome { result: outcome, metering }, events, 0)
            };
            return self.stages(principal, tool, Kind::Tool, &grant, || Ok(()), execute).await;
        }
        let catalog = self.registry.catalog();
        let (plugin, _) = catalog.tool(tool).ok_or_else(|| CallError::UnknownTool(truncate(tool)))?;
        let plugin = plugin.clone();
        let grant = self.authorize(principal, tool)?;
        if !arguments.is_object() {
            return Err(CallError::ArgumentsNotObject);
        }
        self.run::<ToolOutput>(principal, tool, &plugin, &grant, arguments, observe).await
    }

    /// Renders a persona's prompt for the principal from `arguments` (a JSON object of
    /// the persona's prompt arguments), under the persona's grant: the same pipeline as
    /// a tool call (rate, calls in flight, credits). When the plugin has no renderer for
    /// it, the persona's system prompt is the prompt.
    pub async fn render_persona(
        &self,
        principal: &Principal,
        persona: &str,
        arguments: &serde_json::Value,
        observe: Observe,
    ) -> Result<PersonaRendering, CallError> {
        let catalog = self.registry.catalog();
        let (plugin, spec) = catalog
            .personas()
            .find(|(name, _, _)| name == persona)
            .map(|(_, plugin, spec)| (plugin.clone(), spec.clone()))
            .ok_or_else(|| CallError::UnknownPersona(truncate(persona)))?;
        let grant = self.authorize(principal, persona)?;
        authorize::persona_arguments(&spec, arguments)?;
        let call = self.run::<Rendered>(principal, persona, &plugin, &grant, arguments.clone(), observe).await?;
        let result = call.outcome.result.map(|rendered| Prompt {
            system: rendered.system.unwrap_or(spec.system_prompt),
            messages: rendered.messages,
        });
        Ok(Call {
            outcome: Outcome { result, metering: call.outcome.metering },
            credits: call.credits,
            charged: call.charged,
            events: call.events,
        })
    }

    /// The pipeline after authorisation for a plugin's tool or persona: its network
    /// rules, then the shared stages around the sandbox.
    async fn run<T: Work>(
        &self,
        principal: &Principal,
        name: &str,
        plugin: &InstalledPlugin,
        grant: &Grant,
        arguments: serde_json::Value,
        observe: Observe,
    ) -> Result<Call<T>, CallError> {
        let network = || {
            match T::KIND {
            Kind::Tool => self.network(grant).inspect_err(|err| {
                if let CallError::SecretMissing(secret) = err {
                    tracing::error!(secret, tenant = %principal.tenant, name, "a call needs a secret this host does not have");
                }
            }),
            // Personas render text; they get no network.
            Kind::Persona | Kind::Resource => Ok(NetPolicy::deny_all()),
        }
        };
        let execute = |network: NetPolicy| async move {
            // Completions a tool asks for are paid on top of its price (personas get none).
            let spent = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let models = match (T::KIND, observe.client_models.clone(), &self.models) {
                (Kind::Persona | Kind::Resource, ..) | (Kind::Tool, None, None) => None,
                (Kind::Tool, Some(client), _) => {
                    Some(Arc::new(platform::ClientPlatform::new(client, grant.models.clone(), name))
                        as Arc<dyn maestro_core::call::Platform>)
                }
                (Kind::Tool, None, Some(models)) => Some(Arc::new(platform::CallPlatform::new(
                    models.clone(),
                    self.charger.credits().cloned(),
                    (principal.tenant_id.clone(), grant.models.clone()),
                    name,
                    spent.clone(),
                    observe.credit_budget,
                )) as Arc<dyn maestro_core::call::Platform>),
            };
            // A tool's questions replay the answers it was given before anyone is asked;
            // one left open ends the call with needs-input (nothing charged for it).
            let replay = (T::KIND == Kind::Tool).then(|| {
                let joined = platform::Joined::new(models, observe.client_user.clone());
                Arc::new(
                    Replay::new(Some(Arc::new(joined)), observe.answers.clone())
                        .with_completions(observe.completions.clone()),
                )
            });
            let platform = replay.clone().map(|r| r as Arc<dyn maestro_core::call::Platform>);
            let job = Job {
                item: name.split_once('.').map_or(name, |(_, item)| item).to_owned(),
                arguments: arguments.to_string(),
                limits: limits(grant),
                network: Arc::new(network),
                config_json: Arc::from(
                    grant.config_for(&plugin.manifest.name).map_or_else(|| "{}".to_owned(), |c| c.to_string()),
                ),
                caller: Arc::from(principal.tenant.as_str()),
                observe,
                platform,
            };
            let mut outcome = T::execute(self.executor.as_ref(), &plugin.loaded, job).await;
            if let Some(replay) = &replay {
                replay.settle(&mut outcome);
            }
            (outcome, Vec::new(), spent.load(std::sync::atomic::Ordering::SeqCst))
        };
        self.stages(principal, name, T::KIND, grant, network, execute).await
    }

    /// The stages every call passes after authorisation, whoever runs it: rate →
    /// `prepare` (what the executor needs, e.g. network rules; may refuse) → admit
    /// (calls in flight) → charge → `execute` → settle (refund a host-side failure,
    /// meter, log). `execute` gives the outcome, the run events a built-in tool asks to
    /// record, and the credits its completions cost beyond the call's price.
    async fn stages<T, P, F, Fut>(
        &self,
        principal: &Principal,
        name: &str,
        kind: Kind,
        grant: &Grant,
        prepare: impl FnOnce() -> Result<P, CallError>,
        execute: F,
    ) -> Result<Call<T>, CallError>
    where
        F: FnOnce(P) -> Fut,
        Fut: std::future::Future<Output = (Outcome<T>, Vec<EventBody>, u64)>,
    {
        if let Some(rate) = grant.rate {
            self.rates.admit(&grant.rule.name, &principal.key_id, rate.calls, rate.per).map_err(|retry_after| {
                CallError::RateLimited { limit: format!("{}/{}s", rate.calls, rate.per.as_secs()), retry_after }
            })?;
        }
        let prepared = prepare()?;
        let _admitted = self
            .in_flight
            .admit(&principal.tenant)
            .ok_or(CallError::TooManyCallsInFlight { limit: self.in_flight.limit() })?;
        let charge = self.charger.charge(principal, grant.credits, name).await?;
        let (mut outcome, events, spent) = execute(prepared).await;
        let charged = match (charge, &outcome.result) {
            // The host failed, or the tool waits for an answer and will be called again.
            (Some(charge), Err(failure)) if failure.is_host_side() || matches!(failure, Failure::NeedsInput { .. }) => {
                self.charger.refund(principal, charge).await;
                0
            }
            (Some(charge), _) => charge.price(),
            (None, _) => 0,
        };
        // Completions a tool asked for are paid on top of its price.
        let charged = charged.saturating_add(spent);
        outcome.metering.credits_charged = charged;
        let kind = kind.as_str();
        if let Err(Failure::Unavailable { detail }) = &outcome.result {
            tracing::error!(tenant = %principal.tenant, kind, name, detail, "the host could not run a call");
        }
        tracing::info!(
            tenant = %principal.tenant,
            kind,
            name,
            rule = %grant.rule.name,
            duration_us = outcome.metering.duration.as_micros(),
            fuel = outcome.metering.fuel,
            credits = charged,
            outcome = outcome.result.as_ref().map_or_else(|f| f.kind(), |_| "ok"),
            "call"
        );
        Ok(Call { outcome, credits: grant.credits, charged, events })
    }
}

fn truncate(name: &str) -> String {
    name.chars().take(128).collect()
}

fn limits(grant: &Grant) -> RunLimits {
    let l = &grant.limits;
    RunLimits {
        fuel: l.fuel,
        timeout: l.timeout,
        memory_bytes: usize::try_from(l.memory_bytes).unwrap_or(usize::MAX),
        output_bytes: usize::try_from(l.output_bytes).unwrap_or(usize::MAX),
    }
}

/// The principal behind a caller, or why it has none.
pub fn principal(caller: &Caller, tenant_name: Option<&str>) -> Result<Principal, CallError> {
    match (&caller.scope, tenant_name) {
        (KeyScope::Tenant { tenant_id, role }, Some(tenant)) => Ok(Principal {
            tenant: tenant.to_owned(),
            tenant_id: tenant_id.clone(),
            role: *role,
            key_id: caller.key_id.to_string(),
        }),
        _ => Err(CallError::NotATenant),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_map_to_their_codes_and_retry_hints() {
        let rate = CallError::RateLimited { limit: "1/60s".into(), retry_after: Duration::from_millis(1500) };
        assert_eq!((rate.code(), rate.retry_after_secs()), (Code::RateLimited, Some(2)));
        let busy = CallError::TooManyCallsInFlight { limit: 4 };
        assert_eq!(
            (busy.code(), busy.code().http_status(), busy.retry_after_secs()),
            (Code::TooManyCallsInFlight, 429, Some(1))
        );
        assert_eq!(CallError::UnknownPersona("x".into()).code(), Code::NotFound);
        assert_eq!(CallError::InvalidArguments("x".into()).code(), Code::InvalidRequest);
        assert_eq!(CallError::LedgerUnavailable.code(), Code::Unavailable);
    }

    #[test]
    fn the_ledger_error_names_no_backend() {
        assert_eq!(CallError::LedgerUnavailable.to_string(), "the credit ledger is not available, try again later");
    }
}

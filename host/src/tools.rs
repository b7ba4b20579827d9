//! Tools and personas for a caller: what policy lets it see, and calls run in the
//! sandbox under the caller's policy, paid for in credits. Used by the HTTP API and MCP.
//!
//! Metering: a call's price (its grant's `credits`) is debited from the tenant's wallet
//! atomically with the balance check, before the plugin runs; a tenant that cannot pay
//! gets [`CallError::InsufficientCredits`] and nothing runs. Every outcome in which the
//! plugin ran is charged — success, its own errors, timeout, fuel, memory, trap, network
//! denial, oversized output, and a cancellation by the caller — because the sandbox did
//! the work. Only a host-side failure ([`crate::sandbox::Failure::is_host_side`]: no
//! instance slot free, the sandbox runtime failed) is refunded, exactly once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use maestro_core::plugin::{PersonaSpec, ToolSpec};
use maestro_core::policy::{Decision, Grant, PolicySet, SecretSource, Subject};
use maestro_core::{Caller, KeyScope, Role, TenantId};

use crate::config::Env;
use crate::outbound::NetPolicy;
use crate::plugins::{Catalog, InstalledPlugin, PluginRegistry};
use crate::policy::PolicyStore;
use crate::sandbox::{CallContext, CallLimits, CallOutcome, CancelToken, LogSink, ProgressSink};

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
    /// The plugin.
    pub plugin: Arc<InstalledPlugin>,
    /// Its spec.
    pub spec: ToolSpec,
    /// Credits one call costs.
    pub credits: u64,
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
    /// Platform keys administer; they do not call tools.
    #[error("platform-admin keys cannot call tools; use a tenant key")]
    NotATenant,
    /// Policy denies it.
    #[error("{0}")]
    Denied(String),
    /// The grant's rate is exhausted.
    #[error("rate limit of {limit} reached; retry in {retry_after:?}")]
    RateLimited {
        /// The rate, e.g. `60/min`.
        limit: String,
        /// When a call will be admitted again.
        retry_after: Duration,
    },
    /// The arguments are not a JSON object.
    #[error("arguments must be a JSON object")]
    ArgumentsNotObject,
    /// A secret the grant injects is not available on this host.
    #[error("secret `{0}` is not available on this host")]
    SecretMissing(String),
    /// The tenant's credits do not cover the price; nothing ran.
    #[error("insufficient credits: the call costs {price}, the balance is {available}")]
    InsufficientCredits {
        /// Credits available.
        available: i64,
        /// The call's price.
        price: u64,
    },
    /// The ledger could not be reached; nothing ran.
    #[error("the credit ledger is not available: {0}")]
    LedgerUnavailable(String),
}

/// How the caller follows a call: cancellation, and where progress and plugin log lines
/// go while it runs.
#[derive(Clone, Default)]
pub struct Observe {
    /// Cancels the call (dropping the call's future cancels it too).
    pub cancel: CancelToken,
    /// Receives progress reports.
    pub progress: Option<ProgressSink>,
    /// Receives the plugin's log lines.
    pub log: Option<LogSink>,
}

impl std::fmt::Debug for Observe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observe")
            .field("cancelled", &self.cancel.is_cancelled())
            .field("progress", &self.progress.is_some())
            .field("log", &self.log.is_some())
            .finish()
    }
}

/// A finished call with what it cost.
#[derive(Debug)]
pub struct ToolCall {
    /// The sandbox outcome (result or typed failure, with metering).
    pub outcome: CallOutcome,
    /// Credits the policy prices the call at.
    pub credits: u64,
    /// Credits actually charged (0 when free or refunded).
    pub charged: u64,
}

/// The tool use-cases.
#[derive(Debug)]
pub struct Tools {
    registry: Arc<PluginRegistry>,
    policies: Arc<PolicyStore>,
    secrets: SecretValues,
    rates: RateLimiter,
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    credits: Option<Arc<crate::credits::Credits>>,
}

/// Counts a call as in flight until dropped (completed, failed or cancelled).
struct InFlight(Arc<std::sync::atomic::AtomicUsize>);

impl InFlight {
    fn enter(counter: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Self(counter.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Tools {
    /// Builds the use-cases.
    pub fn new(registry: Arc<PluginRegistry>, policies: Arc<PolicyStore>, secrets: SecretValues) -> Self {
        Self { registry, policies, secrets, rates: RateLimiter::default(), in_flight: Arc::default(), credits: None }
    }

    /// Meters calls on `credits` (without it, as in some tests, calls are free).
    #[must_use]
    pub fn with_credits(mut self, credits: Arc<crate::credits::Credits>) -> Self {
        self.credits = Some(credits);
        self
    }

    /// Debits `price` for one call before it runs; returns the idempotency key to
    /// refund it with, if anything was charged.
    async fn charge(&self, principal: &Principal, price: u64, what: &str) -> Result<Option<String>, CallError> {
        let Some(credits) = self.credits.as_ref().filter(|_| price > 0) else { return Ok(None) };
        let amount = i64::try_from(price).map_err(|_| CallError::InsufficientCredits { available: 0, price })?;
        let key = format!("call:{}", hex::encode(crate::random::random_bytes::<12>()));
        match credits.debit(&principal.tenant_id, amount, &key, what).await {
            Ok(_) => Ok(Some(key)),
            Err(crate::credits::CreditsError::Insufficient { available, .. }) => {
                Err(CallError::InsufficientCredits { available, price })
            }
            Err(err) => {
                tracing::error!(error = %err, tenant = %principal.tenant, "cannot debit a tool call");
                Err(CallError::LedgerUnavailable(err.to_string()))
            }
        }
    }

    /// Refunds a charged call the host failed to run.
    async fn refund(&self, principal: &Principal, charge: &str) {
        let Some(credits) = &self.credits else { return };
        let key = format!("refund:{charge}");
        if let Err(err) =
            credits.refund_debit(&principal.tenant_id, charge, &key, "the host could not run the call").await
        {
            // The debit stands; `maestro credits audit` stays clean, and the refund can be
            // replayed with the same key.
            tracing::error!(error = %err, tenant = %principal.tenant, charge, "cannot refund a failed tool call");
        }
    }

    /// Tool calls and persona renderings running in the sandbox right now.
    pub fn calls_in_flight(&self) -> usize {
        self.in_flight.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The plugin registry.
    pub fn registry(&self) -> &Arc<PluginRegistry> {
        &self.registry
    }

    /// The policy store.
    pub fn policies(&self) -> &Arc<PolicyStore> {
        &self.policies
    }

    /// Tools the principal may see and call, by name.
    pub fn visible_tools(&self, principal: &Principal) -> Vec<VisibleTool> {
        let (catalog, policies) = (self.registry.catalog(), self.policies.current());
        catalog
            .tools()
            .filter_map(|(name, plugin, spec)| match policies.decide(&principal.subject(), &name) {
                Decision::Allow(grant) => {
                    Some(VisibleTool { name, plugin: plugin.clone(), spec: spec.clone(), credits: grant.credits })
                }
                Decision::Deny(_) => None,
            })
            .collect()
    }

    /// Personas the principal may use (policy globs match `plugin.persona` like tools).
    pub fn visible_personas(&self, principal: &Principal) -> Vec<VisiblePersona> {
        let (catalog, policies) = (self.registry.catalog(), self.policies.current());
        catalog
            .personas()
            .filter(|(name, _, _)| policies.decide(&principal.subject(), name).is_allowed())
            .map(|(name, plugin, spec)| VisiblePersona { name, plugin: plugin.clone(), spec: spec.clone() })
            .collect()
    }

    /// Plugins with at least one tool or persona the principal may use.
    pub fn visible_plugins(&self, principal: &Principal) -> Vec<Arc<InstalledPlugin>> {
        let policies = self.policies.current();
        let catalog = self.registry.catalog();
        catalog
            .plugins()
            .filter(|p| {
                let names = p.loaded.tools.iter().map(|t| &t.name).chain(p.loaded.personas.iter().map(|s| &s.name));
                names
                    .map(|n| format!("{}.{n}", p.manifest.name))
                    .any(|n| policies.decide(&principal.subject(), &n).is_allowed())
            })
            .cloned()
            .collect()
    }

    /// The policy decision for the principal and a tool or persona name.
    pub fn decide(&self, principal: &Principal, name: &str) -> Decision {
        self.policies.current().decide(&principal.subject(), name)
    }

    /// The current catalog (for administrators).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.registry.catalog()
    }

    /// The current policies.
    pub fn policy_set(&self) -> Arc<PolicySet> {
        self.policies.current()
    }

    /// Runs a tool for the principal under its policy.
    pub async fn call(
        &self,
        principal: &Principal,
        tool: &str,
        arguments: serde_json::Value,
        observe: Observe,
    ) -> Result<ToolCall, CallError> {
        let catalog = self.registry.catalog();
        let (plugin, _) = catalog.tool(tool).ok_or_else(|| CallError::UnknownTool(tool.chars().take(128).collect()))?;
        let grant = match self.policies.current().decide(&principal.subject(), tool) {
            Decision::Allow(grant) => grant,
            deny @ Decision::Deny(_) => return Err(CallError::Denied(deny.to_string())),
        };
        if !arguments.is_object() {
            return Err(CallError::ArgumentsNotObject);
        }
        if let Some(rate) = grant.rate {
            self.rates.admit(&grant.rule.name, &principal.key_id, rate.calls, rate.per).map_err(|retry_after| {
                CallError::RateLimited { limit: format!("{}/{}s", rate.calls, rate.per.as_secs()), retry_after }
            })?;
        }
        let context = CallContext {
            limits: limits(&grant),
            network: Arc::new(self.network(&grant)?),
            config_json: Arc::from(
                grant.config_for(&plugin.manifest.name).map_or_else(|| "{}".to_owned(), |c| c.to_string()),
            ),
            cancel: observe.cancel,
            progress: observe.progress,
            log: observe.log,
            caller: Arc::from(principal.tenant.as_str()),
        };
        let item = tool.split_once('.').map_or(tool, |(_, item)| item);
        let charge = self.charge(principal, grant.credits, tool).await?;
        let _in_flight = InFlight::enter(&self.in_flight);
        let outcome = self.registry.sandbox().call_tool(&plugin.loaded, item, arguments.to_string(), &context).await;
        let mut charged = if charge.is_some() { grant.credits } else { 0 };
        if let (Some(charge), Err(failure)) = (&charge, &outcome.result)
            && failure.is_host_side()
        {
            self.refund(principal, charge).await;
            charged = 0;
        }
        tracing::info!(
            tenant = %principal.tenant,
            tool,
            rule = %grant.rule.name,
            duration_us = outcome.duration.as_micros(),
            fuel = outcome.fuel_used,
            credits = charged,
            outcome = outcome.result.as_ref().map_or_else(|f| f.kind(), |_| "ok"),
            "tool call"
        );
        Ok(ToolCall { outcome, credits: grant.credits, charged })
    }

    /// Renders a persona's prompt for the principal from `arguments` (a JSON object),
    /// in the sandbox under the persona's grant. `Ok(None)`: the plugin has no renderer
    /// for it, so the persona's system prompt is the prompt.
    pub async fn render_persona(
        &self,
        principal: &Principal,
        persona: &str,
        arguments: &serde_json::Value,
        cancel: CancelToken,
    ) -> Result<Result<Option<String>, crate::sandbox::Failure>, CallError> {
        let catalog = self.registry.catalog();
        let plugin = catalog
            .personas()
            .find(|(name, _, _)| name == persona)
            .map(|(_, plugin, _)| plugin.clone())
            .ok_or_else(|| CallError::UnknownTool(persona.chars().take(128).collect()))?;
        let grant = match self.policies.current().decide(&principal.subject(), persona) {
            Decision::Allow(grant) => grant,
            deny @ Decision::Deny(_) => return Err(CallError::Denied(deny.to_string())),
        };
        let context = CallContext {
            limits: limits(&grant),
            network: Arc::new(NetPolicy::deny_all()),
            config_json: Arc::from(
                grant.config_for(&plugin.manifest.name).map_or_else(|| "{}".to_owned(), |c| c.to_string()),
            ),
            cancel,
            progress: None,
            log: None,
            caller: Arc::from(principal.tenant.as_str()),
        };
        let item = persona.split_once('.').map_or(persona, |(_, item)| item);
        let charge = self.charge(principal, grant.credits, persona).await?;
        let _in_flight = InFlight::enter(&self.in_flight);
        let rendered =
            self.registry.sandbox().render_persona(&plugin.loaded, item, arguments.to_string(), &context).await;
        if let (Some(charge), Err(failure)) = (&charge, &rendered)
            && failure.is_host_side()
        {
            self.refund(principal, charge).await;
        }
        Ok(rendered)
    }

    fn network(&self, grant: &Grant) -> Result<NetPolicy, CallError> {
        NetPolicy::from_grant(grant, |source| self.secrets.get(source))
            .map_err(|unavailable| CallError::SecretMissing(unavailable.secret))
    }
}

fn limits(grant: &Grant) -> CallLimits {
    let l = &grant.limits;
    CallLimits {
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

/// Secret values, read by the host: `env:VAR` from the environment `main` read once,
/// `file:KEY` from a file named KEY in the secrets directory.
#[derive(Clone)]
pub struct SecretValues {
    env: Arc<Env>,
    dir: PathBuf,
}

impl std::fmt::Debug for SecretValues {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValues").field("dir", &self.dir).finish_non_exhaustive()
    }
}

impl SecretValues {
    /// Secrets from `env` and files in `dir`.
    pub fn new(env: Env, dir: PathBuf) -> Self {
        Self { env: Arc::new(env), dir }
    }

    fn get(&self, source: &SecretSource) -> Option<String> {
        match source {
            SecretSource::Env(var) => self.env.get(var).filter(|v| !v.is_empty()).cloned(),
            SecretSource::File(key) => {
                let valid = !key.is_empty()
                    && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
                    && !key.starts_with('.');
                if !valid {
                    return None;
                }
                std::fs::read_to_string(self.dir.join(key)).ok().map(|v| v.trim_end_matches(['\n', '\r']).to_owned())
            }
        }
    }
}

/// Fixed-window-free rate limiting: a token bucket per (grant, key).
#[derive(Debug, Default)]
struct RateLimiter {
    buckets: Mutex<HashMap<(String, String), Bucket>>,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// The refill window: a bucket idle for that long is full again and can be dropped.
    per: Duration,
}

/// Above this many buckets, full ones are dropped (a full bucket is the same as none).
const MAX_IDLE_BUCKETS: usize = 10_000;

impl RateLimiter {
    /// Takes one token, or says how long until one is available.
    fn admit(&self, rule: &str, key: &str, calls: u32, per: Duration) -> Result<(), Duration> {
        let capacity = f64::from(calls);
        let refill_per_sec = capacity / per.as_secs_f64();
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if buckets.len() > MAX_IDLE_BUCKETS {
            buckets.retain(|_, b| now.duration_since(b.updated) < b.per);
        }
        let bucket =
            buckets.entry((rule.to_owned(), key.to_owned())).or_insert(Bucket { tokens: capacity, updated: now, per });
        bucket.tokens =
            (bucket.tokens + now.duration_since(bucket.updated).as_secs_f64() * refill_per_sec).min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / refill_per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_admits_the_burst_then_refuses_with_a_retry_time() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            limiter.admit("r", "k", 3, Duration::from_secs(60)).expect("within the rate");
        }
        let retry = limiter.admit("r", "k", 3, Duration::from_secs(60)).expect_err("over the rate");
        assert!(retry > Duration::from_secs(10) && retry <= Duration::from_secs(20), "{retry:?}");
        limiter.admit("r", "other-key", 3, Duration::from_secs(60)).expect("buckets are per key");
    }
}

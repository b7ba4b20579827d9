//! The platform a plugin's call gets (`maestro:plugin/model@0.2.0`): completions from the
//! caller's model providers, limited by the caller's grant (`model_tiers`,
//! `model_max_tokens`; no grant, no access) and paid from the caller's credits the way a
//! run's model calls are (`orchestrator::pricing`): a hold for the worst case (the
//! prompt's token bound plus `max_tokens`, at the dearest price of the model's fallback
//! chain) before asking, settled at the reported usage × the answering model's price
//! (the estimate when the provider reports none, never more than the hold).
//!
//! Each completion runs as its own task on the host's runtime: once asked, it finishes
//! and settles even when the plugin's call is stopped meanwhile (deadline,
//! cancellation), so no hold is left open and what the provider did is paid for. The
//! call's total (`spent`) is added to what the pipeline reports as charged.
//!
//! A call may carry a credit budget (inside a run: the run's budget left): each
//! completion's `max_tokens` is lowered so that its worst case fits what the call's
//! earlier completions left of it, and a completion that cannot fit even one answer
//! token is refused (`insufficient-credits`) without asking the model.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use maestro_core::TenantId;
use maestro_core::call::{Answer, Completion, CompletionRequest, CompletionRole, Platform, PlatformError, Question};
use maestro_core::llm::{
    ChatEvent, ChatMessage, ChatRequest, ChatRole, ModelProvider, ResponseSchema, model_for_tier, prompt_token_bound,
    tier_name,
};
use maestro_core::policy::ModelGrant;

use crate::credits::{Credits, CreditsError};
use crate::orchestrator::pricing::{self, Pricing};

/// How long a plugin completion's hold lives before the sweeper returns it (it is
/// settled or voided long before, unless the host dies mid-call): 15 minutes.
fn hold_lifetime() -> chrono::Duration {
    chrono::Duration::minutes(15)
}

/// The model providers and their prices, shared by every call.
#[derive(Debug)]
pub(crate) struct Models {
    /// The providers.
    pub(crate) provider: Arc<dyn ModelProvider>,
    pricing: Pricing,
}

impl Models {
    pub(crate) fn new(provider: Arc<dyn ModelProvider>, prices: Vec<crate::config::ModelPrice>) -> Self {
        Self { provider, pricing: Pricing::new(prices) }
    }
}

/// One call's platform: its caller, its grant's model access, and what it spent.
#[derive(Debug)]
pub(crate) struct CallPlatform {
    inner: Arc<Inner>,
    runtime: tokio::runtime::Handle,
}

#[derive(Debug)]
struct Inner {
    models: Arc<Models>,
    credits: Option<Arc<Credits>>,
    tenant: TenantId,
    grant: Option<ModelGrant>,
    /// `plugin.tool`, for memos.
    what: String,
    /// A random id naming this call's holds.
    id: String,
    next: AtomicU32,
    spent: Arc<AtomicU64>,
    /// The most the call's completions may cost in all (`None`: the balance decides).
    budget: Option<u64>,
}

impl CallPlatform {
    /// The platform of one call of `what` by `tenant` under `grant`; `spent` adds up the
    /// credits its completions were charged, `budget` caps it. Built on the host's runtime
    /// (completions run there).
    pub(crate) fn new(
        models: Arc<Models>,
        credits: Option<Arc<Credits>>,
        (tenant, grant): (TenantId, Option<ModelGrant>),
        what: &str,
        spent: Arc<AtomicU64>,
        budget: Option<u64>,
    ) -> Self {
        let inner = Inner {
            models,
            credits,
            tenant,
            grant,
            what: what.to_owned(),
            id: hex::encode(crate::random::random_bytes::<12>()),
            next: AtomicU32::new(0),
            spent,
            budget,
        };
        Self { inner: Arc::new(inner), runtime: tokio::runtime::Handle::current() }
    }
}

#[async_trait::async_trait]
impl Platform for CallPlatform {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        let inner = self.inner.clone();
        match self.runtime.spawn(async move { inner.complete(request).await }).await {
            Ok(answer) => answer,
            Err(err) => {
                tracing::error!(error = %err, "a plugin's model call failed");
                Err(PlatformError::Failed("the model call failed".into()))
            }
        }
    }
}

impl Inner {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        admit(self.grant.as_ref(), &self.what, &request)?;
        let models = self.models.provider.models();
        let model = model_for_tier(&models, request.tier)
            .ok_or_else(|| PlatformError::Failed("no model is configured on this host".into()))?;
        let chain = pricing::chain(&models, &model.id);
        let schema = request.schema.clone();
        let chat = ChatRequest {
            model: model.id.clone(),
            messages: request
                .messages
                .into_iter()
                .map(|(role, text)| {
                    let role = match role {
                        CompletionRole::System => ChatRole::System,
                        CompletionRole::User => ChatRole::User,
                        CompletionRole::Assistant => ChatRole::Assistant,
                    };
                    ChatMessage::new(role, text)
                })
                .collect(),
            tools: Vec::new(),
            max_tokens: Some(request.max_tokens),
            temperature: None,
            response_schema: schema.clone().map(|schema| ResponseSchema { name: "answer".into(), schema }),
        };
        let mut chat = chat;
        let prompt = prompt_token_bound(&chat);
        let pricing = &self.models.pricing;
        let worst = match self.budget {
            None => pricing
                .worst_case(&chain, prompt, request.max_tokens)
                .ok_or_else(|| PlatformError::InvalidRequest("the completion's worst-case cost overflows".into()))?,
            Some(budget) => {
                let left = budget.saturating_sub(self.spent.load(Ordering::SeqCst));
                let room = i64::try_from(left).unwrap_or(i64::MAX);
                match pricing.fit(&chain, prompt, request.max_tokens, room) {
                    Ok((max_tokens, worst)) => {
                        chat.max_tokens = Some(max_tokens);
                        worst
                    }
                    Err(pricing::Unaffordable::Budget) => {
                        return Err(PlatformError::InsufficientCredits(format!(
                            "the run's credits budget has {left} left, less than this completion's prompt costs"
                        )));
                    }
                    Err(pricing::Unaffordable::Overflow) => {
                        return Err(PlatformError::InvalidRequest("the completion's worst-case cost overflows".into()));
                    }
                }
            }
        };
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let key = format!("plugin:{}:m{n}", self.id);
        let memo = format!("{}: model call {n} ({})", self.what, model.id);
        let hold = match (&self.credits, worst > 0) {
            (Some(credits), true) => {
                match credits.reserve(&self.tenant, worst, hold_lifetime(), &format!("{key}:hold"), &memo).await {
                    Ok(reservation) => Some((credits, reservation.hold)),
                    Err(CreditsError::Insufficient { available, needed }) => {
                        return Err(PlatformError::InsufficientCredits(format!(
                            "insufficient credits: the completion may cost up to {needed}, the balance is {available}"
                        )));
                    }
                    Err(err) => {
                        let error = crate::telemetry::error_chain(&err);
                        tracing::error!(%error, tenant = %self.tenant, "cannot hold credits for a plugin's model call");
                        return Err(PlatformError::Failed(
                            "the credit ledger is not available, try again later".into(),
                        ));
                    }
                }
            }
            _ => None,
        };
        let answer = self.ask(chat, prompt).await;
        let response = match answer {
            Ok(response) => response,
            Err(failure) => {
                if let Some((credits, hold)) = &hold
                    && let Err(err) = credits.void(&self.tenant, &hold.id, &format!("{key}:void")).await
                {
                    let error = crate::telemetry::error_chain(&err);
                    tracing::error!(%error, hold = %hold.id, "cannot void a plugin model call's hold; it expires");
                }
                return Err(failure);
            }
        };
        let actual = pricing.settlement(&response.model, &response.usage).unwrap_or(worst);
        let charged = match &hold {
            Some((credits, hold)) => {
                let charged = actual.min(hold.amount);
                if let Err(err) = credits.settle(&self.tenant, &hold.id, charged, &format!("{key}:settle")).await {
                    let error = crate::telemetry::error_chain(&err);
                    tracing::error!(%error, hold = %hold.id, "cannot settle a plugin model call's hold; it expires");
                    0
                } else {
                    charged
                }
            }
            None => 0,
        };
        let charged = u64::try_from(charged).unwrap_or(0);
        self.spent.fetch_add(charged, Ordering::Relaxed);
        tracing::info!(
            tenant = %self.tenant, what = %self.what, model = %response.model,
            input_tokens = response.usage.input_tokens, output_tokens = response.usage.output_tokens,
            credits = charged, "plugin model call"
        );
        let structured = match &schema {
            None => None,
            Some(schema) => {
                let value: serde_json::Value = serde_json::from_str(response.text.trim())
                    .map_err(|_| PlatformError::Failed("the model's answer is not JSON".into()))?;
                maestro_core::plugin::schema::validate(schema, &value).map_err(|violation| {
                    PlatformError::Failed(format!("the model's answer does not fit the schema: {violation}"))
                })?;
                Some(value)
            }
        };
        Ok(Completion {
            text: response.text,
            structured,
            model: response.model,
            input_tokens: response.usage.input_tokens,
            output_tokens: response.usage.output_tokens,
            credits: charged,
        })
    }

    /// Streams the answer to its end (usage estimated when the provider reports none).
    async fn ask(&self, chat: ChatRequest, prompt: u64) -> Result<maestro_core::llm::ChatResponse, PlatformError> {
        let failed = |err: maestro_core::llm::LlmError| {
            tracing::warn!(error = %err, what = %self.what, "a plugin's model call failed");
            PlatformError::Failed(format!("the model call failed ({})", err.code()))
        };
        let mut stream = self.models.provider.stream(chat).await.map_err(failed)?;
        let mut response = loop {
            match stream.next().await {
                Some(Ok(ChatEvent::Completed(response))) => break response,
                Some(Ok(_)) => {}
                Some(Err(err)) => return Err(failed(err)),
                None => return Err(PlatformError::Failed("the model's answer ended early".into())),
            }
        };
        if !response.usage_reported {
            let output = u64::try_from(response.text.len()).unwrap_or(u64::MAX);
            response.usage =
                maestro_core::llm::Usage { input_tokens: prompt, output_tokens: output, ..Default::default() };
        }
        Ok(response)
    }
}

/// Checks a completion request against the grant of the call of `what`.
fn admit(grant: Option<&ModelGrant>, what: &str, request: &CompletionRequest) -> Result<(), PlatformError> {
    let Some(grant) = grant else {
        return Err(PlatformError::Denied(format!("policy gives `{what}` no model access (a grant's model_tiers)")));
    };
    if !grant.tiers.contains(&request.tier) {
        let granted: Vec<&str> = grant.tiers.iter().map(|t| tier_name(*t)).collect();
        return Err(PlatformError::Denied(format!(
            "policy does not grant the `{}` model tier to `{what}` (granted: {})",
            tier_name(request.tier),
            granted.join(", ")
        )));
    }
    if request.max_tokens > grant.max_tokens {
        return Err(PlatformError::Denied(format!(
            "max_tokens {} is over the {} tokens policy allows per completion",
            request.max_tokens, grant.max_tokens
        )));
    }
    if request.max_tokens == 0 {
        return Err(PlatformError::InvalidRequest("max_tokens must be at least 1".into()));
    }
    if request.messages.is_empty() {
        return Err(PlatformError::InvalidRequest("a completion needs at least one message".into()));
    }
    Ok(())
}

/// A call's platform when the caller brings its own models (an MCP client's sampling):
/// the same grant decides, the caller's models answer, and nothing is charged.
#[derive(Debug)]
pub(crate) struct ClientPlatform {
    client: Arc<dyn Platform>,
    grant: Option<ModelGrant>,
    what: String,
}

impl ClientPlatform {
    pub(crate) fn new(client: Arc<dyn Platform>, grant: Option<ModelGrant>, what: &str) -> Self {
        Self { client, grant, what: what.to_owned() }
    }
}

#[async_trait::async_trait]
impl Platform for ClientPlatform {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        admit(self.grant.as_ref(), &self.what, &request)?;
        let answer = self.client.complete(request).await?;
        Ok(Completion { credits: 0, ..answer })
    }
}

/// A tool call's whole platform: its models (the host's or the client's; none: every
/// completion is denied) and the person behind it (an MCP client offering elicitation;
/// none: nobody can be asked, [`PlatformError::NeedsInput`]).
#[derive(Debug)]
pub(crate) struct Joined {
    models: Option<Arc<dyn Platform>>,
    user: Option<Arc<dyn Platform>>,
}

impl Joined {
    pub(crate) fn new(models: Option<Arc<dyn Platform>>, user: Option<Arc<dyn Platform>>) -> Self {
        Self { models, user }
    }
}

#[async_trait::async_trait]
impl Platform for Joined {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        match &self.models {
            Some(models) => models.complete(request).await,
            None => Err(PlatformError::Denied("no model provider is available to this call".into())),
        }
    }

    async fn ask(&self, question: Question) -> Result<Answer, PlatformError> {
        match &self.user {
            Some(user) => user.ask(question).await,
            None => Err(PlatformError::NeedsInput { question: question.message, schema: question.schema }),
        }
    }
}

//! Model providers: the `maestro_core::llm::ModelProvider` port over OpenAI-compatible
//! Chat Completions (OpenAI, Ollama, vLLM, llama.cpp server, OpenRouter, Groq…) and
//! Anthropic Messages, streamed.
//!
//! A thin client of our own over the shared outbound client (`maestro-outbound`: hyper
//! and rustls with ring, the allow-list and private-address checks) rather than an SDK
//! crate: the SDKs' strict types break on real OpenAI-compatible servers (`usage: {}`, a
//! tool name in a later chunk, `delta.reasoning`, an error event mid-stream), and none
//! does exact usage, SDK-grade retries and fallbacks together. Every wire type here is
//! lenient: optional fields, unknown fields ignored, unknown finish reasons kept.
//!
//! [`Llm`] holds the configured providers and models. A call retries on its model as
//! the official SDKs do (`x-should-retry`, then 408/409/429/5xx and connection errors;
//! `retry-after-ms` or `retry-after` honoured up to 60 s, else 0.5 s·2ⁿ up to 8 s with
//! jitter; never an exhausted quota), then falls back along the model's `fallbacks` —
//! all before the first event reaches the caller, since
//! [`ChatEvent::Started`](maestro_core::llm::ChatEvent::Started) is sent
//! only once the first content arrived. After that a failure ends the stream.
//!
//! API keys are read when each request is sent (so a rotated `file:` secret is used),
//! sent only to the provider's base URL, marked sensitive, and taken out of any message
//! a provider echoes; they never reach logs, events or errors.

mod answer;
mod anthropic;
pub mod embeddings;
mod names;
mod openai;
mod retry;
mod sse;
mod stream;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode};
use http_body_util::BodyExt as _;
use maestro_core::llm::{ChatRequest, ChatStream, LlmError, ModelInfo, ModelProvider};
use maestro_core::plugin::ModelTier;
use maestro_outbound::{NetPolicy, NetRule, OutboundClient, OutboundError, StreamTimeouts, full_body};
use tokio::time::Instant;

use crate::answer::{Answer, Failure, truncate};
use crate::names::ToolNames;
use crate::stream::{Live, LiveSetup, Wire};

/// Default time to connect (TCP and TLS) to a provider.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time from sending a request to the answer's first content.
pub const DEFAULT_FIRST_TOKEN_TIMEOUT: Duration = Duration::from_secs(60);
/// Default longest gap between two pieces of a streamed answer.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Default retries on one model before falling back.
pub const DEFAULT_MAX_RETRIES: u32 = 2;
/// Connections kept alive per provider between calls.
const MAX_IDLE_CONNECTIONS: usize = 32;
/// Largest error body read from a provider.
const MAX_ERROR_BODY: usize = 64 << 10;
/// Largest streamed answer accepted (bytes on the wire).
const MAX_STREAM_BYTES: u64 = 256 << 20;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderKind {
    /// OpenAI-compatible Chat Completions: `POST {base_url}/chat/completions`.
    OpenAi,
    /// Anthropic Messages: `POST {base_url}/v1/messages`.
    Anthropic,
}

/// Reads a provider's API key when a request is sent (`None`: not available now).
#[derive(Clone)]
pub struct ApiKey(Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl ApiKey {
    /// A key read by `read` for each request (a secret file may be rotated).
    pub fn new(read: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(read))
    }

    /// A fixed key (tests, embedders).
    pub fn fixed(key: impl Into<String>) -> Self {
        let key = key.into();
        Self::new(move || Some(key.clone()))
    }

    fn read(&self) -> Option<String> {
        (self.0)().map(|k| k.trim().to_owned()).filter(|k| !k.is_empty())
    }
}

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// A configured provider (`[[llm.providers]]`).
#[derive(Debug, Clone)]
pub struct ProviderConfig {
    /// Its name, as models refer to it.
    pub name: String,
    /// Its wire format.
    pub kind: ProviderKind,
    /// Base URL (`https://api.openai.com/v1`, `https://api.anthropic.com`,
    /// `http://127.0.0.1:11434/v1`); only its origin is reachable.
    pub base_url: String,
    /// Its API key, when it needs one (local servers often do not).
    pub api_key: Option<ApiKey>,
    /// Whether the base URL may be loopback or private (Ollama, a test's fake).
    pub allow_private: bool,
    /// Connecting (TCP and TLS).
    pub connect_timeout: Duration,
    /// From sending a request to the first content of the answer.
    pub first_token_timeout: Duration,
    /// Longest gap between two pieces of the answer once it started.
    pub idle_timeout: Duration,
    /// Retries on one model before falling back.
    pub max_retries: u32,
}

impl ProviderConfig {
    /// A provider with the default timeouts and retries, no key, public addresses only.
    pub fn new(name: impl Into<String>, kind: ProviderKind, base_url: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            base_url: base_url.into(),
            api_key: None,
            allow_private: false,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            first_token_timeout: DEFAULT_FIRST_TOKEN_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_retries: DEFAULT_MAX_RETRIES,
        }
    }
}

/// A configured model (`[[llm.models]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelConfig {
    /// The id Maestro calls it by (prices, personas and fallbacks use it).
    pub id: String,
    /// Its provider's name.
    pub provider: String,
    /// The provider's name for it (`gpt-4.1-mini`, `claude-sonnet-4-5`).
    pub upstream: String,
    /// Its tier.
    pub tier: ModelTier,
    /// Context window, in tokens.
    pub context_window: u32,
    /// Largest answer, in tokens.
    pub max_output_tokens: u32,
    /// Model ids tried next, in order, when this one is unavailable.
    pub fallbacks: Vec<String>,
}

/// A configuration [`Llm::new`] cannot use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SetupError {
    /// Two providers or two models share a name.
    #[error("{what} `{name}` is configured twice")]
    Duplicate {
        /// `provider` or `model`.
        what: &'static str,
        /// The name.
        name: String,
    },
    /// A provider's base URL is not usable.
    #[error("provider `{provider}`: invalid base_url: {reason}")]
    BaseUrl {
        /// The provider.
        provider: String,
        /// Why.
        reason: String,
    },
    /// A model names a provider that is not configured.
    #[error("model `{model}`: no provider `{provider}` is configured")]
    UnknownProvider {
        /// The model.
        model: String,
        /// The provider it names.
        provider: String,
    },
    /// A model falls back to a model that is not configured.
    #[error("model `{model}`: fallback `{fallback}` is not a configured model")]
    UnknownFallback {
        /// The model.
        model: String,
        /// The fallback it names.
        fallback: String,
    },
}

/// One provider, ready to call.
#[derive(Debug)]
struct Provider {
    config: ProviderConfig,
    /// The base URL without its trailing `/`.
    base: String,
    /// Whether this is OpenAI itself (`max_completion_tokens`).
    openai_itself: bool,
    /// Whether to ask for usage with `stream_options` (cleared when the server
    /// refuses the field; such servers report usage unasked or not at all).
    stream_options: std::sync::atomic::AtomicBool,
    client: OutboundClient,
}

/// A pooled outbound client named `name` allowed to reach `base_url`'s origin only (a
/// loopback or private one only with `allow_private`; `rule` names the setting in
/// denials), with requests up to 32 MiB and answers up to `max_response_bytes`; and the
/// origin's host.
fn origin_client(
    name: &'static str,
    base_url: &str,
    allow_private: bool,
    rule: String,
    max_response_bytes: u64,
) -> Result<(OutboundClient, String), String> {
    let uri: http::Uri = base_url.parse().map_err(|e| format!("{e}"))?;
    let scheme = uri.scheme_str().ok_or_else(|| "expected an http(s) URL".to_owned())?;
    let authority = uri.authority().ok_or_else(|| "expected an http(s) URL".to_owned())?;
    if uri.query().is_some() {
        return Err("a query string is not allowed".into());
    }
    let origin = format!("{scheme}://{authority}");
    let rule = NetRule::parse(&origin, allow_private, rule)?;
    let mut policy = NetPolicy::allowing(vec![rule]);
    policy.max_response_bytes = max_response_bytes;
    policy.max_request_bytes = 32 << 20;
    let client = OutboundClient::pooled(name, Arc::new(policy), MAX_IDLE_CONNECTIONS);
    Ok((client, authority.host().to_owned()))
}

/// The model providers: every configured provider and model.
#[derive(Debug)]
pub struct Llm {
    providers: HashMap<String, Arc<Provider>>,
    models: Vec<ModelConfig>,
}

impl Llm {
    /// Checks the configuration and builds one outbound client per provider, allowed
    /// to reach its base URL's origin only.
    pub fn new(providers: Vec<ProviderConfig>, models: Vec<ModelConfig>) -> Result<Self, SetupError> {
        let mut built = HashMap::new();
        for config in providers {
            if built.contains_key(&config.name) {
                return Err(SetupError::Duplicate { what: "provider", name: config.name });
            }
            let (client, host) = origin_client(
                "model",
                &config.base_url,
                config.allow_private,
                format!("llm.providers `{}`", config.name),
                MAX_STREAM_BYTES,
            )
            .map_err(|reason| SetupError::BaseUrl { provider: config.name.clone(), reason })?;
            let base = config.base_url.trim_end_matches('/').to_owned();
            let openai_itself = config.kind == ProviderKind::OpenAi && host == "api.openai.com";
            built.insert(
                config.name.clone(),
                Arc::new(Provider {
                    config,
                    base,
                    openai_itself,
                    stream_options: std::sync::atomic::AtomicBool::new(true),
                    client,
                }),
            );
        }
        for (i, model) in models.iter().enumerate() {
            if models[..i].iter().any(|m| m.id == model.id) {
                return Err(SetupError::Duplicate { what: "model", name: model.id.clone() });
            }
            if !built.contains_key(&model.provider) {
                return Err(SetupError::UnknownProvider { model: model.id.clone(), provider: model.provider.clone() });
            }
            if let Some(fallback) = model.fallbacks.iter().find(|f| !models.iter().any(|m| &m.id == *f)) {
                return Err(SetupError::UnknownFallback { model: model.id.clone(), fallback: fallback.clone() });
            }
        }
        Ok(Self { providers: built, models })
    }

    fn model(&self, id: &str) -> Option<(&ModelConfig, &Arc<Provider>)> {
        let model = self.models.iter().find(|m| m.id == id)?;
        Some((model, self.providers.get(&model.provider)?))
    }
}

#[async_trait]
impl ModelProvider for Llm {
    fn models(&self) -> Vec<ModelInfo> {
        self.models
            .iter()
            .map(|m| ModelInfo {
                id: m.id.clone(),
                provider: m.provider.clone(),
                tier: m.tier,
                context_window: m.context_window,
                max_output_tokens: m.max_output_tokens,
                fallbacks: m.fallbacks.clone(),
            })
            .collect()
    }

    async fn stream(&self, request: ChatRequest) -> Result<Box<dyn ChatStream>, LlmError> {
        let (first, _) = self.model(&request.model).ok_or_else(|| LlmError::UnknownModel(request.model.clone()))?;
        let chain: Vec<&str> =
            std::iter::once(first.id.as_str()).chain(first.fallbacks.iter().map(String::as_str)).collect();
        let mut attempts = 0u32;
        let mut last = String::new();
        for id in chain {
            let Some((model, provider)) = self.model(id) else { continue };
            for retry in 0..=provider.config.max_retries {
                attempts += 1;
                match attempt(provider, model, &request).await {
                    Ok(live) => return Ok(Box::new(live)),
                    Err(Attempt::Fatal(error)) => return Err(error),
                    // Only after a resend that was refused the same way: try again.
                    Err(Attempt::Resend) => {
                        last = format!("{} ({}): refused stream_options", model.id, provider.config.name)
                    }
                    Err(Attempt::Again { message, wait, retry_here }) => {
                        let again_here = retry_here && retry < provider.config.max_retries;
                        tracing::info!(
                            model = %model.id,
                            provider = %provider.config.name,
                            attempt = attempts,
                            error = %message,
                            next = if again_here { "retry" } else { "next model, if any" },
                            "model call failed before its first token"
                        );
                        last = format!("{} ({}): {message}", model.id, provider.config.name);
                        if !again_here {
                            break;
                        }
                        tokio::time::sleep(wait.unwrap_or_else(|| retry::backoff(retry))).await;
                    }
                }
            }
        }
        Err(LlmError::Unavailable { attempts, last })
    }
}

/// Why one attempt failed.
#[derive(Debug)]
enum Attempt {
    /// Not worth trying again anywhere.
    Fatal(LlmError),
    /// Try again (after `wait` when the server said), here if `retry_here`, else on
    /// the next model of the chain.
    Again { message: String, wait: Option<Duration>, retry_here: bool },
    /// The server refused `stream_options`: send again without it, at once.
    Resend,
}

/// One request to one model, read up to its first content (sent twice when the server
/// refuses `stream_options`).
async fn attempt(provider: &Provider, model: &ModelConfig, request: &ChatRequest) -> Result<Live, Attempt> {
    match attempt_once(provider, model, request).await {
        Err(Attempt::Resend) => attempt_once(provider, model, request).await,
        other => other,
    }
}

async fn attempt_once(provider: &Provider, model: &ModelConfig, request: &ChatRequest) -> Result<Live, Attempt> {
    let config = &provider.config;
    let names = ToolNames::new(&request.tools);
    let max_tokens = request.max_tokens.unwrap_or(model.max_output_tokens).min(model.max_output_tokens).max(1);
    let key = match &config.api_key {
        Some(source) => Some(source.read().ok_or_else(|| {
            Attempt::Fatal(LlmError::Refused {
                status: 401,
                message: format!("the API key of provider `{}` is not available on this host", config.name),
            })
        })?),
        None => None,
    };
    let redact = |message: &str| match &key {
        Some(key) if key.len() >= 4 => message.replace(key.as_str(), "<redacted>"),
        _ => message.to_owned(),
    };
    let asked_usage = provider.stream_options.load(std::sync::atomic::Ordering::Relaxed);
    let (url, body, wire) = match config.kind {
        ProviderKind::OpenAi => (
            format!("{}/chat/completions", provider.base),
            openai::request_body(&model.upstream, request, max_tokens, &names, provider.openai_itself, asked_usage),
            Wire::OpenAi(openai::Parser::default()),
        ),
        ProviderKind::Anthropic => (
            format!("{}/v1/messages", provider.base),
            anthropic::request_body(&model.upstream, request, max_tokens, &names),
            Wire::Anthropic(anthropic::Parser::new(request.response_schema.as_ref().map(|s| s.name.clone()))),
        ),
    };
    let body = serde_json::to_vec(&body)
        .map_err(|e| Attempt::Fatal(LlmError::InvalidResponse(format!("cannot encode the request: {e}"))))?;
    let mut builder = Request::post(url)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header(http::header::ACCEPT, "text/event-stream")
        .header(http::header::USER_AGENT, concat!("maestro/", env!("CARGO_PKG_VERSION")))
        .header(http::header::CONTENT_LENGTH, body.len());
    if config.kind == ProviderKind::Anthropic {
        builder = builder.header("anthropic-version", anthropic::VERSION);
    }
    let mut outgoing = builder
        .body(full_body(Bytes::from(body)))
        .map_err(|e| Attempt::Fatal(LlmError::InvalidResponse(format!("cannot build the request: {e}"))))?;
    if let Some(key) = &key {
        let (name, value) = match config.kind {
            ProviderKind::OpenAi => (http::header::AUTHORIZATION, format!("Bearer {key}")),
            ProviderKind::Anthropic => (http::HeaderName::from_static("x-api-key"), key.clone()),
        };
        let mut value = HeaderValue::from_str(&value).map_err(|_| {
            Attempt::Fatal(LlmError::Refused {
                status: 401,
                message: format!("the API key of provider `{}` is not a valid header value", config.name),
            })
        })?;
        value.set_sensitive(true);
        outgoing.headers_mut().insert(name, value);
    }
    let sent = Instant::now();
    let first_deadline = sent + config.first_token_timeout;
    let timeouts = StreamTimeouts { connect: config.connect_timeout, head: config.first_token_timeout, body: None };
    let response = provider.client.send_stream(outgoing, timeouts).await.map_err(|e| match e {
        OutboundError::Denied { .. } | OutboundError::InvalidUri | OutboundError::RequestTooLarge { .. } => {
            Attempt::Fatal(LlmError::Refused { status: 0, message: redact(&e.to_string()) })
        }
        other => Attempt::Again { message: redact(&describe(&other)), wait: None, retry_here: true },
    })?;
    let status = response.status();
    if !status.is_success() {
        let headers = response.headers().clone();
        let wait = retry::server_wait(&headers, SystemTime::now());
        let remaining = first_deadline.saturating_duration_since(Instant::now()).max(Duration::from_secs(1));
        let text: String = tokio::time::timeout(remaining, read_capped(response.into_body())).await.unwrap_or_default();
        if config.kind == ProviderKind::OpenAi
            && asked_usage
            && matches!(status.as_u16(), 400 | 422)
            && text.contains("stream_options")
        {
            if provider.stream_options.swap(false, std::sync::atomic::Ordering::Relaxed) {
                tracing::info!(provider = %config.name, "the provider refuses stream_options; asking without it");
            }
            return Err(Attempt::Resend);
        }
        return Err(classify(status, &headers, &redact(&text), wait));
    }
    let setup = LiveSetup {
        wire,
        answer: Answer::new(names),
        model: model.id.clone(),
        provider: config.name.clone(),
        first_deadline,
        first_token_timeout: config.first_token_timeout,
        idle_timeout: config.idle_timeout,
    };
    let mut live = Live::new(response.into_body(), setup);
    match live.start().await {
        Ok(()) => Ok(live),
        Err(failure) => Err(match failure {
            Failure::Retryable(message) | Failure::Timeout(message) => {
                Attempt::Again { message: redact(&message), wait: None, retry_here: true }
            }
            Failure::Quota(message) => Attempt::Fatal(LlmError::QuotaExceeded(redact(&message))),
            Failure::Refused { status, message } => {
                Attempt::Fatal(LlmError::Refused { status, message: redact(&message) })
            }
            Failure::Invalid(message) => Attempt::Fatal(LlmError::InvalidResponse(message)),
        }),
    }
}

/// An error response as the next step: quota (never retried), retry, or refusal.
fn classify(status: StatusCode, headers: &http::HeaderMap, body: &str, wait: Option<Duration>) -> Attempt {
    let (message, quota) = error_summary(status, body);
    if quota {
        return Attempt::Fatal(LlmError::QuotaExceeded(message));
    }
    if retry::should_retry(status, headers) {
        return Attempt::Again { message: format!("status {}: {message}", status.as_u16()), wait, retry_here: true };
    }
    if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS || status.as_u16() == 529 {
        // The server said not to retry: this model is out, the chain goes on.
        return Attempt::Again { message: format!("status {}: {message}", status.as_u16()), wait, retry_here: false };
    }
    Attempt::Fatal(LlmError::Refused { status: status.as_u16(), message })
}

/// An error response's message (OpenAI's and Anthropic's `error.message`, a bare
/// `error` string as Ollama and TEI send, else the body; at most 500 characters) and
/// whether it says a quota or credit balance is exhausted (never worth retrying).
fn error_summary(status: StatusCode, body: &str) -> (String, bool) {
    let value: serde_json::Value = serde_json::from_str(body).unwrap_or(serde_json::Value::Null);
    let error = value.get("error").unwrap_or(&value);
    let field = |key: &str| error.get(key).and_then(serde_json::Value::as_str).unwrap_or_default();
    let message = match (error.as_str(), field("message")) {
        (Some(text), _) => text.to_owned(),
        (None, "") if body.trim().is_empty() => format!("status {}", status.as_u16()),
        (None, "") => body.trim().to_owned(),
        (None, message) => message.to_owned(),
    };
    let message = truncate(&message, 500);
    let quota = status == StatusCode::PAYMENT_REQUIRED
        || openai::is_quota(field("type"))
        || openai::is_quota(field("code"))
        || message.contains("credit balance");
    (message, quota)
}

/// An outbound failure with its causes.
fn describe(error: &OutboundError) -> String {
    let mut message = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        message.push_str(&format!(": {cause}"));
        source = cause.source();
    }
    message
}

/// At most [`MAX_ERROR_BODY`] bytes of an error body, as text.
async fn read_capped(mut body: maestro_outbound::OutboundBody) -> String {
    let mut bytes = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
            if bytes.len() >= MAX_ERROR_BODY {
                bytes.truncate(MAX_ERROR_BODY);
                break;
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The provider used when none is configured: no models, and every call answers
/// [`LlmError::NoProvider`], which says which settings to add.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoProvider;

#[async_trait]
impl ModelProvider for NoProvider {
    fn models(&self) -> Vec<ModelInfo> {
        Vec::new()
    }

    async fn stream(&self, _request: ChatRequest) -> Result<Box<dyn ChatStream>, LlmError> {
        Err(LlmError::NoProvider)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, provider: &str, fallbacks: &[&str]) -> ModelConfig {
        ModelConfig {
            id: id.into(),
            provider: provider.into(),
            upstream: "u".into(),
            tier: ModelTier::Small,
            context_window: 1000,
            max_output_tokens: 100,
            fallbacks: fallbacks.iter().map(|f| (*f).to_owned()).collect(),
        }
    }

    #[test]
    fn setup_refuses_unknown_providers_and_fallbacks_and_private_urls_without_the_flag() {
        let openai = ProviderConfig::new("o", ProviderKind::OpenAi, "https://api.openai.com/v1");
        let err = Llm::new(vec![openai.clone()], vec![model("m", "x", &[])]).expect_err("unknown provider");
        assert_eq!(err.to_string(), "model `m`: no provider `x` is configured");
        let err = Llm::new(vec![openai.clone()], vec![model("m", "o", &["n"])]).expect_err("unknown fallback");
        assert!(err.to_string().contains("fallback `n`"), "{err}");
        let local = ProviderConfig::new("l", ProviderKind::OpenAi, "http://127.0.0.1:11434/v1");
        let err = Llm::new(vec![local.clone()], vec![]).expect_err("private needs the flag");
        assert!(err.to_string().contains("allow_private"), "{err}");
        Llm::new(vec![ProviderConfig { allow_private: true, ..local }], vec![]).expect("explicitly allowed");
        let llm = Llm::new(vec![openai], vec![model("m", "o", &[])]).expect("valid");
        assert!(llm.providers["o"].openai_itself);
    }

    #[test]
    fn an_api_key_never_shows_in_debug_output() {
        let mut config = ProviderConfig::new("o", ProviderKind::OpenAi, "https://api.openai.com/v1");
        config.api_key = Some(ApiKey::fixed("sk-secret-123"));
        assert!(!format!("{config:?}").contains("sk-secret-123"));
    }

    #[test]
    fn error_responses_are_classified_as_the_sdks_do() {
        let none = http::HeaderMap::new();
        let quota = r#"{"error":{"message":"You exceeded your current quota","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none, quota, None),
            Attempt::Fatal(LlmError::QuotaExceeded(_))
        ));
        let credit =
            r#"{"type":"error","error":{"type":"invalid_request_error","message":"Your credit balance is too low"}}"#;
        assert!(matches!(
            classify(StatusCode::BAD_REQUEST, &none, credit, None),
            Attempt::Fatal(LlmError::QuotaExceeded(_))
        ));
        assert!(matches!(
            classify(StatusCode::TOO_MANY_REQUESTS, &none, "{}", None),
            Attempt::Again { retry_here: true, .. }
        ));
        let overloaded = StatusCode::from_u16(529).expect("529");
        assert!(matches!(classify(overloaded, &none, "", None), Attempt::Again { retry_here: true, .. }));
        let mut no = http::HeaderMap::new();
        no.insert("x-should-retry", HeaderValue::from_static("false"));
        assert!(matches!(
            classify(StatusCode::SERVICE_UNAVAILABLE, &no, "", None),
            Attempt::Again { retry_here: false, .. }
        ));
        let Attempt::Fatal(LlmError::Refused { status, message }) =
            classify(StatusCode::BAD_REQUEST, &none, r#"{"error":{"message":"bad schema"}}"#, None)
        else {
            panic!("refused")
        };
        assert_eq!((status, message.as_str()), (400, "bad schema"));
    }
}

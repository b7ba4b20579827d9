//! Model calls as the rest of Maestro sees them: a chat request, the events of its
//! streamed answer, exact usage, typed failures, and the [`ModelProvider`] port the
//! `maestro-llm` adapter implements (OpenAI-compatible Chat Completions and Anthropic
//! Messages behind it; tests put a scripted fake in its place).
//!
//! Models are named by their *configured id* (`[[llm.models]] id`), never by a
//! provider's upstream name: prices (`[[credits.models]] model`), persona tiers and
//! fallback chains all refer to that id.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::plugin::ModelTier;

/// Who wrote a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChatRole {
    /// Instructions (a persona's system prompt).
    System,
    /// A person, or the orchestrator speaking for one.
    User,
    /// The model.
    Assistant,
    /// A tool's result, answering an assistant's tool call.
    Tool,
}

/// A tool call the model asked for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolCallRequest {
    /// The provider's call id (`call_…`, `toolu_…`), echoed back with the result.
    pub id: String,
    /// The tool's name as offered to the model.
    pub name: String,
    /// The arguments as the model wrote them: JSON text, possibly invalid.
    pub arguments: String,
}

/// One message of a conversation sent to a model.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    /// Who wrote it.
    pub role: ChatRole,
    /// Its text (may be empty for an assistant message that only calls tools).
    pub content: String,
    /// Tool calls an assistant message made.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCallRequest>,
    /// For a [`ChatRole::Tool`] message: the call it answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
    /// For a [`ChatRole::Tool`] message: whether the result is an error.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub is_error: bool,
}

impl ChatMessage {
    /// A message of `role` with `content`.
    pub fn new(role: ChatRole, content: impl Into<String>) -> Self {
        Self { role, content: content.into(), tool_calls: Vec::new(), tool_call_id: None, is_error: false }
    }

    /// A tool result answering `call_id`.
    pub fn tool_result(call_id: impl Into<String>, content: impl Into<String>, is_error: bool) -> Self {
        Self {
            role: ChatRole::Tool,
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(call_id.into()),
            is_error,
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolDefinition {
    /// The name the model calls it by (MCP-safe characters; providers allow
    /// `^[a-zA-Z0-9_-]{1,64}$`, so the adapter maps `plugin.tool` names as it must and
    /// maps them back in the calls it reports).
    pub name: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of its arguments.
    pub parameters: serde_json::Value,
}

/// Structured output: the answer must be JSON fitting `schema`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseSchema {
    /// A name for the schema (`^[a-zA-Z0-9_-]{1,64}$`).
    pub name: String,
    /// The JSON Schema.
    pub schema: serde_json::Value,
}

/// A chat request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatRequest {
    /// The configured model id to ask first (its fallbacks follow it).
    pub model: String,
    /// The conversation, system message first when there is one.
    pub messages: Vec<ChatMessage>,
    /// Tools the model may call (empty: none).
    #[serde(default)]
    pub tools: Vec<ToolDefinition>,
    /// Largest answer, in tokens (`None`: the model's configured maximum).
    #[serde(default)]
    pub max_tokens: Option<u32>,
    /// Sampling temperature.
    #[serde(default)]
    pub temperature: Option<f32>,
    /// Structured output, when the answer must be JSON of a schema.
    #[serde(default)]
    pub response_schema: Option<ResponseSchema>,
}

/// Token usage exactly as the provider reported it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// Prompt tokens, all of them (cached and cache-writing ones included).
    pub input_tokens: u64,
    /// Completion tokens (reasoning tokens included).
    pub output_tokens: u64,
    /// Of the input, tokens read from the provider's prompt cache.
    #[serde(default)]
    pub cached_input_tokens: u64,
    /// Of the input, tokens written to the provider's prompt cache (Anthropic).
    #[serde(default)]
    pub cache_write_tokens: u64,
    /// Of the output, reasoning tokens.
    #[serde(default)]
    pub reasoning_tokens: u64,
}

impl Usage {
    /// The sum of two usages (saturating).
    pub fn plus(self, other: Usage) -> Usage {
        Usage {
            input_tokens: self.input_tokens.saturating_add(other.input_tokens),
            output_tokens: self.output_tokens.saturating_add(other.output_tokens),
            cached_input_tokens: self.cached_input_tokens.saturating_add(other.cached_input_tokens),
            cache_write_tokens: self.cache_write_tokens.saturating_add(other.cache_write_tokens),
            reasoning_tokens: self.reasoning_tokens.saturating_add(other.reasoning_tokens),
        }
    }
}

/// Why the model stopped. Unknown reasons are kept, never refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// It finished its answer.
    Stop,
    /// It reached `max_tokens`.
    Length,
    /// It called tools.
    ToolCalls,
    /// The provider filtered the answer.
    ContentFilter,
    /// Anything else, as the provider said it.
    Other(String),
}

/// A streamed answer, as it arrives.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ChatEvent {
    /// The first event of every stream: which model (configured id) and provider
    /// answer, after any retries and fallbacks. Sent when the first content arrived.
    Started {
        /// The configured model id answering.
        model: String,
        /// The provider's configured name.
        provider: String,
    },
    /// A piece of the answer's text.
    Text {
        /// The text (whole characters).
        text: String,
    },
    /// A piece of reasoning text, when the provider streams it.
    Reasoning {
        /// The text.
        text: String,
    },
    /// A tool call began (its id and name are known).
    ToolCallStarted {
        /// Position among this answer's calls.
        index: u32,
        /// The call's id.
        id: String,
        /// The tool's name.
        name: String,
    },
    /// A fragment of a tool call's JSON arguments.
    ToolCallArguments {
        /// Position among this answer's calls.
        index: u32,
        /// The fragment.
        fragment: String,
    },
    /// The last event: the whole answer with its exact usage.
    Completed(ChatResponse),
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ChatResponse {
    /// The configured model id that answered.
    pub model: String,
    /// The provider's configured name.
    pub provider: String,
    /// The text.
    pub text: String,
    /// Tool calls, in index order.
    #[serde(default)]
    pub tool_calls: Vec<ToolCallRequest>,
    /// Why it stopped.
    pub finish: FinishReason,
    /// Usage as reported (zero counts when the provider reported none).
    pub usage: Usage,
    /// Whether the provider reported usage at all (`false`: `usage` is an estimate).
    pub usage_reported: bool,
}

/// Why a model call failed. The `code` of each is stable (API and run events).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LlmError {
    /// No provider is configured at all.
    #[error(
        "no model provider is configured: add a `[[llm.providers]]` and a `[[llm.models]]` entry to the \
         configuration file (see config/maestro.toml)"
    )]
    NoProvider,
    /// No configured model has this id (or none has this tier).
    #[error("no model `{0}` is configured")]
    UnknownModel(String),
    /// The provider refused the request for good (4xx other than the retried ones).
    #[error("the model provider refused the request ({status}): {message}")]
    Refused {
        /// HTTP status.
        status: u16,
        /// The provider's message (truncated).
        message: String,
    },
    /// The account's quota or spend limit is exhausted; never retried.
    #[error("the model provider's quota is exhausted: {0}")]
    QuotaExceeded(String),
    /// Retries and fallbacks ran out on retryable failures.
    #[error("the model provider is unavailable after {attempts} attempts: {last}")]
    Unavailable {
        /// Attempts made over the whole chain.
        attempts: u32,
        /// The last failure.
        last: String,
    },
    /// A timeout (connect, first token, idle between chunks) after the first event.
    #[error("the model stream timed out: {0}")]
    Timeout(String),
    /// The stream failed after its first event (an `error` event, a cut connection):
    /// not retried, since the caller already saw part of it.
    #[error("the model stream failed: {0}")]
    Stream(String),
    /// The answer could not be understood.
    #[error("the model's answer is invalid: {0}")]
    InvalidResponse(String),
    /// The call was cancelled.
    #[error("the model call was cancelled")]
    Cancelled,
}

impl LlmError {
    /// The stable code of the failure.
    pub fn code(&self) -> &'static str {
        match self {
            LlmError::NoProvider => "no_model_provider",
            LlmError::UnknownModel(_) => "unknown_model",
            LlmError::Refused { .. } => "model_refused",
            LlmError::QuotaExceeded(_) => "model_quota_exceeded",
            LlmError::Unavailable { .. } => "model_unavailable",
            LlmError::Timeout(_) => "model_timeout",
            LlmError::Stream(_) => "model_stream_failed",
            LlmError::InvalidResponse(_) => "model_invalid_response",
            LlmError::Cancelled => "cancelled",
        }
    }
}

/// A configured model, as callers choose and price it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// The configured id.
    pub id: String,
    /// The provider's configured name.
    pub provider: String,
    /// Its tier.
    pub tier: ModelTier,
    /// Context window, in tokens.
    pub context_window: u32,
    /// Largest answer, in tokens.
    pub max_output_tokens: u32,
    /// Models tried next, in order, when this one is unavailable.
    pub fallbacks: Vec<String>,
}

/// A streamed answer. Dropping it closes the connection.
#[async_trait]
pub trait ChatStream: Send {
    /// The next event; `None` after [`ChatEvent::Completed`] or an error.
    async fn next(&mut self) -> Option<Result<ChatEvent, LlmError>>;
}

/// Model providers: the `maestro-llm` adapter, or a scripted fake in tests.
#[async_trait]
pub trait ModelProvider: Send + Sync + std::fmt::Debug {
    /// The configured models (empty when no provider is configured).
    fn models(&self) -> Vec<ModelInfo>;

    /// Starts a streamed answer: retries and falls back along the model's chain until
    /// the first event, then streams. Errors before the stream starts are returned here.
    async fn stream(&self, request: ChatRequest) -> Result<Box<dyn ChatStream>, LlmError>;
}

/// The model chosen for a tier: the first configured model of that tier, else the
/// nearest tier (preferring a larger one), else the first model.
pub fn model_for_tier(models: &[ModelInfo], tier: ModelTier) -> Option<&ModelInfo> {
    let rank = |t: ModelTier| match t {
        ModelTier::Small => 0i32,
        ModelTier::Medium => 1,
        ModelTier::Large => 2,
    };
    let wanted = rank(tier);
    models.iter().min_by_key(|m| {
        let distance = rank(m.tier) - wanted;
        // Exact first, then larger by distance, then smaller by distance.
        if distance >= 0 { distance * 2 } else { -distance * 2 + 1 }
    })
}

/// Tier names as configuration and the API write them: `fast`, `balanced`, `best`
/// (`small`, `medium`, `large` are accepted too).
pub fn parse_tier(name: &str) -> Option<ModelTier> {
    match name {
        "fast" | "small" => Some(ModelTier::Small),
        "balanced" | "medium" => Some(ModelTier::Medium),
        "best" | "large" => Some(ModelTier::Large),
        _ => None,
    }
}

/// A tier's configuration name (`fast`, `balanced`, `best`).
pub fn tier_name(tier: ModelTier) -> &'static str {
    match tier {
        ModelTier::Small => "fast",
        ModelTier::Medium => "balanced",
        ModelTier::Large => "best",
    }
}

/// A safe upper bound of a request's prompt tokens without its tokenizer: every token
/// of a byte-level BPE covers at least one byte, so the UTF-8 length of everything
/// sent, plus a per-message allowance for the chat template, bounds it.
pub fn prompt_token_bound(request: &ChatRequest) -> u64 {
    const PER_MESSAGE: u64 = 16;
    const PER_TOOL: u64 = 32;
    let messages: u64 = request
        .messages
        .iter()
        .map(|m| {
            let calls: usize = m.tool_calls.iter().map(|c| c.id.len() + c.name.len() + c.arguments.len()).sum();
            (m.content.len() + calls) as u64 + PER_MESSAGE
        })
        .sum();
    let tools: u64 = request
        .tools
        .iter()
        .map(|t| (t.name.len() + t.description.len() + t.parameters.to_string().len()) as u64 + PER_TOOL)
        .sum();
    let schema = request.response_schema.as_ref().map_or(0, |s| s.schema.to_string().len() as u64 + PER_TOOL);
    messages + tools + schema + PER_MESSAGE
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(id: &str, tier: ModelTier) -> ModelInfo {
        ModelInfo {
            id: id.into(),
            provider: "p".into(),
            tier,
            context_window: 1000,
            max_output_tokens: 100,
            fallbacks: vec![],
        }
    }

    #[test]
    fn a_tier_picks_its_own_model_then_a_larger_one() {
        let models = [model("big", ModelTier::Large), model("small", ModelTier::Small)];
        assert_eq!(model_for_tier(&models, ModelTier::Small).map(|m| m.id.as_str()), Some("small"));
        assert_eq!(model_for_tier(&models, ModelTier::Medium).map(|m| m.id.as_str()), Some("big"));
        assert_eq!(model_for_tier(&models[1..], ModelTier::Large).map(|m| m.id.as_str()), Some("small"));
        assert!(model_for_tier(&[], ModelTier::Large).is_none());
    }

    #[test]
    fn the_prompt_bound_is_at_least_the_bytes_sent() {
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![ChatMessage::new(ChatRole::User, "héllo wörld")],
            tools: vec![],
            max_tokens: None,
            temperature: None,
            response_schema: None,
        };
        assert!(prompt_token_bound(&request) >= "héllo wörld".len() as u64);
    }

    #[test]
    fn tiers_parse_by_both_names() {
        assert_eq!(parse_tier("fast"), Some(ModelTier::Small));
        assert_eq!(parse_tier("large"), Some(ModelTier::Large));
        assert_eq!(parse_tier("huge"), None);
        assert_eq!(tier_name(ModelTier::Medium), "balanced");
    }
}

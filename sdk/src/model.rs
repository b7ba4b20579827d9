//! Asking the platform's models for a completion (`maestro:plugin/model`, new in 0.2.0).
//!
//! The host answers through the *caller's* model providers and charges the caller's
//! credits; policy decides whether your plugin may ask at all (a grant's `model_tiers`),
//! which tiers and how many answer tokens per completion (`model_max_tokens`). Without
//! such a grant every request is [`ModelError::Denied`]. Over MCP the host may answer
//! with the client's own model instead (sampling).
//!
//! ```
//! use maestro_sdk::ModelTier;
//! use maestro_sdk::model::{self, Completion, Request};
//! use maestro_sdk::testing::FakeHost;
//!
//! let host = FakeHost::install();
//! host.on_complete(|request| Ok(Completion::text(format!("{} messages", request.messages.len()))));
//!
//! let answer = model::complete(
//!     &Request::new(ModelTier::Small, 200).system("Be brief.").user("Summarise: …"),
//! )
//! .expect("answered");
//! assert_eq!(answer.text, "2 messages");
//! assert_eq!(host.completions()[0].max_tokens, 200);
//! ```

use std::fmt;

use serde::de::DeserializeOwned;

use crate::persona::ModelTier;
use crate::tool::ToolError;

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions.
    System,
    /// The person (or your plugin speaking for one).
    User,
    /// The model.
    Assistant,
}

/// One message of the conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub text: String,
}

/// A completion request: messages, the tier of model, the answer's token cap and,
/// optionally, a JSON Schema the answer must fit.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// The conversation, system message first when there is one.
    pub messages: Vec<Message>,
    /// Which class of model to ask.
    pub tier: ModelTier,
    /// Largest answer, in tokens (at most what policy allows per completion).
    pub max_tokens: u32,
    /// The JSON Schema (an object) the answer must fit, for structured answers.
    pub schema: Option<serde_json::Value>,
}

impl Request {
    /// A request to a model of `tier` answering in at most `max_tokens` tokens.
    pub fn new(tier: ModelTier, max_tokens: u32) -> Self {
        Self { messages: Vec::new(), tier, max_tokens, schema: None }
    }

    /// Adds a message.
    #[must_use]
    pub fn message(mut self, role: Role, text: impl Into<String>) -> Self {
        self.messages.push(Message { role, text: text.into() });
        self
    }

    /// Adds a system message.
    #[must_use]
    pub fn system(self, text: impl Into<String>) -> Self {
        self.message(Role::System, text)
    }

    /// Adds a user message.
    #[must_use]
    pub fn user(self, text: impl Into<String>) -> Self {
        self.message(Role::User, text)
    }

    /// Adds an assistant message.
    #[must_use]
    pub fn assistant(self, text: impl Into<String>) -> Self {
        self.message(Role::Assistant, text)
    }

    /// Asks for a JSON answer fitting `schema` (see also [`complete_as`]).
    #[must_use]
    pub fn schema(mut self, schema: serde_json::Value) -> Self {
        self.schema = Some(schema);
        self
    }
}

/// A model's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Completion {
    /// The answer's text.
    pub text: String,
    /// With a schema: the answer as JSON, checked against it by the host.
    pub structured: Option<serde_json::Value>,
    /// Which model answered.
    pub model: String,
    /// Prompt tokens used.
    pub input_tokens: u64,
    /// Answer tokens used.
    pub output_tokens: u64,
    /// Credits the caller was charged.
    pub credits: u64,
}

impl Completion {
    /// A plain text answer (for fakes in tests): model `fake`, no usage, free.
    pub fn text(text: impl Into<String>) -> Self {
        Self {
            text: text.into(),
            structured: None,
            model: "fake".to_owned(),
            input_tokens: 0,
            output_tokens: 0,
            credits: 0,
        }
    }

    /// A structured answer (for fakes in tests).
    pub fn structured(value: serde_json::Value) -> Self {
        Self { structured: Some(value.clone()), ..Self::text(value.to_string()) }
    }
}

/// Why there is no completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelError {
    /// Policy does not let this call use models, this tier, or this many tokens.
    Denied(String),
    /// The request is malformed.
    InvalidRequest(String),
    /// The caller's credits do not cover the request's worst case.
    InsufficientCredits(String),
    /// The model failed or is unavailable.
    Failed(String),
    /// The call was cancelled.
    Cancelled,
}

impl fmt::Display for ModelError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ModelError::Denied(m) => write!(f, "model access denied: {m}"),
            ModelError::InvalidRequest(m) => write!(f, "invalid model request: {m}"),
            ModelError::InsufficientCredits(m) => write!(f, "{m}"),
            ModelError::Failed(m) => write!(f, "{m}"),
            ModelError::Cancelled => f.write_str("cancelled"),
        }
    }
}

impl std::error::Error for ModelError {}

impl From<ModelError> for ToolError {
    /// A cancelled completion cancels the tool; every other failure fails it with the
    /// reason.
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::Cancelled => ToolError::Cancelled,
            other => ToolError::failed(other),
        }
    }
}

/// Asks a model for a completion and waits for the whole answer.
pub fn complete(request: &Request) -> Result<Completion, ModelError> {
    crate::host::sys::complete(request)
}

/// Asks for a structured answer of type `T`: the schema is derived from `T`, the host
/// checks the answer against it, and it is deserialised here.
pub fn complete_as<T: DeserializeOwned + schemars::JsonSchema>(
    request: Request,
) -> Result<(T, Completion), ModelError> {
    let request = request.schema(crate::tool::schema_of::<T>());
    let completion = complete(&request)?;
    let value =
        completion.structured.clone().ok_or_else(|| ModelError::Failed("the answer is not structured".into()))?;
    let typed =
        serde_json::from_value(value).map_err(|e| ModelError::Failed(format!("the answer does not fit: {e}")))?;
    Ok((typed, completion))
}

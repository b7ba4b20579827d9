//! Asking the person behind the call (`maestro:plugin/user`, new in 0.2.0).
//!
//! Over MCP the host asks the client with elicitation when the client offers it: the
//! person sees `message` and a form built from `schema` (MCP elicitation's form: an
//! object whose properties are strings, numbers, integers, booleans or enums, with
//! optional defaults). Where nobody can be asked, [`ask`] fails with
//! [`UserError::NeedsInput`] carrying the question, which converts into a tool failure
//! that says what was needed.
//!
//! ```
//! use maestro_sdk::testing::FakeHost;
//! use maestro_sdk::user::{self, Answer};
//! use serde_json::json;
//!
//! let host = FakeHost::install();
//! let schema = json!({ "type": "object", "properties": { "ok": { "type": "boolean" } }, "required": ["ok"] });
//! assert!(matches!(user::ask("Go ahead?", &schema), Err(user::UserError::NeedsInput(_))));
//! host.on_ask(|_, _| Ok(Answer::Accepted(json!({ "ok": true }))));
//! assert_eq!(user::ask("Go ahead?", &schema), Ok(Answer::Accepted(json!({ "ok": true }))));
//! assert_eq!(host.questions()[1].0, "Go ahead?");
//! ```

use std::fmt;

use crate::tool::ToolError;

/// What the person did.
#[derive(Debug, Clone, PartialEq)]
pub enum Answer {
    /// Answered with this JSON object (fitting the schema).
    Accepted(serde_json::Value),
    /// Declined to answer.
    Declined,
    /// Dismissed the question without deciding.
    Cancelled,
}

/// Why there is no answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserError {
    /// Nobody can be asked here; carries the question.
    NeedsInput(String),
    /// The schema is not one a person can be asked with.
    InvalidRequest(String),
    /// Asking failed.
    Failed(String),
}

impl fmt::Display for UserError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserError::NeedsInput(question) => write!(f, "needs input from the user: {question}"),
            UserError::InvalidRequest(m) => write!(f, "invalid question: {m}"),
            UserError::Failed(m) => write!(f, "{m}"),
        }
    }
}

impl std::error::Error for UserError {}

impl From<UserError> for ToolError {
    /// Every failure to get an answer fails the tool with the reason (and the question).
    fn from(error: UserError) -> Self {
        ToolError::failed(error)
    }
}

/// Asks the person `message`, expecting an answer that fits `schema`; waits for it.
pub fn ask(message: &str, schema: &serde_json::Value) -> Result<Answer, UserError> {
    crate::host::sys::ask(message, schema)
}

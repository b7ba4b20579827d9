//! Built-in tools: tools the host itself provides (`documents.read`, …), offered next to
//! plugin tools and run through the same pipeline (policy, rate, calls in flight,
//! credits, settle; see [`super::Tools::call_in`]). Their names are `area.tool` like a
//! plugin's, and the areas are reserved plugin names
//! ([`maestro_core::plugin::RESERVED_PLUGIN_NAMES`]), so a policy glob such as
//! `documents.*` grants them exactly like a plugin's tools.
//!
//! A built-in tool may ask its caller to record run events with the call's result
//! ([`HostResult::events`], e.g. `document.updated`): the runner commits them in the
//! unit of work of the call's `tool.result`. Callers outside a run (HTTP, MCP) have no
//! run to record them in.

use async_trait::async_trait;
use maestro_core::call::Failure;
use maestro_core::plugin::{ToolError, ToolOutput, ToolSpec};
use maestro_core::run::{EventBody, RunId, SessionId};

use super::Principal;

/// Where a call is made from: the run, its session, the step and the persona (absent
/// for calls over HTTP and MCP).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// The run.
    pub run: RunId,
    /// The run's session.
    pub session: SessionId,
    /// The step.
    pub step: u32,
    /// The persona (`plugin.persona`) whose model asked for the call.
    pub persona: String,
}

/// One call of a built-in tool, authorised and admitted by the pipeline.
#[derive(Debug, Clone)]
pub struct HostCall {
    /// Who calls.
    pub principal: Principal,
    /// The arguments (a JSON object).
    pub arguments: serde_json::Value,
    /// Where from, inside a run.
    pub origin: Option<Origin>,
}

/// What a built-in tool did.
#[derive(Debug)]
pub struct HostResult {
    /// The result, or why there is none (an error the model can read is
    /// [`Failure::ToolError`]; a host-side failure is [`Failure::Unavailable`] and is
    /// refunded).
    pub outcome: Result<ToolOutput, Failure>,
    /// Run events to record with the call's result (for a call made in a run).
    pub events: Vec<EventBody>,
}

impl HostResult {
    /// A result without events.
    pub fn output(output: ToolOutput) -> Self {
        Self { outcome: Ok(output), events: Vec::new() }
    }

    /// An error the caller (a model) reads.
    pub fn error(message: impl Into<String>) -> Self {
        Self { outcome: Err(Failure::ToolError(ToolError::Failed(message.into()))), events: Vec::new() }
    }

    /// Arguments that do not fit the tool's schema.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self { outcome: Err(Failure::ToolError(ToolError::InvalidArguments(message.into()))), events: Vec::new() }
    }

    /// A failure on the host's side (the store): the detail is for the log only.
    pub fn unavailable(detail: impl Into<String>) -> Self {
        Self { outcome: Err(Failure::Unavailable { detail: detail.into() }), events: Vec::new() }
    }
}

/// A tool the host provides.
#[async_trait]
pub trait HostTool: Send + Sync + std::fmt::Debug {
    /// The qualified name (`documents.read`).
    fn name(&self) -> &str;
    /// Its spec (`name` is the part after the area, like a plugin tool's).
    fn spec(&self) -> &ToolSpec;
    /// Runs one call.
    async fn call(&self, call: HostCall) -> HostResult;

    /// A short block for the context of models working in `session` (what exists for
    /// this tool to act on, e.g. the session's documents); `None` when there is nothing
    /// to say. A failure to build it is logged and leaves the block out.
    async fn context(&self, _principal: &Principal, _session: &SessionId) -> Option<String> {
        None
    }
}

//! A plugin's completions served by the MCP client's own model (`sampling/createMessage`)
//! when the client declared `sampling` in a 2025-11-25 session: the client's model
//! answers and the client (its user) pays, so the host charges nothing; the caller's
//! grant still decides whether the tool may ask at all (`tools::platform`). A stateless
//! 2026-07-28 request whose client declared sampling cannot be asked mid-call: its
//! completions are left to the client's retry ([`Deferred`], SEP-2322); without the
//! declaration the host's providers answer.
#![allow(deprecated)] // sampling is deprecated by SEP-2577 but is what 2025-11-25 clients offer

use rmcp::Peer;
use rmcp::model::{
    ClientResult, CreateMessageRequest, CreateMessageRequestParams, GetExtensions, ModelPreferences, ProtocolVersion,
    RequestId, Role, SamplingMessage, SamplingMessageContentBlock, ServerRequest,
};
use rmcp::service::{OriginatingRequestId, RequestContext, RoleServer};

use maestro_core::call::{Completion, CompletionRequest, CompletionRole, Platform, PlatformError};
use maestro_core::plugin::ModelTier;

/// The client's sampling, for one call.
#[derive(Debug)]
pub(super) struct Sampling {
    peer: Peer<RoleServer>,
    /// The tool call the completions belong to: they ride its response stream, as the
    /// elicitation's questions do (`elicitation::Elicitation`).
    origin: RequestId,
}

impl Sampling {
    /// The client's sampling, when it declared the capability in a session that can
    /// carry server-to-client requests.
    pub(super) fn offered(context: &RequestContext<RoleServer>) -> Option<Self> {
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        let declared = context.peer.peer_info().is_some_and(|info| info.capabilities.sampling.is_some());
        (declared && !stateless).then(|| Self { peer: context.peer.clone(), origin: context.id.clone() })
    }
}

/// A stateless (2026-07-28) client that declared sampling in its request: its model
/// answers a plugin's completions, but only on its retry (SEP-2322), so a completion
/// asked here is left open ([`PlatformError::NeedsCompletion`]) and becomes an
/// input-required `sampling/createMessage` (`elicitation::stateless`).
#[derive(Debug)]
pub(super) struct Deferred;

impl Deferred {
    /// The deferred sampling of a stateless request whose client declared `sampling`.
    pub(super) fn offered(context: &RequestContext<RoleServer>) -> Option<Self> {
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        let declared = context.meta.client_capabilities().is_some_and(|c| c.sampling.is_some());
        (stateless && declared).then_some(Self)
    }
}

#[async_trait::async_trait]
impl Platform for Deferred {
    async fn complete(&self, _request: CompletionRequest) -> Result<Completion, PlatformError> {
        Err(PlatformError::NeedsCompletion)
    }
}

/// The `sampling/createMessage` parameters of a plugin's completion request.
pub(super) fn params(request: &CompletionRequest) -> Result<CreateMessageRequestParams, PlatformError> {
    let mut system = Vec::new();
    let mut messages = Vec::new();
    for (role, text) in &request.messages {
        match role {
            CompletionRole::System => system.push(text.clone()),
            CompletionRole::User => messages.push(SamplingMessage::user_text(text.clone())),
            CompletionRole::Assistant => messages.push(SamplingMessage::assistant_text(text.clone())),
        }
    }
    if messages.is_empty() {
        return Err(PlatformError::InvalidRequest("a completion needs a user message".into()));
    }
    let (speed, intelligence) = match request.tier {
        ModelTier::Small => (1.0, 0.0),
        ModelTier::Medium => (0.5, 0.5),
        ModelTier::Large => (0.0, 1.0),
    };
    let mut preferences = ModelPreferences::default();
    preferences.speed_priority = Some(speed);
    preferences.intelligence_priority = Some(intelligence);
    let mut params = CreateMessageRequestParams::new(messages, request.max_tokens);
    params.system_prompt = (!system.is_empty()).then(|| system.join("\n\n"));
    params.model_preferences = Some(preferences);
    Ok(params)
}

/// A client model's answer (`CreateMessageResult`) as the plugin's completion, checked
/// against the request's schema when it has one.
pub(super) fn completion(
    request: &CompletionRequest,
    result: rmcp::model::CreateMessageResult,
) -> Result<Completion, PlatformError> {
    if result.message.role != Role::Assistant {
        return Err(PlatformError::Failed("the client's model answered as the user".into()));
    }
    let text: String = result
        .message
        .content
        .into_vec()
        .iter()
        .filter_map(SamplingMessageContentBlock::as_text)
        .map(|t| t.text.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    let structured = match &request.schema {
        None => None,
        Some(schema) => {
            let value: serde_json::Value = serde_json::from_str(text.trim())
                .map_err(|_| PlatformError::Failed("the model's answer is not JSON".into()))?;
            maestro_core::plugin::schema::validate(schema, &value).map_err(|violation| {
                PlatformError::Failed(format!("the model's answer does not fit the schema: {violation}"))
            })?;
            Some(value)
        }
    };
    Ok(Completion { text, structured, model: result.model, input_tokens: 0, output_tokens: 0, credits: 0 })
}

#[async_trait::async_trait]
impl Platform for Sampling {
    async fn complete(&self, request: CompletionRequest) -> Result<Completion, PlatformError> {
        let params = params(&request)?;
        // What `Peer::create_message` does, with the originating call marked (no tools
        // are ever offered to the client's model here).
        params
            .validate()
            .map_err(|e| PlatformError::InvalidRequest(format!("not a completion a client can make: {e}")))?;
        let mut sample = ServerRequest::CreateMessageRequest(CreateMessageRequest::new(params));
        sample.extensions_mut().insert(OriginatingRequestId(self.origin.clone()));
        let answered = self.peer.send_request(sample).await.map_err(|err| {
            tracing::info!(error = %err, "the MCP client's sampling failed");
            PlatformError::Failed("the client's model did not answer".into())
        })?;
        let ClientResult::CreateMessageResult(result) = answered else {
            return Err(PlatformError::Failed("the client answered something else".into()));
        };
        let result = *result;
        completion(&request, result)
    }
}

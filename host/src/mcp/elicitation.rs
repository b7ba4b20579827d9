//! A plugin's questions (`maestro:plugin/user.ask`) put to the person behind an MCP
//! client with `elicitation/create`, when the client declared `elicitation` in a
//! 2025-11-25 session. Stateless 2026-07-28 requests cannot ask mid-call (SEP-2322 would
//! need the tool to return and be called again), and neither can clients that do not
//! offer it: there the plugin's `ask` fails with `needs-input`, carrying the question.

use rmcp::Peer;
use rmcp::model::{
    ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema, ProtocolVersion,
    ServerRequest,
};
use rmcp::service::{RequestContext, RoleServer};

use maestro_core::call::{Answer, Completion, CompletionRequest, Platform, PlatformError, Question};

/// The client's elicitation, for one call.
#[derive(Debug)]
pub(super) struct Elicitation {
    peer: Peer<RoleServer>,
}

impl Elicitation {
    /// The client's elicitation, when it declared the capability in a session that can
    /// carry server-to-client requests.
    pub(super) fn offered(context: &RequestContext<RoleServer>) -> Option<Self> {
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        let declared = context.peer.peer_info().is_some_and(|info| info.capabilities.elicitation.is_some());
        (declared && !stateless).then(|| Self { peer: context.peer.clone() })
    }
}

#[async_trait::async_trait]
impl Platform for Elicitation {
    /// Elicitation answers questions only; completions come from elsewhere.
    async fn complete(&self, _request: CompletionRequest) -> Result<Completion, PlatformError> {
        Err(PlatformError::Denied("the client's elicitation does not answer completions".into()))
    }

    async fn ask(&self, question: Question) -> Result<Answer, PlatformError> {
        let requested_schema: ElicitationSchema = serde_json::from_value(question.schema).map_err(|e| {
            PlatformError::InvalidRequest(format!("the schema is not one a person can be asked with: {e}"))
        })?;
        let params =
            ElicitRequestParams::FormElicitationParams { meta: None, message: question.message, requested_schema };
        let request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        let result = self.peer.send_request(request).await.map_err(|err| {
            tracing::info!(error = %err, "the MCP client's elicitation failed");
            PlatformError::Failed("the client did not answer the question".into())
        })?;
        let ClientResult::ElicitResult(result) = result else {
            return Err(PlatformError::Failed("the client answered something else".into()));
        };
        Ok(match result.action {
            ElicitationAction::Accept => {
                Answer::Accepted(result.content.unwrap_or_else(|| serde_json::Value::Object(Default::default())))
            }
            ElicitationAction::Decline => Answer::Declined,
            // Cancel, and any action a later revision adds: no answer and no decision.
            _ => Answer::Cancelled,
        })
    }
}

//! A plugin's questions (`maestro:plugin/user.ask`) put to the person behind an MCP
//! client with `elicitation/create`, when the client declared `elicitation` in a
//! 2025-11-25 session. Stateless 2026-07-28 requests cannot ask mid-call (SEP-2322 would
//! need the tool to return and be called again), and neither can clients that do not
//! offer it: there the plugin's `ask` fails with `needs-input`, carrying the question.

use rmcp::Peer;
use rmcp::model::{
    ClientResult, ElicitRequest, ElicitRequestParams, ElicitationAction, ElicitationSchema, GetExtensions,
    ProtocolVersion, RequestId, ServerRequest,
};
use rmcp::service::{OriginatingRequestId, RequestContext, RoleServer};

use maestro_core::call::{Answer, Completion, CompletionRequest, Platform, PlatformError, Question};

/// The client's elicitation, for one call.
#[derive(Debug)]
pub(super) struct Elicitation {
    peer: Peer<RoleServer>,
    /// The client's request (the tool call) the questions belong to: they ride its
    /// response stream (SEP-2260), not the session's GET stream, which the client may
    /// not have opened yet. rmcp marks this only inside the handler's own task, and a
    /// plugin asks from the sandbox's.
    origin: RequestId,
}

impl Elicitation {
    /// The client's elicitation, when it declared the capability in a session that can
    /// carry server-to-client requests.
    pub(super) fn offered(context: &RequestContext<RoleServer>) -> Option<Self> {
        let stateless =
            context.protocol_version().is_some_and(|v| v.as_str() >= ProtocolVersion::V_2026_07_28.as_str());
        let declared = context.peer.peer_info().is_some_and(|info| info.capabilities.elicitation.is_some());
        (declared && !stateless).then(|| Self { peer: context.peer.clone(), origin: context.id.clone() })
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
        let mut request = ServerRequest::ElicitRequest(ElicitRequest::new(params));
        request.extensions_mut().insert(OriginatingRequestId(self.origin.clone()));
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

/// A plugin's questions to a stateless (2026-07-28) client that declared elicitation
/// (SEP-2322): a call that ends needing input becomes an input-required result, one
/// `elicitation/create` per open question (keyed `q<index>`), with a request state the
/// host seals (HMAC-SHA256 under [`StateKey`]): the caller's tenant, the tool, a digest
/// of its arguments, the answers given in earlier rounds and the keys asked now. The
/// client's retry with its input responses is checked (a changed, foreign or stale
/// state is refused with JSON-RPC invalid params) and the call runs again with every
/// answer so far replayed; a question still unanswered is asked again.
pub(super) mod stateless {
    use std::sync::Arc;

    use rmcp::ErrorData;
    use rmcp::model::{
        ElicitRequest, ElicitRequestParams, ElicitationSchema, InputRequest, InputRequiredResult, InputResponses,
    };
    use serde::{Deserialize, Serialize};
    use serde_json::Value;
    use sha2::Digest as _;

    use maestro_core::call::{Answer, AskedCompletion, AskedQuestion, Completion, SuppliedAnswer, SuppliedCompletion};

    /// What distinguishes a plugin call's state from a run's (`maestro-run:`).
    pub(in crate::mcp) const PREFIX: &str = "maestro-ask:";

    /// How long a request state may be handed back.
    const LIFETIME_MS: i64 = 60 * 60 * 1000;

    /// The per-deployment key request states are sealed with.
    #[derive(Clone)]
    pub(crate) struct StateKey(Arc<[u8; 32]>);

    impl std::fmt::Debug for StateKey {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("StateKey(<redacted>)")
        }
    }

    impl StateKey {
        /// A key of this process only (its states do not survive a restart or reach
        /// another replica).
        pub(crate) fn random() -> Self {
            Self(Arc::new(crate::random::random_bytes::<32>()))
        }

        /// The key derived from a configured secret (SHA-256 of it).
        pub(crate) fn from_secret(secret: &str) -> Self {
            Self(Arc::new(sha2::Sha256::digest(secret.as_bytes()).into()))
        }
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct State {
        tenant: String,
        tool: String,
        arguments: String,
        at: i64,
        answers: Vec<Given>,
        asked: Vec<Asked>,
        #[serde(default)]
        completions: Vec<GivenCompletion>,
        #[serde(default)]
        sampled: Vec<Sampled>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct GivenCompletion {
        index: u32,
        digest: String,
        text: String,
        structured: Option<Value>,
        model: String,
    }

    /// A completion asked of the client's model: its key, place, digest and request
    /// (to check the answer against its schema).
    #[derive(Debug, Serialize, Deserialize)]
    struct Sampled {
        key: String,
        index: u32,
        digest: String,
        schema: Option<Value>,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Given {
        index: u32,
        digest: String,
        answer: Value,
    }

    #[derive(Debug, Serialize, Deserialize)]
    struct Asked {
        key: String,
        index: u32,
        digest: String,
    }

    fn digest(arguments: &Value) -> String {
        hex::encode(sha2::Sha256::digest(arguments.to_string().as_bytes()))
    }

    /// An elicitation result (`{action, content}`) as the plugin's answer.
    fn answer(response: &Value) -> Answer {
        match response["action"].as_str() {
            Some("accept") => {
                Answer::Accepted(response.get("content").cloned().unwrap_or_else(|| Value::Object(Default::default())))
            }
            Some("decline") => Answer::Declined,
            _ => Answer::Cancelled,
        }
    }

    fn response(answer: &Answer) -> Value {
        match answer {
            Answer::Accepted(content) => serde_json::json!({ "action": "accept", "content": content }),
            Answer::Declined => serde_json::json!({ "action": "decline" }),
            Answer::Cancelled => serde_json::json!({ "action": "cancel" }),
        }
    }

    fn refused(why: &str) -> ErrorData {
        ErrorData::invalid_params(format!("the request state is not valid: {why}"), None)
    }

    /// The answers a retry carries for `tool` called with `arguments` by `tenant`: those
    /// of earlier rounds (in the state) and the input responses to the questions the
    /// state asked. No state: none (a fresh call). A state this deployment did not seal
    /// for this call, or too old, is refused.
    pub(in crate::mcp) fn answers(
        key: &StateKey,
        (tenant, tool, arguments): (&str, &str, &Value),
        state: Option<&str>,
        responses: Option<&InputResponses>,
    ) -> Result<(Vec<SuppliedAnswer>, Vec<SuppliedCompletion>), ErrorData> {
        let Some(sealed) = state.and_then(|s| s.strip_prefix(PREFIX)) else {
            return Ok((Vec::new(), Vec::new()));
        };
        let payload = maestro_core::call::unseal(&key.0[..], sealed)
            .ok_or_else(|| refused("it was changed, or another server issued it"))?;
        let state: State = serde_json::from_slice(&payload).map_err(|_| refused("it cannot be read"))?;
        if state.tenant != tenant || state.tool != tool || state.arguments != digest(arguments) {
            return Err(refused("it belongs to another call"));
        }
        let age = chrono::Utc::now().timestamp_millis() - state.at;
        if !(0..=LIFETIME_MS).contains(&age) {
            return Err(refused("it expired; call the tool again"));
        }
        let mut supplied: Vec<SuppliedAnswer> = state
            .answers
            .into_iter()
            .map(|g| SuppliedAnswer { index: g.index, digest: g.digest, answer: answer(&g.answer) })
            .collect();
        for asked in state.asked {
            if let Some(response) = responses.and_then(|r| r.get(&asked.key)) {
                supplied.push(SuppliedAnswer { index: asked.index, digest: asked.digest, answer: answer(response) });
            }
        }
        let mut completions: Vec<SuppliedCompletion> = state
            .completions
            .into_iter()
            .map(|g| SuppliedCompletion {
                index: g.index,
                digest: g.digest,
                completion: Completion {
                    text: g.text,
                    structured: g.structured,
                    model: g.model,
                    input_tokens: 0,
                    output_tokens: 0,
                    credits: 0,
                },
            })
            .collect();
        for sampled in state.sampled {
            let Some(response) = responses.and_then(|r| r.get(&sampled.key)) else { continue };
            // An answer that is not a model's message is not taken: the completion is asked again.
            let Ok(result) = serde_json::from_value::<rmcp::model::CreateMessageResult>(response.clone()) else {
                continue;
            };
            let request = maestro_core::call::CompletionRequest {
                messages: Vec::new(),
                tier: maestro_core::plugin::ModelTier::Medium,
                max_tokens: 0,
                schema: sampled.schema,
            };
            if let Ok(completion) = crate::mcp::sampling::completion(&request, result) {
                completions.push(SuppliedCompletion { index: sampled.index, digest: sampled.digest, completion });
            }
        }
        Ok((supplied, completions))
    }

    /// The input-required result asking `open` (with the answers so far sealed in its
    /// state); `None` when a question's schema is not one elicitation can carry.
    pub(in crate::mcp) fn input_required(
        key: &StateKey,
        (tenant, tool, arguments): (&str, &str, &Value),
        (supplied, supplied_completions): (&[SuppliedAnswer], &[SuppliedCompletion]),
        (open, open_completions): (&[AskedQuestion], &[AskedCompletion]),
    ) -> Option<InputRequiredResult> {
        let mut requests = rmcp::model::InputRequests::new();
        let mut sampled = Vec::with_capacity(open_completions.len());
        for asked in open_completions {
            let params = crate::mcp::sampling::params(&asked.request).ok()?;
            let name = format!("m{}", asked.index);
            let request = rmcp::model::CreateMessageRequest::new(params);
            requests.insert(name.clone(), InputRequest::CreateMessage(request));
            sampled.push(Sampled {
                key: name,
                index: asked.index,
                digest: asked.request.digest(),
                schema: asked.request.schema.clone(),
            });
        }
        let mut asked = Vec::with_capacity(open.len());
        for question in open {
            let requested_schema: ElicitationSchema = serde_json::from_value(question.question.schema.clone()).ok()?;
            let params = ElicitRequestParams::FormElicitationParams {
                meta: None,
                message: question.question.message.clone(),
                requested_schema,
            };
            let name = format!("q{}", question.index);
            requests.insert(name.clone(), InputRequest::Elicitation(ElicitRequest::new(params)));
            asked.push(Asked { key: name, index: question.index, digest: question.question.digest() });
        }
        let state = State {
            tenant: tenant.to_owned(),
            tool: tool.to_owned(),
            arguments: digest(arguments),
            at: chrono::Utc::now().timestamp_millis(),
            answers: supplied
                .iter()
                .map(|s| Given { index: s.index, digest: s.digest.clone(), answer: response(&s.answer) })
                .collect(),
            asked,
            completions: supplied_completions
                .iter()
                .map(|s| GivenCompletion {
                    index: s.index,
                    digest: s.digest.clone(),
                    text: s.completion.text.clone(),
                    structured: s.completion.structured.clone(),
                    model: s.completion.model.clone(),
                })
                .collect(),
            sampled,
        };
        let payload = serde_json::to_vec(&state).ok()?;
        let sealed = maestro_core::call::seal(&key.0[..], &payload);
        Some(InputRequiredResult::new(Some(requests), Some(format!("{PREFIX}{sealed}"))))
    }
}

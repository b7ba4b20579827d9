//! Distillation: after a run completes, a background job ([`DISTIL_JOB`], enqueued by
//! the runner in the unit of work that records `run.completed`) asks a `fast`-tier model
//! for the durable facts of the run's conversation (its triggering message and the
//! personas' answers) and stores each as a memory through [`Memories::remember`]: a fact
//! near-duplicating one already held in its scope updates that one instead of adding
//! another, so a retried job (or a fact repeated by a later run) does not double-insert.
//!
//! The model answers strict JSON (`{"facts": [{"text", "tags", "scope", "persona"}]}`,
//! asked for with a response schema): each fact's text and tags are validated, its scope
//! is `tenant` or `persona` (a persona of the run's team). Every fact is checked before
//! any is written: an answer that does not parse or holds an invalid fact fails the job
//! for good with a message saying why, and nothing is written. At most
//! `[memory] distil_max_facts` facts are kept (the first ones). Each memory names the run
//! as its source, step 0 (the run as a whole).
//!
//! The call is paid by the run's tenant like any model call of the run: a hold for the
//! worst case before it (key `memory.distil:<run>:a<attempt>:hold`), settled at the
//! reported usage after it (key `memory.distil:<run>:settle`), memo naming the run; it
//! is not added to the run's totals (the run ended before). A tenant that cannot cover
//! the hold gets no distillation (the job fails with `insufficient credits`).
//!
//! A job is idempotent per run: the model's answer is recorded durably with its hold and
//! the amount to settle ([`Distillation`], one per run) before the settlement and before
//! any fact is written. A retried job (after a store failure, or a worker that died after
//! the call) finds the record and reuses it: no second model call, no second hold, and the
//! settlement of the recorded hold is posted again under its one key, which the ledger
//! replays when it was posted already. Only a crash between the model's answer and its
//! record asks the model again (that attempt's hold then expires unsettled).

use std::sync::Arc;

use async_trait::async_trait;
use maestro_core::ledger::Hold;
use maestro_core::llm::{
    ChatEvent, ChatMessage, ChatRequest, ChatResponse, ChatRole, LlmError, ModelProvider, ResponseSchema,
    model_for_tier, prompt_token_bound,
};
use maestro_core::memory::{MemoryScope, MemorySource, normalise_tags, validate_text};
use maestro_core::plugin::ModelTier;
use maestro_core::ports::Distillation;
use maestro_core::run::{Author, Message, Run, RunId, RunState};
use maestro_core::{Clock, Job, NewJob, RunStore};
use serde::Deserialize;

use crate::config::ModelPrice;
use crate::credits::{Credits, CreditsError};
use crate::jobs::{JobError, JobHandler};
use crate::memory::{Memories, MemoriesError, NewMemory, Remembered};
use crate::orchestrator::pricing::{self, Pricing};

/// The kind of the job that distils a completed run into memories.
pub const DISTIL_JOB: &str = "memory.distil";
/// The largest answer asked of the distillation model, in tokens.
const MAX_ANSWER_TOKENS: u32 = 1024;
/// Messages are read in pages of this size.
const PAGE: u32 = 200;
/// How long a distillation's hold may stay open before the sweeper returns it.
const HOLD_LIFETIME: chrono::Duration = chrono::Duration::minutes(30);

/// The job that distils `run` (one per run: its key is the run's).
pub fn distil_job(run: &RunId, at: chrono::DateTime<chrono::Utc>) -> Option<NewJob> {
    NewJob::new(DISTIL_JOB, &format!("{DISTIL_JOB}:{run}"), &serde_json::json!({ "run": run }), at).ok()
}

/// Why a distillation stored nothing.
#[derive(Debug, thiserror::Error)]
pub enum DistilError {
    /// The model's answer is not the JSON asked for, or holds an invalid fact.
    #[error("the distillation model's answer is unusable: {0}")]
    Malformed(String),
    /// The job names a run that does not exist.
    #[error("run {0} not found")]
    RunNotFound(RunId),
    /// No model is configured.
    #[error("no model is configured for distillation")]
    NoModel,
    /// The model call failed.
    #[error("the distillation model failed: {0}")]
    Model(#[source] LlmError),
    /// The tenant cannot pay for the call.
    #[error(transparent)]
    Credits(#[from] CreditsError),
    /// A memory could not be stored.
    #[error(transparent)]
    Memory(#[from] MemoriesError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] maestro_core::StoreError),
}

/// What distillation works with.
#[derive(Debug, Clone)]
pub struct DistilPorts {
    /// Runs and their messages.
    pub runs: Arc<dyn RunStore>,
    /// Model providers.
    pub models: Arc<dyn ModelProvider>,
    /// Where facts are remembered.
    pub memories: Arc<Memories>,
    /// The ledger the call is paid on.
    pub credits: Arc<Credits>,
    /// Model prices (`[[credits.models]]`).
    pub prices: Vec<ModelPrice>,
    /// The time.
    pub clock: Arc<dyn Clock>,
}

/// What one distillation did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Distilled {
    /// New memories.
    pub inserted: usize,
    /// Memories updated by a near-duplicate fact.
    pub updated: usize,
}

/// The [`DISTIL_JOB`] handler.
#[derive(Debug)]
pub struct Distil {
    ports: DistilPorts,
    pricing: Pricing,
    max_facts: u32,
}

/// One fact as the model answers it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFact {
    text: String,
    #[serde(default)]
    tags: Vec<String>,
    scope: String,
    #[serde(default)]
    persona: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    facts: Vec<RawFact>,
}

impl Distil {
    /// Distillation over `ports`, keeping at most `max_facts` facts per run.
    pub fn new(ports: DistilPorts, max_facts: u32) -> Self {
        let pricing = Pricing::new(ports.prices.clone());
        Self { ports, pricing, max_facts }
    }

    /// Distils `run` (a run that did not complete is left alone); `attempt` numbers the
    /// hold's key.
    pub async fn distil(&self, id: &RunId, attempt: u32) -> Result<Distilled, DistilError> {
        let Some(run) = self.ports.runs.run(None, id).await? else {
            return Err(DistilError::RunNotFound(id.clone()));
        };
        if run.state != RunState::Completed {
            return Ok(Distilled::default());
        }
        let Some(session) = self.ports.runs.session(&run.tenant, &run.session).await? else {
            return Ok(Distilled::default());
        };
        let conversation = self.conversation(&run).await?;
        if conversation.is_empty() {
            return Ok(Distilled::default());
        }
        let answer = match self.ports.memories.distillation(&run.id).await? {
            Some(recorded) => {
                self.settle(&run, &recorded).await;
                recorded.answer
            }
            None => self.ask(&run, &session.personas, &conversation, attempt).await?,
        };
        let facts = parse(&answer, &session.personas, self.max_facts as usize)?;
        let mut distilled = Distilled::default();
        for fact in facts {
            let new = NewMemory { source: Some(MemorySource { run: run.id.clone(), step: 0 }), ..fact };
            match self.ports.memories.remember(&run.tenant, new).await? {
                (_, Remembered::Inserted) => distilled.inserted += 1,
                (_, Remembered::Updated) => distilled.updated += 1,
            }
        }
        Ok(distilled)
    }

    /// Asks the model for the facts of `conversation`, records its answer, then settles
    /// the call; returns the answer recorded (an earlier attempt's, should one have
    /// recorded it meanwhile).
    async fn ask(
        &self,
        run: &Run,
        team: &[String],
        conversation: &[Message],
        attempt: u32,
    ) -> Result<String, DistilError> {
        let models = self.ports.models.models();
        let model = model_for_tier(&models, ModelTier::Small).cloned().ok_or(DistilError::NoModel)?;
        let max_tokens = MAX_ANSWER_TOKENS.min(model.max_output_tokens);
        let mut request = ChatRequest {
            model: model.id.clone(),
            messages: vec![ChatMessage::new(ChatRole::System, prompt(team, self.max_facts))],
            tools: vec![],
            max_tokens: Some(max_tokens),
            temperature: Some(0.0),
            response_schema: Some(schema(team)),
        };
        // The newest messages that fit the model's window (a long run loses its start).
        let room =
            u64::from(model.context_window.saturating_sub(max_tokens)).saturating_sub(prompt_token_bound(&request));
        request.messages.push(ChatMessage::new(ChatRole::User, transcript(conversation, room)));
        self.call(run, attempt, &models, &model.id, request).await
    }

    /// The run's triggering message and its personas' answers, in order.
    async fn conversation(&self, run: &Run) -> Result<Vec<Message>, DistilError> {
        let mut picked = Vec::new();
        let mut after = 0;
        loop {
            let page = self.ports.runs.messages(&run.tenant, &run.session, after, PAGE).await?;
            let done = page.len() < PAGE as usize;
            after = page.last().map_or(after, |m| m.seq);
            picked.extend(page.into_iter().filter(|m| m.id == run.trigger || m.run.as_ref() == Some(&run.id)));
            if done {
                return Ok(picked);
            }
        }
    }

    /// One model call, held for on the tenant's wallet, its answer recorded with the
    /// amount to settle, then settled; returns the recorded answer.
    async fn call(
        &self,
        run: &Run,
        attempt: u32,
        models: &[maestro_core::llm::ModelInfo],
        model: &str,
        request: ChatRequest,
    ) -> Result<String, DistilError> {
        let chain = pricing::chain(models, model);
        let prompt = prompt_token_bound(&request);
        let max_tokens = request.max_tokens.unwrap_or(MAX_ANSWER_TOKENS);
        let worst = self
            .pricing
            .worst_case(&chain, prompt, max_tokens)
            .ok_or(DistilError::Credits(CreditsError::InvalidAmount(i64::MAX)))?;
        let key = format!("{DISTIL_JOB}:{}:a{attempt}", run.id);
        let memo = format!("run {}: memory distillation ({model})", run.id);
        let hold = if worst > 0 {
            Some(
                self.ports
                    .credits
                    .reserve(&run.tenant, worst, HOLD_LIFETIME, &format!("{key}:hold"), &memo)
                    .await?
                    .hold,
            )
        } else {
            None
        };
        let answered = stream(self.ports.models.as_ref(), request).await;
        let response = match answered {
            Ok(response) => response,
            Err(err) => {
                if let Some(hold) = &hold {
                    self.release(run, hold, &key).await;
                }
                return Err(DistilError::Model(err));
            }
        };
        let charge = hold.as_ref().map(|hold| {
            let usage = if response.usage_reported {
                response.usage
            } else {
                let output = u64::try_from(response.text.len()).unwrap_or(u64::MAX);
                maestro_core::llm::Usage { input_tokens: prompt, output_tokens: output, ..Default::default() }
            };
            let actual = self.pricing.settlement(&response.model, &usage).unwrap_or(worst).min(hold.amount);
            (hold.id.clone(), actual)
        });
        let mine = Distillation {
            run: run.id.clone(),
            tenant: run.tenant.clone(),
            answer: response.text,
            charge,
            at: self.ports.clock.now(),
        };
        let recorded = match self.ports.memories.record_distillation(&mine).await {
            Ok(recorded) => recorded,
            Err(err) => {
                if let Some(hold) = &hold {
                    self.release(run, hold, &key).await;
                }
                return Err(err.into());
            }
        };
        if let Some(hold) = &hold
            && recorded.charge.as_ref().map(|(id, _)| id) != Some(&hold.id)
        {
            // Another attempt recorded its answer first: that one is kept and paid.
            self.release(run, hold, &key).await;
        }
        self.settle(run, &recorded).await;
        Ok(recorded.answer)
    }

    /// Settles the recorded call's hold for its recorded amount, under the run's one
    /// settlement key (replayed by the ledger when already posted).
    async fn settle(&self, run: &Run, recorded: &Distillation) {
        let Some((hold, amount)) = &recorded.charge else { return };
        let key = format!("{DISTIL_JOB}:{}:settle", run.id);
        if let Err(err) = self.ports.credits.settle(&run.tenant, hold, *amount, &key).await {
            tracing::error!(error = %err, run = %run.id, hold = %hold, "cannot settle the distillation's hold; it expires later");
        }
    }

    async fn release(&self, run: &Run, hold: &Hold, key: &str) {
        if let Err(err) = self.ports.credits.void(&run.tenant, &hold.id, &format!("{key}:void")).await {
            tracing::warn!(error = %err, run = %run.id, "cannot void the distillation's hold; it expires later");
        }
    }
}

/// The model's whole answer.
async fn stream(models: &dyn ModelProvider, request: ChatRequest) -> Result<ChatResponse, LlmError> {
    let mut stream = models.stream(request).await?;
    loop {
        match stream.next().await {
            Some(Ok(ChatEvent::Completed(response))) => return Ok(response),
            Some(Ok(_)) => {}
            Some(Err(err)) => return Err(err),
            None => return Err(LlmError::Stream("the stream ended before the answer was complete".to_owned())),
        }
    }
}

/// What the model is asked.
fn prompt(team: &[String], max_facts: u32) -> String {
    format!(
        "You distil durable facts from a conversation between a user and a team of AI personas ({}), so \
         that the team remembers them in later conversations. A durable fact stays true and useful later: \
         who the user is, their preferences, decisions, names, constraints, and conclusions reached. Leave \
         out small talk, the task's intermediate steps, and anything true only for this conversation. Write \
         each fact as one short self-contained sentence. At most {max_facts} facts; none when nothing is \
         worth remembering.\n\nAnswer with one JSON object and nothing else: {{\"facts\": [{{\"text\": \
         \"...\", \"tags\": [\"...\"], \"scope\": \"tenant\" or \"persona\", \"persona\": \"...\"}}]}}. \
         Scope `tenant` is for every persona; `persona` is for one persona of the team only, named in \
         `persona` (empty for `tenant`). Tags are a few lowercase words.",
        team.join(", ")
    )
}

/// The answer's schema, in the subset structured-output implementations take.
fn schema(team: &[String]) -> ResponseSchema {
    let mut personas: Vec<serde_json::Value> = team.iter().map(|n| serde_json::Value::String(n.clone())).collect();
    personas.push(serde_json::Value::String(String::new()));
    ResponseSchema {
        name: "maestro_facts".to_owned(),
        schema: serde_json::json!({
            "type": "object",
            "properties": {
                "facts": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "text": { "type": "string", "description": "the fact, one self-contained sentence" },
                            "tags": { "type": "array", "items": { "type": "string" } },
                            "scope": { "type": "string", "enum": ["tenant", "persona"] },
                            "persona": { "type": "string", "enum": personas, "description": "the persona of a persona-scoped fact (else empty)" }
                        },
                        "required": ["text", "tags", "scope", "persona"],
                        "additionalProperties": false
                    }
                }
            },
            "required": ["facts"],
            "additionalProperties": false
        }),
    }
}

/// The conversation as the model reads it: `author: text` blocks, the newest that fit
/// `room` bytes.
fn transcript(messages: &[Message], room: u64) -> String {
    let mut kept: Vec<String> = Vec::new();
    let mut used = 0u64;
    for message in messages.iter().rev() {
        let who = match &message.author {
            Author::User { .. } => "user",
            Author::Persona { name } => name,
        };
        let block = format!("{who}: {}", message.content);
        let cost = block.len() as u64 + 2;
        if !kept.is_empty() && used + cost > room {
            break;
        }
        used += cost;
        kept.push(block);
    }
    kept.reverse();
    format!("The conversation:\n\n{}", kept.join("\n\n"))
}

/// The facts of an answer, every one checked before any is kept: at most `max`.
fn parse(text: &str, team: &[String], max: usize) -> Result<Vec<NewMemory>, DistilError> {
    let answer: Answer = serde_json::from_str(text.trim())
        .map_err(|e| DistilError::Malformed(format!("not the JSON object asked for ({e})")))?;
    if answer.facts.len() > max {
        tracing::info!(
            facts = answer.facts.len(),
            max,
            "the distillation answered more facts than kept; the first are kept"
        );
    }
    let mut facts = Vec::new();
    for (index, fact) in answer.facts.into_iter().enumerate() {
        let bad = |why: String| DistilError::Malformed(format!("fact {}: {why}", index + 1));
        let text = validate_text(&fact.text).map_err(|e| bad(e.to_string()))?;
        let tags = normalise_tags(&fact.tags).map_err(|e| bad(e.to_string()))?;
        let scope = match fact.scope.as_str() {
            "tenant" => MemoryScope::Tenant,
            "persona" if team.contains(&fact.persona) => MemoryScope::Persona(fact.persona),
            "persona" => {
                let name: String = fact.persona.chars().take(64).collect();
                return Err(bad(format!("`{name}` is not a persona of the run's team")));
            }
            other => {
                let name: String = other.chars().take(32).collect();
                return Err(bad(format!("unknown scope `{name}` (tenant or persona)")));
            }
        };
        if facts.len() < max {
            facts.push(NewMemory { scope, text, tags, pinned: false, source: None });
        }
    }
    Ok(facts)
}

#[async_trait]
impl JobHandler for Distil {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        #[derive(Deserialize)]
        struct Payload {
            run: RunId,
        }
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("invalid distillation job payload: {e}")))?;
        match self.distil(&payload.run, job.attempts.max(1)).await {
            Ok(done) => {
                tracing::info!(run = %payload.run, inserted = done.inserted, updated = done.updated, "run distilled into memories");
                Ok(())
            }
            Err(
                err @ (DistilError::Malformed(_)
                | DistilError::RunNotFound(_)
                | DistilError::NoModel
                | DistilError::Credits(CreditsError::Insufficient { .. })
                | DistilError::Memory(MemoriesError::Invalid(_) | MemoriesError::SessionNotFound)),
            ) => Err(JobError::Permanent(crate::telemetry::error_chain(&err))),
            Err(err) => Err(JobError::Retry(crate::telemetry::error_chain(&err))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team() -> Vec<String> {
        vec!["personas.writer".to_owned(), "personas.critic".to_owned()]
    }

    #[test]
    fn a_valid_answer_gives_its_facts_up_to_the_cap() {
        let answer = r#"{"facts": [
            {"text": "The user's name is Ada.", "tags": ["User", "name"], "scope": "tenant", "persona": ""},
            {"text": "Ada wants terse reviews.", "tags": [], "scope": "persona", "persona": "personas.critic"},
            {"text": "A third fact.", "tags": [], "scope": "tenant", "persona": ""}
        ]}"#;
        let facts = parse(answer, &team(), 2).expect("valid");
        assert_eq!(facts.len(), 2);
        assert_eq!(facts[0].scope, MemoryScope::Tenant);
        assert_eq!(facts[0].tags, vec!["name".to_owned(), "user".to_owned()]);
        assert_eq!(facts[1].scope, MemoryScope::Persona("personas.critic".into()));
        assert!(parse(r#"{"facts": []}"#, &team(), 8).expect("none").is_empty());
    }

    #[test]
    fn a_malformed_answer_or_an_invalid_fact_refuses_every_fact() {
        let cases = [
            "not json",
            r#"[{"text": "x", "tags": [], "scope": "tenant"}]"#,
            r#"{"facts": [{"text": "ok", "tags": [], "scope": "tenant", "persona": ""}, {"text": "", "tags": [], "scope": "tenant", "persona": ""}]}"#,
            r#"{"facts": [{"text": "x", "tags": [], "scope": "session", "persona": ""}]}"#,
            r#"{"facts": [{"text": "x", "tags": [], "scope": "persona", "persona": "other.persona"}]}"#,
            r#"{"facts": [{"text": "x", "tags": [], "scope": "tenant", "persona": "", "extra": 1}]}"#,
        ];
        for case in cases {
            assert!(matches!(parse(case, &team(), 8), Err(DistilError::Malformed(_))), "{case}");
        }
    }

    #[test]
    fn the_transcript_keeps_the_newest_messages_that_fit() {
        let message = |n: u8, text: &str| Message {
            id: maestro_core::run::MessageId::from_random([n; 16]),
            session: maestro_core::run::SessionId::from_random([9; 16]),
            seq: i64::from(n),
            author: if n == 1 {
                Author::User { key_id: "key_1".into() }
            } else {
                Author::Persona { name: "p.x".into() }
            },
            content: text.into(),
            run: None,
            at: chrono::Utc::now(),
        };
        let messages = vec![message(1, &"a".repeat(100)), message(2, "short answer")];
        assert!(transcript(&messages, 1000).contains("user: aaa"));
        let cut = transcript(&messages, 20);
        assert!(cut.contains("p.x: short answer") && !cut.contains("user:"), "{cut}");
    }
}

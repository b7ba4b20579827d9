//! A run's record rebuilt from its events (the event log IS the record): which turns were
//! decided, which steps started and finished, every model answer and tool result. A run
//! taken over by another worker continues from here and never asks again what is
//! recorded.

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Utc};
use maestro_core::call::{Answer as CallAnswer, AskedQuestion, Question as CallQuestion, SuppliedAnswer};
use maestro_core::llm::{FinishReason, ToolCallRequest, Usage};
use maestro_core::run::{AnswerAction, Asker, EventBody, MessageId, Question, RunEvent, ToolResultBody};

/// The `step` the router's model calls are recorded under (`call` numbers them across
/// the run).
pub(crate) const ROUTER_STEP: u32 = 0;

/// A decided turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Decided {
    /// Who acts, in team order.
    pub(crate) personas: Vec<String>,
    /// The router's instruction.
    pub(crate) instruction: Option<String>,
    /// Whether the run's request is satisfied.
    pub(crate) satisfied: bool,
}

/// A recorded model answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Answer {
    /// The call within its step.
    pub(crate) call: u32,
    /// The text.
    pub(crate) text: String,
    /// The tool calls it asked for.
    pub(crate) tool_calls: Vec<ToolCallRequest>,
    /// Why it stopped.
    pub(crate) finish: FinishReason,
    /// Usage.
    pub(crate) usage: Usage,
    /// Credits settled.
    pub(crate) credits: i64,
}

/// A recorded step.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct StepRecord {
    /// Its turn.
    pub(crate) turn: u32,
    /// Its persona.
    pub(crate) persona: String,
    /// Its model answers, in order.
    pub(crate) answers: Vec<Answer>,
    /// Tool calls announced (`tool.called`), by call id, once per attempt (a plugin
    /// tool that asked the user is announced again when it runs again).
    pub(crate) called: Vec<String>,
    /// Plugin tool calls that asked the user, by call id.
    pub(crate) asks: HashMap<String, ToolAsks>,
    /// Tool results, by call id.
    pub(crate) results: HashMap<String, ToolResultBody>,
    /// Whether it finished, with the session message holding its answer.
    pub(crate) completed: Option<Option<MessageId>>,
}

/// The questions one plugin tool call asked in a run, and the answers given.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ToolAsks {
    /// Questions asked (`clarification.requested`).
    pub(crate) asked: u32,
    /// The answers, in the order given, for the call's next attempt.
    pub(crate) answers: Vec<SuppliedAnswer>,
}

impl StepRecord {
    /// Tool calls this step made (announced or answered without running).
    pub(crate) fn tool_calls(&self) -> u32 {
        let mut announced: Vec<&String> = self.called.iter().collect();
        announced.sort();
        announced.dedup();
        let unannounced = self.results.keys().filter(|id| !self.called.contains(id)).count();
        u32::try_from(announced.len() + unannounced).unwrap_or(u32::MAX)
    }

    /// The answers to run a tool call again with, when it asked the user, every question
    /// was answered, and it has not been started since the last answer (`None`: it did
    /// not ask, still waits, or an attempt after the answer was cut: its result is
    /// unknown).
    pub(crate) fn rerun(&self, call_id: &str) -> Option<Vec<SuppliedAnswer>> {
        let asks = self.asks.get(call_id)?;
        let attempts = self.called.iter().filter(|id| *id == call_id).count();
        let answered = asks.answers.len() == asks.asked as usize;
        (answered && attempts == asks.asked as usize).then(|| asks.answers.clone())
    }

    /// Model usage and credits over its answers.
    pub(crate) fn spent(&self) -> (Usage, i64) {
        self.answers
            .iter()
            .fold((Usage::default(), 0), |(usage, credits), a| (usage.plus(a.usage), credits + a.credits))
    }
}

/// What a run's events say happened.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Record {
    /// `run.started` is recorded.
    pub(crate) started: bool,
    /// `run.interrupted` events so far.
    pub(crate) interruptions: u32,
    /// Decided turns, by number.
    pub(crate) turns: BTreeMap<u32, Decided>,
    /// The router's answers, in order (`call` numbers them).
    pub(crate) router_answers: Vec<Answer>,
    /// Router answers recorded since the last decided turn (unusable tries of the
    /// undecided turn).
    pub(crate) router_tries: u32,
    /// Steps, by number.
    pub(crate) steps: BTreeMap<u32, StepRecord>,
    /// The terminal event was recorded.
    pub(crate) terminal: bool,
    /// Questions asked of the user so far (`clarification.requested`).
    pub(crate) waits: u32,
    /// The router's questions and their answers, in order.
    pub(crate) router_asks: Vec<RouterAsk>,
    /// The plugin question waiting for its answer: step, call id, and the question.
    open_tool_ask: Option<(u32, String, AskedQuestion)>,
}

/// A question the router asked the user while deciding a turn.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RouterAsk {
    /// The turn it was deciding.
    pub(crate) turn: u32,
    /// The question.
    pub(crate) question: String,
    /// The user's answer, once given.
    pub(crate) answer: Option<String>,
}

/// The question a waiting run asks.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Pending {
    /// Its number among the run's questions, from 1 (part of its jobs' keys).
    pub(crate) wait: u32,
    /// Who asks.
    pub(crate) asker: Asker,
    /// The question, its choices and whether free text is accepted.
    pub(crate) question: Question,
    /// When it was asked.
    pub(crate) asked_at: DateTime<Utc>,
    /// When it expires.
    pub(crate) expires_at: DateTime<Utc>,
}

/// The run's unanswered question, if its last question is not answered.
pub(crate) fn pending(events: &[RunEvent]) -> Option<Pending> {
    let mut wait = 0;
    let mut open = None;
    for event in events {
        match &event.body {
            EventBody::ClarificationRequested { asker, question, choices, free_text, expires_at } => {
                wait += 1;
                open = Some(Pending {
                    wait,
                    asker: asker.clone(),
                    question: Question { question: question.clone(), choices: choices.clone(), free_text: *free_text },
                    asked_at: event.at,
                    expires_at: *expires_at,
                });
            }
            EventBody::ClarificationAnswered { .. } => open = None,
            _ => {}
        }
    }
    open
}

impl Record {
    /// Replays events in `seq` order.
    pub(crate) fn replay(events: &[RunEvent]) -> Self {
        let mut record = Record::default();
        for event in events {
            record.apply(&event.body);
        }
        record
    }

    /// Applies one event.
    pub(crate) fn apply(&mut self, body: &EventBody) {
        match body {
            EventBody::RunStarted { .. } => self.started = true,
            EventBody::RunInterrupted { .. } => self.interruptions += 1,
            EventBody::TurnDecided { turn, personas, instruction, satisfied, .. } => {
                self.turns.insert(
                    *turn,
                    Decided { personas: personas.clone(), instruction: instruction.clone(), satisfied: *satisfied },
                );
                self.router_tries = 0;
            }
            EventBody::StepStarted { step, turn, persona, .. } => {
                let entry = self.steps.entry(*step).or_default();
                entry.turn = *turn;
                entry.persona.clone_from(persona);
            }
            EventBody::MessageCompleted { step, call, text, tool_calls, finish, usage, credits, .. } => {
                let answer = Answer {
                    call: *call,
                    text: text.clone(),
                    tool_calls: tool_calls.clone(),
                    finish: finish.clone(),
                    usage: *usage,
                    credits: *credits,
                };
                if *step == ROUTER_STEP {
                    self.router_answers.push(answer);
                    self.router_tries += 1;
                } else {
                    self.steps.entry(*step).or_default().answers.push(answer);
                }
            }
            EventBody::ToolCalled { step, call_id, .. } => {
                self.steps.entry(*step).or_default().called.push(call_id.clone());
            }
            EventBody::ToolResult(result) => {
                self.steps.entry(result.step).or_default().results.insert(result.call_id.clone(), result.clone());
            }
            EventBody::StepCompleted { step, message, .. } => {
                self.steps.entry(*step).or_default().completed = Some(message.clone());
            }
            EventBody::RunCompleted { .. }
            | EventBody::RunFailed { .. }
            | EventBody::RunCancelled { .. }
            | EventBody::RunExpired { .. } => {
                self.terminal = true;
            }
            EventBody::ClarificationRequested { asker, question, .. } => {
                self.waits += 1;
                match asker {
                    Asker::Router { turn } => {
                        // The asking answer was usable: the turn's tries start again.
                        self.router_tries = 0;
                        self.router_asks.push(RouterAsk { turn: *turn, question: question.clone(), answer: None });
                    }
                    Asker::Tool { step, call_id, index, schema, .. } => {
                        let entry = self.steps.entry(*step).or_default().asks.entry(call_id.clone()).or_default();
                        entry.asked += 1;
                        let asked = AskedQuestion {
                            index: *index,
                            question: CallQuestion { message: question.clone(), schema: schema.clone() },
                        };
                        self.open_tool_ask = Some((*step, call_id.clone(), asked));
                    }
                    Asker::Persona { .. } => {}
                }
            }
            EventBody::ClarificationAnswered { answer, form, action, .. } => {
                if let Some((step, call_id, asked)) = self.open_tool_ask.take() {
                    let given = match action {
                        AnswerAction::Accept => {
                            CallAnswer::Accepted(form.clone().unwrap_or_else(|| serde_json::json!({})))
                        }
                        AnswerAction::Decline => CallAnswer::Declined,
                        AnswerAction::Cancel => CallAnswer::Cancelled,
                    };
                    let entry = self.steps.entry(step).or_default().asks.entry(call_id).or_default();
                    entry.answers.push(SuppliedAnswer::to(&asked, given));
                } else if let Some(ask) = self.router_asks.last_mut().filter(|a| a.answer.is_none()) {
                    ask.answer = Some(answer.clone());
                }
            }
            EventBody::MessageDelta { .. } | EventBody::DocumentUpdated { .. } | EventBody::MemoryRecalled { .. } => {}
        }
    }

    /// The step that started and did not finish, if any (the one a takeover restarts).
    pub(crate) fn open_step(&self) -> Option<u32> {
        self.steps.iter().rev().find(|(_, s)| !s.persona.is_empty() && s.completed.is_none()).map(|(n, _)| *n)
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use maestro_core::run::{RunId, SessionId};

    use super::*;

    fn events(bodies: Vec<EventBody>) -> Vec<RunEvent> {
        let (run, session) = (RunId::from_random([1; 16]), SessionId::from_random([2; 16]));
        bodies
            .into_iter()
            .zip(1..)
            .map(|(body, seq)| RunEvent {
                run: run.clone(),
                session: session.clone(),
                seq,
                session_seq: seq,
                at: Utc::now(),
                body,
            })
            .collect()
    }

    fn answer(step: u32, call: u32, calls: Vec<ToolCallRequest>) -> EventBody {
        EventBody::MessageCompleted {
            step,
            call,
            persona: "p.a".into(),
            model: "m".into(),
            text: "t".into(),
            tool_calls: calls,
            finish: FinishReason::Stop,
            usage: Usage { input_tokens: 2, output_tokens: 3, ..Usage::default() },
            credits: 5,
            message: None,
        }
    }

    #[test]
    fn a_step_cut_after_a_tool_call_is_open_with_its_answers_and_calls() {
        let call = ToolCallRequest { id: "c1".into(), name: "calc.evaluate".into(), arguments: "{}".into() };
        let record = Record::replay(&events(vec![
            EventBody::TurnDecided {
                turn: 1,
                personas: vec!["p.a".into()],
                instruction: None,
                reason: "r".into(),
                satisfied: false,
                fallback: false,
            },
            EventBody::StepStarted {
                step: 1,
                turn: 1,
                persona: "p.a".into(),
                model: "m".into(),
                tools: vec![],
                context_messages: 1,
                trimmed_messages: 0,
            },
            answer(1, 1, vec![call]),
            EventBody::ToolCalled {
                step: 1,
                call: 1,
                call_id: "c1".into(),
                tool: "calc.evaluate".into(),
                arguments: "{}".into(),
            },
            EventBody::RunInterrupted { step: Some(1), reason: "x".into() },
        ]));
        assert_eq!(record.open_step(), Some(1));
        assert_eq!(record.interruptions, 1);
        let step = &record.steps[&1];
        assert_eq!((step.answers.len(), step.called.len(), step.results.len()), (1, 1, 0));
        assert_eq!(step.tool_calls(), 1);
        assert_eq!(step.spent().1, 5);
    }

    #[test]
    fn router_answers_before_a_decision_count_as_tries() {
        let mut record = Record::replay(&events(vec![answer(ROUTER_STEP, 1, vec![])]));
        assert_eq!((record.router_answers.len(), record.router_tries), (1, 1));
        record.apply(&EventBody::TurnDecided {
            turn: 1,
            personas: vec![],
            instruction: None,
            reason: "done".into(),
            satisfied: true,
            fallback: false,
        });
        assert_eq!(record.router_tries, 0);
        assert!(record.turns[&1].satisfied);
    }
}

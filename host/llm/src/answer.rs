//! An answer as it is assembled from a provider's stream: the events for the caller and
//! the whole response they add up to, whatever the wire format.

use std::collections::VecDeque;

use maestro_core::llm::{ChatEvent, ChatResponse, FinishReason, ToolCallRequest, Usage};

use crate::names::ToolNames;

/// Why reading a stream failed, in the terms that decide what happens next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Worth trying again (a cut connection, an overloaded provider), before the first event.
    Retryable(String),
    /// A deadline passed (connect, first token, idle).
    Timeout(String),
    /// The account's quota or spend limit is exhausted.
    Quota(String),
    /// The provider refused the request for good.
    Refused {
        /// HTTP status (200 for an error event in a stream).
        status: u16,
        /// The provider's message.
        message: String,
    },
    /// The answer could not be understood.
    Invalid(String),
}

/// One tool call as it arrives.
#[derive(Debug, Default)]
struct Call {
    id: Option<String>,
    name: Option<String>,
    arguments: String,
    started: bool,
}

/// The answer so far and the events not yet handed to the caller.
#[derive(Debug)]
pub(crate) struct Answer {
    /// Events ready for the caller, oldest first.
    pub(crate) events: VecDeque<ChatEvent>,
    text: String,
    calls: Vec<Call>,
    /// Why the model stopped, once said.
    pub(crate) finish: Option<FinishReason>,
    /// Usage as reported so far.
    pub(crate) usage: Usage,
    /// Whether any usage was reported.
    pub(crate) usage_reported: bool,
    names: ToolNames,
}

impl Answer {
    /// An empty answer whose tool names map back through `names`.
    pub(crate) fn new(names: ToolNames) -> Self {
        Self {
            events: VecDeque::new(),
            text: String::new(),
            calls: Vec::new(),
            finish: None,
            usage: Usage::default(),
            usage_reported: false,
            names,
        }
    }

    /// A piece of text.
    pub(crate) fn text(&mut self, text: &str) {
        if !text.is_empty() {
            self.text.push_str(text);
            self.events.push_back(ChatEvent::Text { text: text.to_owned() });
        }
    }

    /// A piece of reasoning.
    pub(crate) fn reasoning(&mut self, text: &str) {
        if !text.is_empty() {
            self.events.push_back(ChatEvent::Reasoning { text: text.to_owned() });
        }
    }

    /// A new tool call; its index.
    pub(crate) fn new_call(&mut self) -> usize {
        self.calls.push(Call::default());
        self.calls.len() - 1
    }

    /// The call's id, when it arrives.
    pub(crate) fn call_id(&mut self, index: usize, id: &str) {
        if let Some(call) = self.calls.get_mut(index)
            && !id.is_empty()
            && call.id.is_none()
        {
            call.id = Some(id.to_owned());
            self.try_start(index);
        }
    }

    /// The call's (upstream) name, when it arrives.
    pub(crate) fn call_name(&mut self, index: usize, name: &str) {
        if let Some(call) = self.calls.get_mut(index)
            && !name.is_empty()
            && !call.started
        {
            call.name = Some(name.to_owned());
            self.try_start(index);
        }
    }

    /// A fragment of the call's arguments.
    pub(crate) fn call_arguments(&mut self, index: usize, fragment: &str) {
        if let Some(call) = self.calls.get_mut(index)
            && !fragment.is_empty()
        {
            call.arguments.push_str(fragment);
            if call.started {
                self.events
                    .push_back(ChatEvent::ToolCallArguments { index: as_u32(index), fragment: fragment.to_owned() });
            }
        }
    }

    /// Announces a call once its id and name are both known, with the arguments that
    /// arrived before.
    fn try_start(&mut self, index: usize) {
        let Some(call) = self.calls.get_mut(index) else { return };
        let (Some(id), Some(name)) = (&call.id, &call.name) else { return };
        if call.started {
            return;
        }
        call.started = true;
        let index = as_u32(index);
        self.events.push_back(ChatEvent::ToolCallStarted { index, id: id.clone(), name: self.names.original(name) });
        if !call.arguments.is_empty() {
            self.events.push_back(ChatEvent::ToolCallArguments { index, fragment: call.arguments.clone() });
        }
    }

    /// The last event: the whole answer. A call whose id never came gets `call_N`; a
    /// call without a name makes the answer invalid.
    pub(crate) fn complete(&mut self, model: &str, provider: &str) -> Result<(), Failure> {
        for index in 0..self.calls.len() {
            let call = &mut self.calls[index];
            if call.name.is_none() {
                return Err(Failure::Invalid(format!("tool call {index} has no name")));
            }
            if call.id.is_none() {
                call.id = Some(format!("call_{index}"));
            }
            self.try_start(index);
        }
        let tool_calls = self
            .calls
            .iter()
            .map(|call| ToolCallRequest {
                id: call.id.clone().unwrap_or_default(),
                name: self.names.original(call.name.as_deref().unwrap_or_default()),
                arguments: if call.arguments.is_empty() { "{}".to_owned() } else { call.arguments.clone() },
            })
            .collect::<Vec<_>>();
        let finish = self.finish.clone().unwrap_or(if tool_calls.is_empty() {
            FinishReason::Stop
        } else {
            FinishReason::ToolCalls
        });
        self.events.push_back(ChatEvent::Completed(ChatResponse {
            model: model.to_owned(),
            provider: provider.to_owned(),
            text: std::mem::take(&mut self.text),
            tool_calls,
            finish,
            usage: self.usage,
            usage_reported: self.usage_reported,
        }));
        Ok(())
    }
}

fn as_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// A tool's parameter schema as providers require it: a JSON Schema object of
/// `"type": "object"` (a tool without parameters gets an empty one).
pub(crate) fn object_schema(schema: &serde_json::Value) -> serde_json::Value {
    match schema {
        serde_json::Value::Object(map) if map.contains_key("type") => schema.clone(),
        serde_json::Value::Object(map) => {
            let mut map = map.clone();
            map.insert("type".into(), "object".into());
            map.entry("properties").or_insert_with(|| serde_json::json!({}));
            serde_json::Value::Object(map)
        }
        _ => serde_json::json!({"type": "object", "properties": {}}),
    }
}

/// An `f32` as the decimal it was written as (`0.7`, not `0.699999988079071`).
pub(crate) fn decimal(value: f32) -> f64 {
    value.to_string().parse().unwrap_or(f64::from(value))
}

/// `text` cut to at most `max` bytes on a character boundary.
pub(crate) fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_owned();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

#[cfg(test)]
mod tests {
    use maestro_core::llm::ToolDefinition;

    use super::*;

    #[test]
    fn a_call_starts_once_id_and_name_are_known_with_the_arguments_so_far() {
        let names = ToolNames::new(&[ToolDefinition {
            name: "calc.add".into(),
            description: String::new(),
            parameters: serde_json::json!({}),
        }]);
        let mut answer = Answer::new(names);
        let i = answer.new_call();
        answer.call_id(i, "call_1");
        answer.call_arguments(i, "{\"a\":");
        assert!(answer.events.is_empty(), "no name yet");
        answer.call_name(i, "calc_add");
        answer.call_arguments(i, "1}");
        answer.complete("m", "p").expect("complete");
        let events: Vec<_> = answer.events.drain(..).collect();
        assert_eq!(events[0], ChatEvent::ToolCallStarted { index: 0, id: "call_1".into(), name: "calc.add".into() });
        assert_eq!(events[1], ChatEvent::ToolCallArguments { index: 0, fragment: "{\"a\":".into() });
        assert_eq!(events[2], ChatEvent::ToolCallArguments { index: 0, fragment: "1}".into() });
        let ChatEvent::Completed(response) = &events[3] else { panic!("completed: {events:?}") };
        assert_eq!(response.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(response.finish, FinishReason::ToolCalls);
    }

    #[test]
    fn parameter_schemas_are_objects() {
        let schema = serde_json::json!({"type": "object", "properties": {"a": {"type": "number"}}});
        assert_eq!(object_schema(&schema), schema);
        assert_eq!(object_schema(&serde_json::Value::Null), serde_json::json!({"type": "object", "properties": {}}));
        assert_eq!(object_schema(&serde_json::json!({})), serde_json::json!({"type": "object", "properties": {}}));
    }

    #[test]
    fn floats_are_sent_as_written() {
        assert_eq!(decimal(0.7).to_string(), "0.7");
        assert_eq!(decimal(1.0), 1.0);
    }

    #[test]
    fn truncation_keeps_whole_characters() {
        assert_eq!(truncate("h\u{e9}llo", 2), "h…");
        assert_eq!(truncate("short", 10), "short");
    }
}

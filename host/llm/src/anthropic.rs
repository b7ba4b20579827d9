//! Anthropic Messages: the request (system prompt on top, tool results as `tool_result`
//! blocks in a user message, consecutive messages of one role merged), and the streamed
//! events (`message_start` usage, cumulative `message_delta` usage with cache tokens,
//! `tool_use` blocks with `input_json_delta`, `thinking_delta`, `ping`, `error`).
//!
//! Structured output is a forced tool named after the schema, whose input the model must
//! write to fit it: that works on every model (the newer `output_format` needs a beta
//! header and is limited to some models). Its input is reported as the answer's text,
//! so callers see JSON text exactly as from an OpenAI-compatible provider.

use std::collections::HashMap;

use maestro_core::llm::{ChatRequest, ChatRole, FinishReason, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer::{Answer, Failure, truncate};
use crate::names::ToolNames;
use crate::openai::stream_error;
use crate::sse::SseEvent;

/// The `anthropic-version` header sent.
pub(crate) const VERSION: &str = "2023-06-01";

/// The request body for `POST {base}/v1/messages`.
pub(crate) fn request_body(upstream: &str, request: &ChatRequest, max_tokens: u32, names: &ToolNames) -> Value {
    let mut system: Vec<&str> = Vec::new();
    let mut messages: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for m in &request.messages {
        let (role, blocks) = match m.role {
            ChatRole::System => {
                system.push(&m.content);
                continue;
            }
            // Anthropic refuses empty text blocks; a message left without blocks is skipped.
            ChatRole::User if m.content.is_empty() => continue,
            ChatRole::User => ("user", vec![json!({"type": "text", "text": m.content})]),
            ChatRole::Assistant => {
                let mut blocks = Vec::new();
                if !m.content.is_empty() {
                    blocks.push(json!({"type": "text", "text": m.content}));
                }
                for call in &m.tool_calls {
                    let input: Value = serde_json::from_str(&call.arguments)
                        .ok()
                        .filter(Value::is_object)
                        .unwrap_or_else(|| json!({}));
                    blocks.push(
                        json!({"type": "tool_use", "id": call.id, "name": names.wire(&call.name), "input": input}),
                    );
                }
                if blocks.is_empty() {
                    continue;
                }
                ("assistant", blocks)
            }
            ChatRole::Tool => (
                "user",
                vec![json!({
                    "type": "tool_result",
                    "tool_use_id": m.tool_call_id.clone().unwrap_or_default(),
                    "content": m.content,
                    "is_error": m.is_error,
                })],
            ),
        };
        match messages.last_mut() {
            Some((last, content)) if *last == role => content.extend(blocks),
            _ => messages.push((role, blocks)),
        }
    }
    let messages: Vec<Value> =
        messages.into_iter().map(|(role, content)| json!({"role": role, "content": content})).collect();
    let mut body = json!({
        "model": upstream,
        "max_tokens": max_tokens,
        "messages": messages,
        "stream": true,
    });
    if !system.is_empty() {
        body["system"] = json!(system.join("\n\n"));
    }
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(crate::answer::decimal(temperature));
    }
    let mut tools: Vec<Value> = request
        .tools
        .iter()
        .map(|t| {
            json!({"name": names.wire(&t.name), "description": t.description,
                   "input_schema": crate::answer::object_schema(&t.parameters)})
        })
        .collect();
    if let Some(schema) = &request.response_schema {
        tools.push(json!({
            "name": schema.name,
            "description": "Write the answer as this tool's input.",
            "input_schema": crate::answer::object_schema(&schema.schema),
        }));
        body["tool_choice"] = json!({"type": "tool", "name": schema.name});
    }
    if !tools.is_empty() {
        body["tools"] = Value::Array(tools);
    }
    body
}

#[derive(Debug, Default, Deserialize)]
struct Event {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    index: Option<u64>,
    #[serde(default)]
    message: Option<MessageStart>,
    #[serde(default)]
    content_block: Option<Block>,
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    usage: Option<WireUsage>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct MessageStart {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct Block {
    #[serde(default, rename = "type")]
    kind: String,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    input: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    thinking: Option<String>,
    #[serde(default)]
    partial_json: Option<String>,
    #[serde(default)]
    stop_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    input_tokens: Option<u64>,
    #[serde(default)]
    output_tokens: Option<u64>,
    #[serde(default)]
    cache_read_input_tokens: Option<u64>,
    #[serde(default)]
    cache_creation_input_tokens: Option<u64>,
}

/// What a content block carries.
#[derive(Debug, Clone, Copy)]
enum Content {
    /// Text or thinking (its deltas say which).
    Plain,
    /// A tool call: our call index.
    Call(usize),
    /// The forced structured-output tool: its input is the answer's text.
    Structured,
}

/// The stream's state.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    blocks: HashMap<u64, Content>,
    structured_tool: Option<String>,
    /// Usage as reported so far, by field (`message_delta` repeats them cumulatively).
    input: u64,
    output: u64,
    cache_read: u64,
    cache_write: u64,
    done: bool,
}

impl Parser {
    /// A parser for a request whose structured output, if any, is the forced tool `name`.
    pub(crate) fn new(structured_tool: Option<String>) -> Self {
        Self { structured_tool, ..Self::default() }
    }

    /// Whether `message_stop` arrived.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Reads one event into `answer`.
    pub(crate) fn event(&mut self, event: &SseEvent, answer: &mut Answer) -> Result<(), Failure> {
        let data = event.data.trim();
        if data.is_empty() {
            return Ok(());
        }
        let parsed: Event = serde_json::from_str(data).map_err(|e| {
            tracing::debug!(raw = %truncate(data, 2000), "unreadable model stream event");
            Failure::Invalid(format!("unreadable stream event: {e}"))
        })?;
        let kind = if parsed.kind.is_empty() { event.event.as_str() } else { parsed.kind.as_str() };
        match kind {
            "message_start" => {
                if let Some(usage) = parsed.message.and_then(|m| m.usage) {
                    self.usage(usage, answer);
                }
            }
            "content_block_start" => {
                let index = parsed.index.unwrap_or(0);
                let block = parsed.content_block.unwrap_or_default();
                let content = match block.kind.as_str() {
                    "tool_use" | "server_tool_use" if block.name.is_some() && block.name == self.structured_tool => {
                        if let Some(input) = block.input.filter(|i| i.as_object().is_some_and(|o| !o.is_empty())) {
                            answer.text(&input.to_string());
                        }
                        Content::Structured
                    }
                    "tool_use" | "server_tool_use" => {
                        let call = answer.new_call();
                        answer.call_id(call, block.id.as_deref().unwrap_or_default());
                        answer.call_name(call, block.name.as_deref().unwrap_or_default());
                        // Anthropic starts with `{}` and streams the input; a proxy that
                        // sends it whole here sends no deltas.
                        if let Some(input) = block.input.filter(|i| i.as_object().is_some_and(|o| !o.is_empty())) {
                            answer.call_arguments(call, &input.to_string());
                        }
                        Content::Call(call)
                    }
                    _ => {
                        answer.text(block.text.as_deref().unwrap_or_default());
                        answer.reasoning(block.thinking.as_deref().unwrap_or_default());
                        Content::Plain
                    }
                };
                self.blocks.insert(index, content);
            }
            "content_block_delta" => {
                let content = self.blocks.get(&parsed.index.unwrap_or(0)).copied().unwrap_or(Content::Plain);
                let delta = parsed.delta.unwrap_or_default();
                match (content, delta.kind.as_deref()) {
                    (Content::Call(call), _) => {
                        answer.call_arguments(call, delta.partial_json.as_deref().unwrap_or_default());
                    }
                    (Content::Structured, _) => answer.text(delta.partial_json.as_deref().unwrap_or_default()),
                    (Content::Plain, Some("thinking_delta")) => {
                        answer.reasoning(delta.thinking.as_deref().unwrap_or_default());
                    }
                    (Content::Plain, _) => answer.text(delta.text.as_deref().unwrap_or_default()),
                }
            }
            "message_delta" => {
                if let Some(reason) = parsed.delta.and_then(|d| d.stop_reason) {
                    answer.finish = Some(self.finish_reason(&reason));
                }
                if let Some(usage) = parsed.usage {
                    self.usage(usage, answer);
                }
            }
            "message_stop" => self.done = true,
            "error" => {
                tracing::debug!(raw = %truncate(data, 2000), "model stream error event");
                let error = parsed.error.unwrap_or(Value::Null);
                return Err(stream_error(&error));
            }
            // ping, content_block_stop and anything newer.
            _ => {}
        }
        Ok(())
    }

    /// A whole (non-streamed) message, from a server that ignored `stream: true`: read
    /// as the events that would have streamed it.
    pub(crate) fn whole(&mut self, value: Value, answer: &mut Answer) -> Result<(), Failure> {
        let event = |data: Value| SseEvent { event: String::new(), data: data.to_string() };
        if value.get("type").and_then(Value::as_str) == Some("error") || value.get("error").is_some() {
            return self.event(&event(json!({"type": "error", "error": value.get("error")})), answer);
        }
        let usage = value.get("usage").cloned().unwrap_or(Value::Null);
        self.event(&event(json!({"type": "message_start", "message": {"usage": usage}})), answer)?;
        let blocks = value.get("content").and_then(Value::as_array).cloned().unwrap_or_default();
        for (index, block) in blocks.iter().enumerate() {
            let mut start = block.clone();
            let input = start.as_object_mut().and_then(|b| b.remove("input"));
            self.event(&event(json!({"type": "content_block_start", "index": index, "content_block": start})), answer)?;
            if let Some(input) = input.filter(|i| i.as_object().is_some_and(|o| !o.is_empty())) {
                let delta = json!({"type": "input_json_delta", "partial_json": input.to_string()});
                self.event(&event(json!({"type": "content_block_delta", "index": index, "delta": delta})), answer)?;
            }
        }
        let stop = value.get("stop_reason").cloned().unwrap_or(Value::Null);
        self.event(&event(json!({"type": "message_delta", "delta": {"stop_reason": stop}})), answer)?;
        self.done = true;
        Ok(())
    }

    /// The body ended without `message_stop`: a normal end once the model said why it
    /// stopped, else a cut stream.
    pub(crate) fn end(&mut self, answer: &Answer) -> Result<(), Failure> {
        if self.done || answer.finish.is_some() {
            self.done = true;
            Ok(())
        } else {
            Err(Failure::Retryable("the stream ended before the answer finished".into()))
        }
    }

    fn usage(&mut self, usage: WireUsage, answer: &mut Answer) {
        let fields = [
            (usage.input_tokens, &mut self.input),
            (usage.output_tokens, &mut self.output),
            (usage.cache_read_input_tokens, &mut self.cache_read),
            (usage.cache_creation_input_tokens, &mut self.cache_write),
        ];
        let mut any = false;
        for (value, slot) in fields {
            if let Some(value) = value {
                *slot = value;
                any = true;
            }
        }
        if any {
            answer.usage = Usage {
                input_tokens: self.input.saturating_add(self.cache_read).saturating_add(self.cache_write),
                output_tokens: self.output,
                cached_input_tokens: self.cache_read,
                cache_write_tokens: self.cache_write,
                reasoning_tokens: 0,
            };
            answer.usage_reported = true;
        }
    }

    fn finish_reason(&self, reason: &str) -> FinishReason {
        match reason {
            "end_turn" | "stop_sequence" => FinishReason::Stop,
            "max_tokens" => FinishReason::Length,
            "tool_use"
                if self.structured_tool.is_some() && self.blocks.values().all(|b| !matches!(b, Content::Call(_))) =>
            {
                FinishReason::Stop
            }
            "tool_use" => FinishReason::ToolCalls,
            "refusal" => FinishReason::ContentFilter,
            other => FinishReason::Other(other.to_owned()),
        }
    }
}

#[cfg(test)]
mod tests {
    use maestro_core::llm::{ChatEvent, ChatMessage, ResponseSchema, ToolCallRequest, ToolDefinition};

    use super::*;

    fn run(parser: &mut Parser, events: &[(&str, &str)]) -> Answer {
        let mut answer = Answer::new(ToolNames::new(&[ToolDefinition {
            name: "calc.add".into(),
            description: String::new(),
            parameters: json!({}),
        }]));
        for (name, data) in events {
            parser.event(&SseEvent { event: (*name).into(), data: (*data).into() }, &mut answer).expect("event");
        }
        parser.end(&answer).expect("end");
        answer.complete("m", "p").expect("complete");
        answer
    }

    #[test]
    fn reads_text_thinking_tool_use_and_cumulative_usage_with_cache_tokens() {
        let answer = run(
            &mut Parser::new(None),
            &[
                (
                    "message_start",
                    r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"cache_read_input_tokens":100,"cache_creation_input_tokens":20,"output_tokens":1}}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"hmm"}}"#,
                ),
                ("ping", r#"{"type":"ping"}"#),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":1,"content_block":{"type":"text","text":""}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":1,"delta":{"type":"text_delta","text":"Sure"}}"#,
                ),
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_1","name":"calc_add","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"{\"a\":"}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":"1}"}}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":30}}"#,
                ),
                ("message_stop", r#"{"type":"message_stop"}"#),
            ],
        );
        let events: Vec<_> = answer.events.into_iter().collect();
        assert_eq!(events[0], ChatEvent::Reasoning { text: "hmm".into() });
        assert_eq!(events[1], ChatEvent::Text { text: "Sure".into() });
        assert_eq!(events[2], ChatEvent::ToolCallStarted { index: 0, id: "toolu_1".into(), name: "calc.add".into() });
        let ChatEvent::Completed(response) = events.last().expect("last") else { panic!("{events:?}") };
        assert_eq!(response.tool_calls[0].arguments, "{\"a\":1}");
        assert_eq!(response.finish, FinishReason::ToolCalls);
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 130,
                output_tokens: 30,
                cached_input_tokens: 100,
                cache_write_tokens: 20,
                reasoning_tokens: 0
            }
        );
    }

    #[test]
    fn a_tool_input_given_whole_in_the_start_block_is_kept() {
        let answer = run(
            &mut Parser::new(None),
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_2","name":"calc_add","input":{"a":1}}}"#,
                ),
                ("message_delta", r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"}}"#),
            ],
        );
        let Some(ChatEvent::Completed(response)) = answer.events.back() else { panic!("completed") };
        assert_eq!(response.tool_calls[0].arguments, r#"{"a":1}"#);
    }

    #[test]
    fn the_forced_structured_tool_is_reported_as_text() {
        let answer = run(
            &mut Parser::new(Some("verdict".into())),
            &[
                (
                    "content_block_start",
                    r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"toolu_9","name":"verdict","input":{}}}"#,
                ),
                (
                    "content_block_delta",
                    r#"{"type":"content_block_delta","index":0,"delta":{"type":"input_json_delta","partial_json":"{\"ok\":true}"}}"#,
                ),
                (
                    "message_delta",
                    r#"{"type":"message_delta","delta":{"stop_reason":"tool_use"},"usage":{"output_tokens":3}}"#,
                ),
            ],
        );
        let Some(ChatEvent::Completed(response)) = answer.events.back() else { panic!("completed") };
        assert_eq!(response.text, "{\"ok\":true}");
        assert!(response.tool_calls.is_empty());
        assert_eq!(response.finish, FinishReason::Stop);
    }

    #[test]
    fn the_request_puts_system_on_top_and_tool_results_in_a_user_message() {
        let tools = vec![ToolDefinition {
            name: "calc.add".into(),
            description: "adds".into(),
            parameters: json!({"type":"object"}),
        }];
        let names = ToolNames::new(&tools);
        let mut assistant = ChatMessage::new(ChatRole::Assistant, "let me add");
        assistant.tool_calls = vec![
            ToolCallRequest { id: "t1".into(), name: "calc.add".into(), arguments: "{\"a\":1}".into() },
            ToolCallRequest { id: "t2".into(), name: "calc.add".into(), arguments: "not json".into() },
        ];
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::new(ChatRole::System, "be brief"),
                ChatMessage::new(ChatRole::User, "add"),
                assistant,
                ChatMessage::tool_result("t1", "1", false),
                ChatMessage::tool_result("t2", "bad", true),
            ],
            tools,
            max_tokens: None,
            temperature: None,
            response_schema: Some(ResponseSchema { name: "verdict".into(), schema: json!({"type":"object"}) }),
        };
        let body = request_body("claude-x", &request, 256, &names);
        assert_eq!(body["system"], "be brief");
        assert_eq!(body["max_tokens"], 256);
        let messages = body["messages"].as_array().expect("messages");
        assert_eq!(messages.len(), 3, "{body}");
        assert_eq!(messages[1]["content"][1]["name"], "calc_add");
        assert_eq!(messages[1]["content"][1]["input"]["a"], 1);
        assert_eq!(messages[1]["content"][2]["input"], json!({}));
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"][0]["type"], "tool_result");
        assert_eq!(messages[2]["content"][1]["is_error"], true);
        assert_eq!(body["tools"][1]["name"], "verdict");
        assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "verdict"}));
    }
}

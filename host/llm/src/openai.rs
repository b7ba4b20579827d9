//! OpenAI-compatible Chat Completions (OpenAI, Ollama, vLLM, llama.cpp, OpenRouter,
//! Groq…): the request, and the streamed chunks read leniently (every field optional,
//! unknown fields ignored, `usage: {}` or `null` accepted, finish reasons kept as said).

use std::collections::HashMap;

use maestro_core::llm::{ChatRequest, ChatRole, FinishReason, Usage};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::answer::{Answer, Failure, truncate};
use crate::names::ToolNames;
use crate::sse::SseEvent;

/// The request body for `POST {base}/chat/completions`.
///
/// The answer's length is sent as `max_tokens`, which every OpenAI-compatible server
/// knows; OpenAI itself (its reasoning models refuse `max_tokens`) gets
/// `max_completion_tokens` instead.
pub(crate) fn request_body(
    upstream: &str,
    request: &ChatRequest,
    max_tokens: u32,
    names: &ToolNames,
    openai_itself: bool,
    include_usage: bool,
) -> Value {
    let messages: Vec<Value> = request
        .messages
        .iter()
        .map(|m| match m.role {
            ChatRole::System => json!({"role": "system", "content": m.content}),
            ChatRole::User => json!({"role": "user", "content": m.content}),
            ChatRole::Assistant => {
                let mut message = json!({"role": "assistant", "content": m.content});
                if !m.tool_calls.is_empty() {
                    if m.content.is_empty() {
                        message["content"] = Value::Null;
                    }
                    message["tool_calls"] = m
                        .tool_calls
                        .iter()
                        .map(|c| {
                            json!({"id": c.id, "type": "function",
                                   "function": {"name": names.wire(&c.name), "arguments": c.arguments}})
                        })
                        .collect();
                }
                message
            }
            ChatRole::Tool => {
                json!({"role": "tool", "tool_call_id": m.tool_call_id.clone().unwrap_or_default(), "content": m.content})
            }
        })
        .collect();
    let mut body = json!({
        "model": upstream,
        "messages": messages,
        "stream": true,
    });
    if include_usage {
        body["stream_options"] = json!({"include_usage": true});
    }
    let length_field = if openai_itself { "max_completion_tokens" } else { "max_tokens" };
    body[length_field] = json!(max_tokens);
    if let Some(temperature) = request.temperature {
        body["temperature"] = json!(crate::answer::decimal(temperature));
    }
    if !request.tools.is_empty() {
        body["tools"] = request
            .tools
            .iter()
            .map(|t| {
                json!({"type": "function",
                       "function": {"name": names.wire(&t.name), "description": t.description,
                                    "parameters": crate::answer::object_schema(&t.parameters)}})
            })
            .collect();
    }
    if let Some(schema) = &request.response_schema {
        body["response_format"] = json!({
            "type": "json_schema",
            "json_schema": {"name": schema.name, "schema": schema.schema, "strict": true},
        });
    }
    body
}

#[derive(Debug, Default, Deserialize)]
struct Chunk {
    #[serde(default)]
    choices: Option<Vec<Choice>>,
    #[serde(default)]
    usage: Option<WireUsage>,
    /// Groq's older place for the usage.
    #[serde(default)]
    x_groq: Option<XGroq>,
    #[serde(default)]
    error: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct XGroq {
    #[serde(default)]
    usage: Option<WireUsage>,
}

#[derive(Debug, Default, Deserialize)]
struct Choice {
    #[serde(default)]
    delta: Option<Delta>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Delta {
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    reasoning: Option<String>,
    #[serde(default)]
    reasoning_content: Option<String>,
    #[serde(default)]
    tool_calls: Option<Vec<ToolCallDelta>>,
}

#[derive(Debug, Default, Deserialize)]
struct ToolCallDelta {
    #[serde(default)]
    index: Option<u32>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    function: Option<FunctionDelta>,
}

#[derive(Debug, Default, Deserialize)]
struct FunctionDelta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    arguments: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct WireUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
    #[serde(default)]
    prompt_tokens_details: Option<PromptDetails>,
    #[serde(default)]
    completion_tokens_details: Option<CompletionDetails>,
    /// DeepSeek's cached prompt tokens.
    #[serde(default)]
    prompt_cache_hit_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct PromptDetails {
    #[serde(default)]
    cached_tokens: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct CompletionDetails {
    #[serde(default)]
    reasoning_tokens: Option<u64>,
}

/// The stream's state: which upstream call index is which of ours, and whether it ended.
#[derive(Debug, Default)]
pub(crate) struct Parser {
    calls: HashMap<u32, usize>,
    /// Calls by id, for servers that leave out `index`.
    ids: HashMap<String, usize>,
    last_call: Option<usize>,
    done: bool,
}

impl Parser {
    /// Whether `[DONE]` arrived.
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// Reads one event into `answer`.
    pub(crate) fn event(&mut self, event: &SseEvent, answer: &mut Answer) -> Result<(), Failure> {
        let data = event.data.trim();
        if data == "[DONE]" {
            self.done = true;
            return Ok(());
        }
        if data.is_empty() {
            return Ok(());
        }
        let value: Value = serde_json::from_str(data).map_err(|e| {
            tracing::debug!(raw = %truncate(data, 2000), "unreadable model stream event");
            Failure::Invalid(format!("unreadable stream event: {e}"))
        })?;
        if event.event == "error" || value.get("error").is_some_and(|e| !e.is_null()) {
            tracing::debug!(raw = %truncate(data, 2000), "model stream error event");
            return Err(stream_error(value.get("error").unwrap_or(&value)));
        }
        let chunk: Chunk = serde_json::from_value(value).map_err(|e| {
            tracing::debug!(raw = %truncate(data, 2000), "unexpected model stream chunk");
            Failure::Invalid(format!("unexpected stream chunk: {e}"))
        })?;
        if let Some(error) = chunk.error.filter(|e| !e.is_null()) {
            return Err(stream_error(&error));
        }
        for choice in chunk.choices.unwrap_or_default() {
            if let Some(delta) = choice.delta {
                for reasoning in [delta.reasoning, delta.reasoning_content].into_iter().flatten() {
                    answer.reasoning(&reasoning);
                }
                if let Some(content) = delta.content {
                    answer.text(&content);
                }
                for call in delta.tool_calls.unwrap_or_default() {
                    let index = match (call.index, call.id.as_deref().filter(|id| !id.is_empty())) {
                        (Some(upstream), _) => *self.calls.entry(upstream).or_insert_with(|| answer.new_call()),
                        // Without an index: a new id is a new call, else the call goes on.
                        (None, Some(id)) => *self.ids.entry(id.to_owned()).or_insert_with(|| answer.new_call()),
                        (None, None) => match self.last_call {
                            Some(last) => last,
                            None => answer.new_call(),
                        },
                    };
                    self.last_call = Some(index);
                    if let Some(id) = call.id {
                        answer.call_id(index, &id);
                    }
                    if let Some(function) = call.function {
                        if let Some(name) = function.name {
                            answer.call_name(index, &name);
                        }
                        if let Some(arguments) = function.arguments {
                            answer.call_arguments(index, &arguments);
                        }
                    }
                }
            }
            if let Some(reason) = choice.finish_reason.filter(|r| !r.is_empty()) {
                answer.finish = Some(finish_reason(&reason));
            }
        }
        let usage = chunk.usage.filter(|u| u.prompt_tokens.is_some() || u.completion_tokens.is_some());
        if let Some(usage) = usage.or_else(|| chunk.x_groq.and_then(|x| x.usage))
            && (usage.prompt_tokens.is_some() || usage.completion_tokens.is_some())
        {
            answer.usage = Usage {
                input_tokens: usage.prompt_tokens.unwrap_or(0),
                output_tokens: usage.completion_tokens.unwrap_or(0),
                cached_input_tokens: usage
                    .prompt_tokens_details
                    .and_then(|d| d.cached_tokens)
                    .or(usage.prompt_cache_hit_tokens)
                    .unwrap_or(0),
                cache_write_tokens: 0,
                reasoning_tokens: usage.completion_tokens_details.and_then(|d| d.reasoning_tokens).unwrap_or(0),
            };
            answer.usage_reported = true;
        }
        Ok(())
    }

    /// A whole (non-streamed) answer, from a server that ignored `stream: true`: read
    /// as one chunk whose deltas are the messages.
    pub(crate) fn whole(&mut self, mut value: Value, answer: &mut Answer) -> Result<(), Failure> {
        if let Some(choices) = value.get_mut("choices").and_then(Value::as_array_mut) {
            for choice in choices {
                if let Some(message) = choice.get_mut("message").map(Value::take) {
                    choice["delta"] = message;
                }
                if let Some(calls) = choice.pointer_mut("/delta/tool_calls").and_then(Value::as_array_mut) {
                    for (index, call) in calls.iter_mut().enumerate() {
                        call["index"] = json!(index);
                    }
                }
            }
        }
        self.event(&SseEvent { event: String::new(), data: value.to_string() }, answer)?;
        self.done = true;
        Ok(())
    }

    /// The body ended without `[DONE]`: a normal end once the model said why it stopped
    /// (or reported usage), else a cut stream.
    pub(crate) fn end(&mut self, answer: &Answer) -> Result<(), Failure> {
        if self.done || answer.finish.is_some() || answer.usage_reported {
            self.done = true;
            Ok(())
        } else {
            Err(Failure::Retryable("the stream ended before the answer finished".into()))
        }
    }
}

fn finish_reason(reason: &str) -> FinishReason {
    match reason {
        "stop" | "end_turn" => FinishReason::Stop,
        "length" | "max_tokens" => FinishReason::Length,
        "tool_calls" | "function_call" | "tool_use" => FinishReason::ToolCalls,
        "content_filter" => FinishReason::ContentFilter,
        other => FinishReason::Other(other.to_owned()),
    }
}

/// An error object (`{"message", "type", "code"}`, or a bare string) as a failure.
pub(crate) fn stream_error(error: &Value) -> Failure {
    let text = |key: &str| error.get(key).and_then(Value::as_str).unwrap_or_default();
    let message = error.as_str().unwrap_or(text("message"));
    let message = if message.is_empty() { "an error event without a message" } else { message };
    let message = truncate(message, 500);
    let kind = [text("type"), text("code")];
    if kind.iter().any(|k| is_quota(k)) || message.contains("credit balance") {
        return Failure::Quota(message);
    }
    if kind.iter().any(|k| {
        matches!(*k, "invalid_request_error" | "authentication_error" | "permission_error" | "not_found_error")
    }) {
        return Failure::Refused { status: 200, message };
    }
    Failure::Retryable(message)
}

/// Whether an error type or code means the account's quota or spend limit is spent.
pub(crate) fn is_quota(kind: &str) -> bool {
    matches!(kind, "insufficient_quota" | "billing_hard_limit_reached" | "billing_not_active" | "billing_error")
}

#[cfg(test)]
mod tests {
    use maestro_core::llm::{ChatEvent, ChatMessage, ResponseSchema, ToolCallRequest, ToolDefinition};

    use super::*;

    fn feed(lines: &[&str]) -> (Answer, Result<(), Failure>) {
        let mut parser = Parser::default();
        let mut answer = Answer::new(ToolNames::default());
        for line in lines {
            if let Err(e) = parser.event(&SseEvent { event: String::new(), data: (*line).into() }, &mut answer) {
                return (answer, Err(e));
            }
        }
        let end = parser.end(&answer);
        (answer, end)
    }

    #[test]
    fn reads_text_reasoning_and_usage_with_details() {
        let (mut answer, result) = feed(&[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"think"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning":"ing"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"Hel"}}]}"#,
            r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":4},"completion_tokens_details":{"reasoning_tokens":2}}}"#,
            "[DONE]",
        ]);
        result.expect("ok");
        answer.complete("m", "p").expect("complete");
        let events: Vec<_> = answer.events.into_iter().collect();
        assert_eq!(events[0], ChatEvent::Reasoning { text: "think".into() });
        assert_eq!(events[2], ChatEvent::Text { text: "Hel".into() });
        let ChatEvent::Completed(response) = events.last().expect("last") else { panic!("{events:?}") };
        assert_eq!(response.text, "Hello");
        assert_eq!(response.finish, FinishReason::Stop);
        assert!(response.usage_reported);
        assert_eq!(
            response.usage,
            Usage {
                input_tokens: 10,
                output_tokens: 5,
                cached_input_tokens: 4,
                cache_write_tokens: 0,
                reasoning_tokens: 2
            }
        );
    }

    #[test]
    fn empty_usage_and_unknown_finish_reasons_are_accepted() {
        let (mut answer, result) =
            feed(&[r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"eos_token","extra":1}],"usage":{}}"#]);
        result.expect("a finish reason then the end is a normal end");
        answer.complete("m", "p").expect("complete");
        let Some(ChatEvent::Completed(response)) = answer.events.back() else { panic!("completed") };
        assert_eq!(response.finish, FinishReason::Other("eos_token".into()));
        assert!(!response.usage_reported);
    }

    #[test]
    fn usage_is_read_where_groq_and_deepseek_put_it() {
        let (answer, result) = feed(&[
            r#"{"choices":[{"delta":{"content":"x"},"finish_reason":"stop"}],"x_groq":{"usage":{"prompt_tokens":7,"completion_tokens":2}}}"#,
        ]);
        result.expect("ok");
        assert_eq!(answer.usage, Usage { input_tokens: 7, output_tokens: 2, ..Usage::default() });
        let (answer, _) = feed(&[
            r#"{"choices":[],"usage":{"prompt_tokens":70,"completion_tokens":2,"prompt_cache_hit_tokens":64,"prompt_cache_miss_tokens":6}}"#,
        ]);
        assert_eq!(answer.usage.cached_input_tokens, 64);
    }

    #[test]
    fn an_error_object_mid_stream_is_a_failure() {
        let (_, result) = feed(&[
            r#"{"choices":[{"delta":{"content":"x"}}]}"#,
            r#"{"error":{"message":"overloaded","type":"server_error"}}"#,
        ]);
        assert_eq!(result, Err(Failure::Retryable("overloaded".into())));
        let (_, result) = feed(&[r#"{"error":{"message":"no money","code":"insufficient_quota"}}"#]);
        assert_eq!(result, Err(Failure::Quota("no money".into())));
    }

    #[test]
    fn calls_without_an_index_are_told_apart_by_their_ids() {
        let (mut answer, result) = feed(&[
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"a","function":{"name":"f","arguments":"{\"x\":"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"function":{"arguments":"1}"}}]}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"id":"b","function":{"name":"g","arguments":"{}"}}]}}]}"#,
            r#"{"choices":[{"delta":{},"finish_reason":"tool_calls"}]}"#,
        ]);
        result.expect("ok");
        answer.complete("m", "p").expect("complete");
        let Some(ChatEvent::Completed(response)) = answer.events.back() else { panic!("completed") };
        let calls: Vec<_> =
            response.tool_calls.iter().map(|c| (c.id.as_str(), c.name.as_str(), c.arguments.as_str())).collect();
        assert_eq!(calls, [("a", "f", "{\"x\":1}"), ("b", "g", "{}")]);
    }

    #[test]
    fn a_stream_cut_before_any_finish_is_a_failure() {
        let (_, result) = feed(&[r#"{"choices":[{"delta":{"content":"x"}}]}"#]);
        assert!(matches!(result, Err(Failure::Retryable(_))), "{result:?}");
    }

    #[test]
    fn the_request_maps_roles_tools_and_structured_output() {
        let tools = vec![ToolDefinition {
            name: "calc.add".into(),
            description: "adds".into(),
            parameters: json!({"type": "object"}),
        }];
        let names = ToolNames::new(&tools);
        let mut assistant = ChatMessage::new(ChatRole::Assistant, "");
        assistant.tool_calls =
            vec![ToolCallRequest { id: "c1".into(), name: "calc.add".into(), arguments: "{}".into() }];
        let request = ChatRequest {
            model: "m".into(),
            messages: vec![
                ChatMessage::new(ChatRole::System, "be brief"),
                ChatMessage::new(ChatRole::User, "1+1?"),
                assistant,
                ChatMessage::tool_result("c1", "2", false),
            ],
            tools,
            max_tokens: Some(100),
            temperature: Some(0.5),
            response_schema: Some(ResponseSchema { name: "answer".into(), schema: json!({"type": "object"}) }),
        };
        let body = request_body("gpt-x", &request, 100, &names, false, true);
        assert_eq!(body["max_tokens"], 100);
        assert!(body.get("max_completion_tokens").is_none());
        assert_eq!(body["stream_options"]["include_usage"], true);
        assert_eq!(body["messages"][2]["content"], Value::Null);
        assert_eq!(body["messages"][2]["tool_calls"][0]["function"]["name"], "calc_add");
        assert_eq!(body["messages"][3]["tool_call_id"], "c1");
        assert_eq!(body["tools"][0]["function"]["name"], "calc_add");
        assert_eq!(body["response_format"]["json_schema"]["strict"], true);
        let body = request_body("gpt-x", &request, 100, &names, true, false);
        assert_eq!(body["max_completion_tokens"], 100);
        assert!(body.get("max_tokens").is_none());
        assert!(body.get("stream_options").is_none());
    }
}

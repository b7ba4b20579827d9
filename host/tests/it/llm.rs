//! Model providers against fake OpenAI-compatible and Anthropic servers on 127.0.0.1
//! (`fake_llm`): streamed text and tool calls, exact usage, retries and fallbacks, cut
//! connections, timeouts, and API keys that go where they must and nowhere else.

use std::time::Duration;

use maestro_core::llm::{
    ChatEvent, ChatMessage, ChatRequest, ChatResponse, ChatRole, ChatStream, FinishReason, LlmError, ModelProvider,
    ResponseSchema, ToolDefinition, Usage,
};
use maestro_llm::{ApiKey, Llm, ProviderConfig, ProviderKind};
use serde_json::json;

use crate::fake_llm::{FakeLlm, Script, model, usage};

fn ask(model: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![ChatMessage::new(ChatRole::System, "be brief"), ChatMessage::new(ChatRole::User, "hi")],
        tools: vec![],
        max_tokens: None,
        temperature: None,
        response_schema: None,
    }
}

fn calc_tool() -> ToolDefinition {
    ToolDefinition {
        name: "calc.add".into(),
        description: "adds two numbers".into(),
        parameters: json!({"type": "object", "properties": {"a": {"type": "number"}, "b": {"type": "number"}}}),
    }
}

/// Every event of a stream, and the error that ended it, if any.
async fn drain(mut stream: Box<dyn ChatStream>) -> (Vec<ChatEvent>, Option<LlmError>) {
    let mut events = Vec::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(event) => events.push(event),
            Err(err) => return (events, Some(err)),
        }
    }
    (events, None)
}

fn completed(events: &[ChatEvent]) -> &ChatResponse {
    match events.last() {
        Some(ChatEvent::Completed(response)) => response,
        other => panic!("the last event is not Completed: {other:?} in {events:?}"),
    }
}

fn text_of(events: &[ChatEvent]) -> String {
    events.iter().filter_map(|e| if let ChatEvent::Text { text } = e { Some(text.as_str()) } else { None }).collect()
}

fn openai(fake: &FakeLlm) -> Llm {
    Llm::new(vec![fake.provider("fake", ProviderKind::OpenAi)], vec![model("m", "fake", &[])]).expect("valid setup")
}

fn anthropic(fake: &FakeLlm) -> Llm {
    Llm::new(vec![fake.provider("claude", ProviderKind::Anthropic)], vec![model("m", "claude", &[])])
        .expect("valid setup")
}

#[tokio::test]
async fn streams_text_with_started_first_and_reported_usage() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("Hello, wörld!", usage(12, 4)));
    let stream = openai(&fake).stream(ask("m")).await.expect("stream");
    let (events, error) = drain(stream).await;
    assert_eq!(error, None);
    assert_eq!(events[0], ChatEvent::Started { model: "m".into(), provider: "fake".into() });
    assert_eq!(text_of(&events), "Hello, wörld!");
    assert!(events.iter().filter(|e| matches!(e, ChatEvent::Text { .. })).count() > 1, "streamed in pieces");
    let response = completed(&events);
    assert_eq!(response.text, "Hello, wörld!");
    assert_eq!(response.finish, FinishReason::Stop);
    assert_eq!(response.usage, usage(12, 4));
    assert!(response.usage_reported);

    let requests = fake.requests();
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!((request.method.as_str(), request.path.as_str()), ("POST", "/v1/chat/completions"));
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert!(request.header("user-agent").is_some_and(|ua| ua.starts_with("maestro/")));
    assert_eq!(request.body["model"], "upstream-m");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["stream_options"]["include_usage"], true);
    assert_eq!(request.body["max_tokens"], 512, "the model's configured maximum");
    assert_eq!(request.body["messages"][0], json!({"role": "system", "content": "be brief"}));
    assert_eq!(request.credential("authorization"), None, "no key configured, none sent");
}

#[tokio::test]
async fn tool_calls_streamed_in_fragments_are_reported_under_their_original_names() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_tool_calls(&[("call_1", "calc_add", r#"{"a": 1, "b": 2}"#)], usage(30, 9)));
    let request = ChatRequest { tools: vec![calc_tool()], ..ask("m") };
    let (events, error) = drain(openai(&fake).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(events[1], ChatEvent::ToolCallStarted { index: 0, id: "call_1".into(), name: "calc.add".into() });
    let fragments: Vec<&str> = events
        .iter()
        .filter_map(
            |e| if let ChatEvent::ToolCallArguments { fragment, .. } = e { Some(fragment.as_str()) } else { None },
        )
        .collect();
    assert!(fragments.len() >= 2, "{fragments:?}");
    assert_eq!(fragments.concat(), r#"{"a": 1, "b": 2}"#);
    let response = completed(&events);
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(response.tool_calls.len(), 1);
    assert_eq!(response.tool_calls[0].name, "calc.add");
    assert_eq!(response.tool_calls[0].arguments, r#"{"a": 1, "b": 2}"#);
    let body = &fake.requests()[0].body;
    assert_eq!(body["tools"][0]["function"]["name"], "calc_add", "a provider-safe name upstream");
    assert_eq!(body["tools"][0]["type"], "function");
}

#[tokio::test]
async fn two_parallel_tool_calls_keep_their_order_and_arguments_apart() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_tool_calls(
        &[("call_a", "calc_add", r#"{"a":1,"b":2}"#), ("call_b", "calc_add", r#"{"a":3,"b":4}"#)],
        usage(30, 20),
    ));
    let request = ChatRequest { tools: vec![calc_tool()], ..ask("m") };
    let (events, error) = drain(openai(&fake).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    let calls = &completed(&events).tool_calls;
    assert_eq!(calls.len(), 2);
    assert_eq!((calls[0].id.as_str(), calls[0].arguments.as_str()), ("call_a", r#"{"a":1,"b":2}"#));
    assert_eq!((calls[1].id.as_str(), calls[1].arguments.as_str()), ("call_b", r#"{"a":3,"b":4}"#));
    assert!(events.contains(&ChatEvent::ToolCallStarted { index: 1, id: "call_b".into(), name: "calc.add".into() }));
}

#[tokio::test]
async fn the_final_usage_chunk_reports_cached_and_reasoning_tokens() {
    let fake = FakeLlm::start().await;
    let reported = Usage {
        input_tokens: 2000,
        output_tokens: 300,
        cached_input_tokens: 1536,
        cache_write_tokens: 0,
        reasoning_tokens: 128,
    };
    fake.push(Script::openai_text("ok", reported));
    let (events, _) = drain(openai(&fake).stream(ask("m")).await.expect("stream")).await;
    assert_eq!(completed(&events).usage, reported);
}

#[tokio::test]
async fn a_429_with_retry_after_is_retried_then_succeeds() {
    let fake = FakeLlm::start().await;
    fake.push(
        Script::json(429, json!({"error": {"message": "Rate limit reached", "type": "requests"}}))
            .header("retry-after", "0"),
    );
    fake.push(Script::openai_text("after the wait", usage(5, 3)));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("retried")).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&events), "after the wait");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn retry_after_ms_is_waited_for() {
    let fake = FakeLlm::start().await;
    fake.push(Script::json(503, json!({"error": {"message": "busy"}})).header("retry-after-ms", "150"));
    fake.push(Script::openai_text("ok", usage(1, 1)));
    let started = std::time::Instant::now();
    drain(openai(&fake).stream(ask("m")).await.expect("retried")).await;
    assert!(started.elapsed() >= Duration::from_millis(150), "waited {:?}", started.elapsed());
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn x_should_retry_false_is_obeyed() {
    let fake = FakeLlm::start().await;
    fake.push(Script::json(503, json!({"error": {"message": "do not retry"}})).header("x-should-retry", "false"));
    fake.push(Script::openai_text("never asked", usage(1, 1)));
    let err = openai(&fake).stream(ask("m")).await.err().expect("not retried");
    assert!(matches!(&err, LlmError::Unavailable { attempts: 1, last } if last.contains("do not retry")), "{err:?}");
    assert_eq!(fake.request_count(), 1);
    // And `true` retries even a status that would not be.
    fake.push(Script::json(400, json!({"error": {"message": "odd"}})).header("x-should-retry", "true"));
    let (events, _) = drain(openai(&fake).stream(ask("m")).await.expect("retried")).await;
    assert_eq!(text_of(&events), "never asked");
}

#[tokio::test]
async fn insufficient_quota_is_not_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Script::json(
        429,
        json!({"error": {"message": "You exceeded your current quota", "type": "insufficient_quota", "code": "insufficient_quota"}}),
    ).header("retry-after", "0"));
    fake.push(Script::openai_text("never asked", usage(1, 1)));
    let err = openai(&fake).stream(ask("m")).await.err().expect("quota");
    assert!(matches!(&err, LlmError::QuotaExceeded(m) if m.contains("current quota")), "{err:?}");
    assert_eq!(err.code(), "model_quota_exceeded");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn a_529_exhausts_its_retries_then_falls_back_to_another_provider() {
    let primary = FakeLlm::start().await;
    let secondary = FakeLlm::start().await;
    for _ in 0..2 {
        primary.push(
            Script::json(529, json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
                .header("retry-after", "0"),
        );
    }
    secondary.push(Script::anthropic_answer("from the fallback", &[], usage(10, 3)));
    let llm = Llm::new(
        vec![primary.provider("openai", ProviderKind::OpenAi), secondary.provider("claude", ProviderKind::Anthropic)],
        vec![model("first", "openai", &["second"]), model("second", "claude", &[])],
    )
    .expect("valid");
    let (events, error) = drain(llm.stream(ask("first")).await.expect("fell back")).await;
    assert_eq!(error, None);
    assert_eq!(events[0], ChatEvent::Started { model: "second".into(), provider: "claude".into() });
    assert_eq!(completed(&events).model, "second");
    assert_eq!(text_of(&events), "from the fallback");
    assert_eq!(primary.request_count(), 2, "one try and one retry (max_retries = 1)");
    assert_eq!(secondary.request_count(), 1);
    assert_eq!(secondary.requests()[0].body["model"], "upstream-second");
}

#[tokio::test]
async fn unavailable_names_the_attempts_over_the_whole_chain() {
    let primary = FakeLlm::start().await;
    let secondary = FakeLlm::start().await;
    for fake in [&primary, &secondary] {
        for _ in 0..2 {
            fake.push(Script::json(500, json!({"error": {"message": "boom"}})).header("retry-after", "0"));
        }
    }
    let llm = Llm::new(
        vec![primary.provider("a", ProviderKind::OpenAi), secondary.provider("b", ProviderKind::OpenAi)],
        vec![model("first", "a", &["second"]), model("second", "b", &[])],
    )
    .expect("valid");
    let err = llm.stream(ask("first")).await.err().expect("unavailable");
    assert!(matches!(&err, LlmError::Unavailable { attempts: 4, last } if last.contains("second")), "{err:?}");
}

#[tokio::test]
async fn an_error_event_mid_stream_fails_the_stream_without_a_retry() {
    let fake = FakeLlm::start().await;
    fake.push(Script::sse_raw(&[
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"Hal\"}}]}\n\n",
        "event: error\ndata: {\"error\":{\"message\":\"upstream model crashed\",\"type\":\"server_error\"}}\n\n",
    ]));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("started")).await;
    assert_eq!(text_of(&events), "Hal");
    assert!(matches!(&error, Some(LlmError::Stream(m)) if m.contains("upstream model crashed")), "{error:?}");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn an_anthropic_overloaded_error_before_the_first_token_is_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Script::anthropic_events(&[
        (
            "message_start",
            json!({"type": "message_start", "message": {"usage": {"input_tokens": 5, "output_tokens": 1}}}),
        ),
        ("error", json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}})),
    ]));
    fake.push(Script::anthropic_answer("second time", &[], usage(5, 2)));
    let (events, error) = drain(anthropic(&fake).stream(ask("m")).await.expect("retried")).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&events), "second time");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_connection_cut_before_the_first_event_is_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("lost", usage(1, 1)).cut_after(0));
    fake.push(Script::openai_text("whole", usage(1, 1)));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("retried")).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&events), "whole");
    assert_eq!(fake.request_count(), 2);
}

#[tokio::test]
async fn a_connection_cut_after_the_first_event_fails_the_stream() {
    let fake = FakeLlm::start().await;
    // The role chunk, then two text chunks, then the connection drops.
    fake.push(Script::openai_text("abcdefgh", usage(1, 1)).cut_after(3));
    fake.push(Script::openai_text("never asked", usage(1, 1)));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("started")).await;
    assert_eq!(text_of(&events), "abcdefgh");
    assert!(matches!(&error, Some(LlmError::Stream(_))), "{error:?}");
    assert_eq!(error.as_ref().map(LlmError::code), Some("model_stream_failed"));
    assert_eq!(fake.request_count(), 1, "never retried once the caller saw an event");
}

#[tokio::test]
async fn crlf_line_endings_are_read_like_lf() {
    let fake = FakeLlm::start().await;
    fake.push(Script::sse_raw(&[
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"one \"}}]}\r\n\r\n",
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"two\"},\"finish_reason\":\"stop\"}]}\r\n\r\ndata: [DONE]\r\n\r\n",
    ]));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(completed(&events).text, "one two");
}

#[tokio::test]
async fn a_character_split_across_writes_arrives_whole() {
    let fake = FakeLlm::start().await;
    let event = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"caf\u{e9} \u{1f600}\"},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n";
    let bytes = event.as_bytes();
    let e_acute = event.find('\u{e9}').expect("é");
    let emoji = event.find('\u{1f600}').expect("emoji");
    let parts: [&[u8]; 3] = [&bytes[..e_acute + 1], &bytes[e_acute + 1..emoji + 2], &bytes[emoji + 2..]];
    fake.push(Script::sse_bytes(&parts));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(completed(&events).text, "caf\u{e9} \u{1f600}");
}

#[tokio::test]
async fn empty_usage_is_accepted_as_none_reported() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_events(&[
        json!({"choices": [{"index": 0, "delta": {"content": "hi"}, "finish_reason": "stop"}], "usage": {}}),
        json!({"choices": [], "usage": null}),
    ]));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("stream")).await;
    assert_eq!(error, None);
    let response = completed(&events);
    assert!(!response.usage_reported);
    assert_eq!(response.usage, Usage::default());
}

#[tokio::test]
async fn a_tool_name_arriving_in_a_later_chunk_starts_the_call_then() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_events(&[
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "call_9", "function": {"arguments": "{\"a\":"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"name": "calc_add"}}]}}]}),
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": {"arguments": "1}"}}]}, "finish_reason": "tool_calls"}]}),
    ]));
    let request = ChatRequest { tools: vec![calc_tool()], ..ask("m") };
    let (events, error) = drain(openai(&fake).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(events[1], ChatEvent::ToolCallStarted { index: 0, id: "call_9".into(), name: "calc.add".into() });
    assert_eq!(events[2], ChatEvent::ToolCallArguments { index: 0, fragment: "{\"a\":".into() });
    assert_eq!(completed(&events).tool_calls[0].arguments, "{\"a\":1}");
}

#[tokio::test]
async fn a_missing_done_after_the_finish_is_a_normal_end() {
    let fake = FakeLlm::start().await;
    fake.push(Script::sse_raw(&[
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"done\"},\"finish_reason\":\"stop\"}]}\n\n",
        "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":1}}",
    ]));
    let (events, error) = drain(openai(&fake).stream(ask("m")).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(completed(&events).usage, usage(3, 1), "the last event needs no blank line either");
}

#[tokio::test]
async fn a_slow_first_token_times_out_and_is_retried() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("late", usage(1, 1)).sleep_before(0, Duration::from_secs(3)));
    fake.push(Script::openai_text("on time", usage(1, 1)));
    let provider = ProviderConfig {
        first_token_timeout: Duration::from_millis(300),
        ..fake.provider("fake", ProviderKind::OpenAi)
    };
    let llm = Llm::new(vec![provider.clone()], vec![model("m", "fake", &[])]).expect("valid");
    let (events, error) = drain(llm.stream(ask("m")).await.expect("retried")).await;
    assert_eq!(error, None);
    assert_eq!(text_of(&events), "on time");
    assert_eq!(fake.request_count(), 2);

    fake.push(Script::openai_text("late", usage(1, 1)).sleep_before(0, Duration::from_secs(3)));
    let once =
        Llm::new(vec![ProviderConfig { max_retries: 0, ..provider }], vec![model("m", "fake", &[])]).expect("valid");
    let err = once.stream(ask("m")).await.err().expect("timed out");
    assert!(matches!(&err, LlmError::Unavailable { last, .. } if last.contains("first token")), "{err:?}");
}

#[tokio::test]
async fn a_stream_idle_too_long_times_out() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("abcdefgh", usage(1, 1)).sleep_before(2, Duration::from_secs(3)));
    let provider =
        ProviderConfig { idle_timeout: Duration::from_millis(300), ..fake.provider("fake", ProviderKind::OpenAi) };
    let llm = Llm::new(vec![provider], vec![model("m", "fake", &[])]).expect("valid");
    let (events, error) = drain(llm.stream(ask("m")).await.expect("started")).await;
    assert_eq!(text_of(&events), "abcd");
    assert!(matches!(&error, Some(LlmError::Timeout(m)) if m.contains("no data")), "{error:?}");
    assert_eq!(fake.request_count(), 1);
}

#[tokio::test]
async fn structured_output_is_requested_as_each_provider_documents_it() {
    let schema = ResponseSchema {
        name: "decision".into(),
        schema: json!({"type": "object", "properties": {"next": {"type": "string"}}, "required": ["next"], "additionalProperties": false}),
    };
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("{\"next\":\"ada\"}", usage(20, 5)));
    let request = ChatRequest { response_schema: Some(schema.clone()), ..ask("m") };
    let (events, _) = drain(openai(&fake).stream(request.clone()).await.expect("stream")).await;
    assert_eq!(completed(&events).text, "{\"next\":\"ada\"}");
    assert_eq!(
        fake.requests()[0].body["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "decision", "schema": schema.schema, "strict": true}})
    );

    let claude = FakeLlm::start().await;
    claude.push(Script::anthropic_answer("", &[("toolu_1", "decision", "{\"next\":\"ada\"}")], usage(20, 5)));
    let (events, error) = drain(anthropic(&claude).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    let response = completed(&events);
    assert_eq!(response.text, "{\"next\":\"ada\"}", "the forced tool's input is the answer");
    assert!(response.tool_calls.is_empty());
    assert_eq!(response.finish, FinishReason::Stop);
    let body = &claude.requests()[0].body;
    assert_eq!(body["tool_choice"], json!({"type": "tool", "name": "decision"}));
    assert_eq!(body["tools"][0]["input_schema"], schema.schema);
}

#[tokio::test]
async fn anthropic_streams_text_tool_use_and_usage_with_cache_tokens() {
    let fake = FakeLlm::start().await;
    let reported = Usage {
        input_tokens: 1200,
        output_tokens: 42,
        cached_input_tokens: 1000,
        cache_write_tokens: 150,
        reasoning_tokens: 0,
    };
    fake.push(Script::anthropic_answer("Let me add.", &[("toolu_1", "calc_add", r#"{"a":1,"b":2}"#)], reported));
    let mut provider = fake.provider("claude", ProviderKind::Anthropic);
    provider.api_key = Some(ApiKey::fixed("sk-ant-test-key"));
    let llm = Llm::new(vec![provider], vec![model("m", "claude", &[])]).expect("valid");
    let mut assistant = ChatMessage::new(ChatRole::Assistant, "");
    assistant.tool_calls = vec![maestro_core::llm::ToolCallRequest {
        id: "toolu_0".into(),
        name: "calc.add".into(),
        arguments: "{}".into(),
    }];
    let request = ChatRequest {
        tools: vec![calc_tool()],
        messages: vec![
            ChatMessage::new(ChatRole::System, "be brief"),
            ChatMessage::new(ChatRole::User, "add"),
            assistant,
            ChatMessage::tool_result("toolu_0", "error: missing a", true),
        ],
        ..ask("m")
    };
    let (events, error) = drain(llm.stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    assert_eq!(events[0], ChatEvent::Started { model: "m".into(), provider: "claude".into() });
    assert!(events.contains(&ChatEvent::ToolCallStarted { index: 0, id: "toolu_1".into(), name: "calc.add".into() }));
    let response = completed(&events);
    assert_eq!(response.text, "Let me add.");
    assert_eq!(response.tool_calls[0].arguments, r#"{"a":1,"b":2}"#);
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(response.usage, reported, "input = uncached + cache read + cache creation");

    let request = &fake.requests()[0];
    assert_eq!(request.path, "/v1/messages");
    assert_eq!(request.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(request.credential("x-api-key"), Some("sk-ant-test-key"));
    assert_eq!(request.credential("authorization"), None);
    assert_eq!(request.body["system"], "be brief");
    assert_eq!(request.body["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(request.body["messages"][2]["content"][0]["is_error"], true);
    assert_eq!(request.body["messages"][1]["content"][0]["name"], "calc_add");
}

#[tokio::test]
async fn dropping_the_stream_closes_the_connection() {
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("abcdefghijkl", usage(1, 1)).await_close_after(2));
    let llm = openai(&fake);
    let mut stream = llm.stream(ask("m")).await.expect("stream");
    assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Started { .. }))));
    assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Text { .. }))));
    drop(stream);
    assert!(fake.wait_closed(1).await, "the fake saw the client close the connection");

    // Also when the connection would otherwise be kept alive for the next call.
    fake.keep_alive();
    fake.push(Script::openai_text("warm", usage(1, 1)));
    drain(llm.stream(ask("m")).await.expect("stream")).await;
    fake.push(Script::openai_text("abcdefghijkl", usage(1, 1)).await_close_after(2));
    let mut stream = llm.stream(ask("m")).await.expect("stream");
    assert!(matches!(stream.next().await, Some(Ok(ChatEvent::Started { .. }))));
    drop(stream);
    assert!(fake.wait_closed(2).await, "a kept-alive connection read halfway is closed too");
    assert_eq!(fake.connections(), 2, "the second and third calls shared one connection");
}

#[tokio::test]
async fn connections_are_kept_alive_between_calls() {
    let fake = FakeLlm::start().await;
    fake.keep_alive();
    fake.always(Script::openai_text("again", usage(1, 1)));
    let llm = openai(&fake);
    for _ in 0..3 {
        let (events, error) = drain(llm.stream(ask("m")).await.expect("stream")).await;
        assert_eq!((text_of(&events).as_str(), error), ("again", None));
    }
    assert_eq!(fake.request_count(), 3);
    assert_eq!(fake.connections(), 1, "one TCP connection for three calls");
}

#[tokio::test]
async fn the_api_key_is_sent_as_a_bearer_token_and_never_appears_in_errors() {
    let fake = FakeLlm::start().await;
    let key = "sk-proj-SECRET-0123456789";
    fake.push(Script::openai_text("ok", usage(1, 1)));
    fake.push(Script::json(
        401,
        json!({"error": {"message": format!("Incorrect API key provided: {key}."), "type": "invalid_request_error"}}),
    ));
    let mut provider = fake.provider("fake", ProviderKind::OpenAi);
    provider.api_key = Some(ApiKey::fixed(key));
    let llm = Llm::new(vec![provider], vec![model("m", "fake", &[])]).expect("valid");
    drain(llm.stream(ask("m")).await.expect("stream")).await;
    assert_eq!(fake.requests()[0].credential("authorization"), Some(format!("Bearer {key}").as_str()));
    let err = llm.stream(ask("m")).await.err().expect("refused");
    assert!(matches!(&err, LlmError::Refused { status: 401, .. }), "{err:?}");
    let shown = format!("{err} {err:?} {llm:?}");
    assert!(!shown.contains("SECRET"), "{shown}");
    assert!(shown.contains("<redacted>"), "{shown}");
    assert_eq!(fake.request_count(), 2, "a 401 is not retried");
}

#[tokio::test]
async fn an_unknown_model_is_refused_before_any_request() {
    let fake = FakeLlm::start().await;
    let err = openai(&fake).stream(ask("nope")).await.err().expect("unknown");
    assert_eq!(err, LlmError::UnknownModel("nope".into()));
    assert_eq!(fake.request_count(), 0);
}

#[tokio::test]
async fn without_providers_models_are_empty_and_calls_say_what_to_configure() {
    use maestro_host::config::{Config, Env, Overrides};
    let config = Config::load(None, &Env::new(), &Overrides::default()).expect("defaults");
    let models = maestro_host::open_models(&config, &Env::new()).expect("no provider is fine");
    assert!(models.models().is_empty());
    let err = models.stream(ask("any")).await.err().expect("no provider");
    assert_eq!(err.code(), "no_model_provider");
    assert!(err.to_string().contains("[[llm.providers]]"), "{err}");
}

#[tokio::test]
async fn open_models_reads_the_key_from_the_environment_and_calls_the_configured_provider() {
    use maestro_host::config::{Config, Env, Overrides, RawConfig};
    let fake = FakeLlm::start().await;
    fake.push(Script::openai_text("configured", usage(2, 1)));
    let text = format!(
        "[[llm.providers]]\nname = \"local\"\nkind = \"openai\"\nbase_url = \"{}\"\napi_key = \"env:LOCAL_KEY\"\n\
         allow_private = true\n[[llm.models]]\nid = \"m\"\nprovider = \"local\"\nmodel = \"qwen\"\ntier = \"fast\"\n",
        fake.openai_base()
    );
    let raw = RawConfig::parse(&text, std::path::Path::new("t.toml")).expect("parses");
    let env: Env = [("LOCAL_KEY".to_owned(), "local-key-1".to_owned())].into();
    let config = Config::from_raw(raw.clone(), &env, &Overrides::default()).expect("valid");
    let models = maestro_host::open_models(&config, &env).expect("opens");
    assert_eq!(models.models()[0].tier, maestro_core::plugin::ModelTier::Small);
    let (events, _) = drain(models.stream(ask("m")).await.expect("stream")).await;
    assert_eq!(completed(&events).text, "configured");
    assert_eq!(fake.requests()[0].body["model"], "qwen");
    assert_eq!(fake.requests()[0].credential("authorization"), Some("Bearer local-key-1"));

    let err = maestro_host::open_models(&config, &Env::new()).expect_err("the key is not set");
    assert!(err.to_string().contains("env:LOCAL_KEY"), "{err}");
}

#[tokio::test]
async fn a_provider_refusing_connections_is_retried_then_falls_back() {
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = closed.local_addr().expect("addr").port();
    drop(closed);
    let fallback = FakeLlm::start().await;
    fallback.push(Script::openai_text("still here", usage(1, 1)));
    let down = ProviderConfig {
        allow_private: true,
        max_retries: 1,
        ..ProviderConfig::new("down", ProviderKind::OpenAi, format!("http://127.0.0.1:{port}/v1"))
    };
    let llm = Llm::new(
        vec![down, fallback.provider("up", ProviderKind::OpenAi)],
        vec![model("first", "down", &["second"]), model("second", "up", &[])],
    )
    .expect("valid");
    let (events, error) = drain(llm.stream(ask("first")).await.expect("fell back")).await;
    assert_eq!(error, None);
    assert_eq!(events[0], ChatEvent::Started { model: "second".into(), provider: "up".into() });
    assert_eq!(text_of(&events), "still here");
}

#[tokio::test]
async fn open_models_reads_a_file_key_from_the_secrets_directory() {
    use maestro_host::config::{Config, Env, Overrides, RawConfig};
    let secrets = tempfile::tempdir().expect("secrets dir");
    std::fs::write(secrets.path().join("claude-key"), "sk-ant-from-file\n").expect("write the key");
    let fake = FakeLlm::start().await;
    fake.push(Script::anthropic_answer("hello", &[], usage(3, 1)));
    let text = format!(
        "[policies]\nsecrets_dir = \"{}\"\n[[llm.providers]]\nname = \"claude\"\nkind = \"anthropic\"\n\
         base_url = \"{}\"\napi_key = \"file:claude-key\"\nallow_private = true\n\
         [[llm.models]]\nid = \"m\"\nprovider = \"claude\"\n",
        secrets.path().display(),
        fake.origin()
    );
    let raw = RawConfig::parse(&text, std::path::Path::new("t.toml")).expect("parses");
    let config = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("valid");
    assert!(!format!("{config:?}").contains("sk-ant-from-file"));
    let models = maestro_host::open_models(&config, &Env::new()).expect("opens");
    let (events, _) = drain(models.stream(ask("m")).await.expect("stream")).await;
    assert_eq!(completed(&events).text, "hello");
    assert_eq!(fake.requests()[0].credential("x-api-key"), Some("sk-ant-from-file"));
}

#[tokio::test]
async fn a_server_that_ignores_stream_true_is_read_as_one_whole_answer() {
    let fake = FakeLlm::start().await;
    fake.push(Script::json(
        200,
        json!({"id": "chatcmpl-1", "object": "chat.completion", "choices": [{"index": 0, "finish_reason": "tool_calls",
            "message": {"role": "assistant", "content": "adding",
                        "tool_calls": [{"id": "call_1", "type": "function", "function": {"name": "calc_add", "arguments": "{\"a\":1}"}}]}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4}}),
    ));
    let request = ChatRequest { tools: vec![calc_tool()], ..ask("m") };
    let (events, error) = drain(openai(&fake).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    let response = completed(&events);
    assert_eq!(response.text, "adding");
    assert_eq!(response.tool_calls[0].name, "calc.add");
    assert_eq!(response.tool_calls[0].arguments, "{\"a\":1}");
    assert_eq!(response.usage, usage(9, 4));

    let claude = FakeLlm::start().await;
    claude.push(Script::json(
        200,
        json!({"id": "msg_1", "type": "message", "role": "assistant", "stop_reason": "tool_use",
            "content": [{"type": "text", "text": "adding"}, {"type": "tool_use", "id": "toolu_1", "name": "calc_add", "input": {"a": 1}}],
            "usage": {"input_tokens": 7, "cache_read_input_tokens": 2, "output_tokens": 4}}),
    ));
    let request = ChatRequest { tools: vec![calc_tool()], ..ask("m") };
    let (events, error) = drain(anthropic(&claude).stream(request).await.expect("stream")).await;
    assert_eq!(error, None);
    let response = completed(&events);
    assert_eq!(response.text, "adding");
    assert_eq!(response.tool_calls[0].arguments, "{\"a\":1}");
    assert_eq!(response.finish, FinishReason::ToolCalls);
    assert_eq!(response.usage.input_tokens, 9);

    fake.push(Script::sse_raw(&["<html>gateway says hi</html>"]));
    let err = openai(&fake).stream(ask("m")).await.err().expect("invalid");
    assert_eq!(err.code(), "model_invalid_response", "{err:?}");
}

#[tokio::test]
async fn a_paced_answer_configured_from_toml_streams_every_piece() {
    use maestro_host::config::{Config, Env, Overrides, RawConfig};
    let fake = FakeLlm::start().await;
    fake.always(Script::openai_text("one two three", usage(4, 3)).paced(Duration::from_millis(5)));
    let text = format!(
        "{}[[llm.models]]\nid = \"m\"\nprovider = \"local\"\n",
        fake.provider_toml("local", ProviderKind::OpenAi)
    );
    let raw = RawConfig::parse(&text, std::path::Path::new("t.toml")).expect("parses");
    let config = Config::from_raw(raw, &Env::new(), &Overrides::default()).expect("valid");
    let models = maestro_host::open_models(&config, &Env::new()).expect("opens");
    for _ in 0..2 {
        let (events, error) = drain(models.stream(ask("m")).await.expect("stream")).await;
        assert_eq!(error, None);
        assert_eq!(text_of(&events), "one two three");
    }
    assert_eq!(fake.request_count(), 2, "the default script answers every request");
}

#[tokio::test]
async fn a_server_refusing_stream_options_is_asked_again_without_it() {
    let fake = FakeLlm::start().await;
    fake.push(Script::json(
        422,
        json!({"object": "error", "message": "Extra inputs are not permitted: body.stream_options", "type": "invalid_request_error"}),
    ));
    fake.push(Script::openai_text("fine", usage(2, 1)));
    fake.push(Script::openai_text("again", usage(2, 1)));
    let llm = Llm::new(
        vec![ProviderConfig { max_retries: 0, ..fake.provider("strict", ProviderKind::OpenAi) }],
        vec![model("m", "strict", &[])],
    )
    .expect("valid");
    for expected in ["fine", "again"] {
        let (events, error) = drain(llm.stream(ask("m")).await.expect("resent")).await;
        assert_eq!((text_of(&events).as_str(), error), (expected, None));
    }
    let requests = fake.requests();
    assert_eq!(requests.len(), 3, "one refusal, then two calls without the field");
    assert!(requests[0].body.get("stream_options").is_some());
    assert!(requests[1].body.get("stream_options").is_none() && requests[2].body.get("stream_options").is_none());
}

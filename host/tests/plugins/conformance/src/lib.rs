//! `conformance`: the tools and prompts the official MCP conformance suite
//! (`@modelcontextprotocol/conformance`, pinned in `host/tests/mcp/package.json`) calls by
//! name, with exactly the content and behaviour its scenarios check. A test fixture for
//! `host/tests/it/mcp_conformance.rs`; never shipped.
//!
//! The server exposes them under their bare names (`MAESTRO_MCP_TOOL_NAMES=short`), so
//! the names here are the suite's: `test_simple_text`, `test_prompt_with_arguments`, …
//! `host/tests/mcp/conformance/scenarios.json` says which scenario uses which.

use std::borrow::Cow;
use std::time::Duration;

use maestro_sdk::schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use maestro_sdk::{
    Body, Content, Messages, NoInput, Params, Persona, PersonaSpec, PromptArgument, PromptContent, PromptMessage,
    RenderContext, Resource, ResourceError, ResourceTemplate, ToolError, ToolOutput, export_plugin, log, progress,
    tool,
};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A 1×1 red PNG.
const RED_PIXEL_PNG: [u8; 69] = [
    0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0x00, 0x00, 0x00, 0x0d, 0x49, 0x48, 0x44, 0x52, 0x00, 0x00, 0x00,
    0x01, 0x00, 0x00, 0x00, 0x01, 0x08, 0x02, 0x00, 0x00, 0x00, 0x90, 0x77, 0x53, 0xde, 0x00, 0x00, 0x00, 0x0c, 0x49,
    0x44, 0x41, 0x54, 0x78, 0x9c, 0x63, 0xf8, 0xcf, 0xc0, 0x00, 0x00, 0x03, 0x01, 0x01, 0x00, 0xc9, 0xfe, 0x92, 0xef,
    0x00, 0x00, 0x00, 0x00, 0x49, 0x45, 0x4e, 0x44, 0xae, 0x42, 0x60, 0x82,
];

/// Pause between the steps of the logging and progress tools (the suite asks for ~50 ms,
/// so that the client sees the notifications arrive during the call).
const STEP: Duration = Duration::from_millis(50);

/// A short WAV file: 8 kHz, mono, 8-bit PCM, `samples` samples of silence.
fn silent_wav(samples: u32) -> Vec<u8> {
    const RATE: u32 = 8_000;
    let mut wav = Vec::with_capacity(44 + samples as usize);
    wav.extend_from_slice(b"RIFF");
    wav.extend_from_slice(&(36 + samples).to_le_bytes());
    wav.extend_from_slice(b"WAVEfmt ");
    wav.extend_from_slice(&16u32.to_le_bytes()); // fmt chunk size
    wav.extend_from_slice(&1u16.to_le_bytes()); // PCM
    wav.extend_from_slice(&1u16.to_le_bytes()); // channels
    wav.extend_from_slice(&RATE.to_le_bytes()); // sample rate
    wav.extend_from_slice(&RATE.to_le_bytes()); // byte rate
    wav.extend_from_slice(&1u16.to_le_bytes()); // block align
    wav.extend_from_slice(&8u16.to_le_bytes()); // bits per sample
    wav.extend_from_slice(b"data");
    wav.extend_from_slice(&samples.to_le_bytes());
    wav.resize(44 + samples as usize, 0x80); // 8-bit PCM silence
    wav
}

fn red_pixel() -> Content {
    Content::image(&RED_PIXEL_PNG, "image/png")
}

fn simple_text(_: NoInput) -> Result<&'static str, ToolError> {
    Ok("This is a simple text response for testing.")
}

/// The `server-sse-polling` scenario's tool. The server, not the tool, closes the
/// call's POST stream: the conformance run lists it in `mcp.poll_tools`, so the client
/// gets this answer by resuming with `GET` and `Last-Event-ID` (SEP-1699).
fn reconnection(_: NoInput) -> Result<&'static str, ToolError> {
    Ok("Reconnection test completed successfully")
}

fn image_content(_: NoInput) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput { content: vec![red_pixel()], structured: None })
}

fn audio_content(_: NoInput) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput { content: vec![Content::audio(&silent_wav(80), "audio/wav")], structured: None })
}

fn embedded_resource(_: NoInput) -> Result<ToolOutput, ToolError> {
    let resource =
        Content::embedded_text("test://embedded-resource", "text/plain", "This is an embedded resource content.");
    Ok(ToolOutput { content: vec![resource], structured: None })
}

fn multiple_content_types(_: NoInput) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::text("Multiple content types test:").with(red_pixel()).with(Content::embedded_text(
        "test://mixed-content-resource",
        "application/json",
        r#"{"test":"data","value":123}"#,
    )))
}

fn tool_with_logging(_: NoInput) -> Result<&'static str, ToolError> {
    log::info("Tool execution started");
    std::thread::sleep(STEP);
    log::info("Tool processing data");
    std::thread::sleep(STEP);
    log::info("Tool execution completed");
    Ok("Tool with logging executed successfully")
}

fn logging_tool(_: NoInput) -> Result<&'static str, ToolError> {
    log::info("test_logging_tool ran");
    Ok("logged one message at info level")
}

fn tool_with_progress(_: NoInput) -> Result<&'static str, ToolError> {
    progress(0, Some(100), Some("started"));
    std::thread::sleep(STEP);
    progress(50, Some(100), Some("halfway"));
    std::thread::sleep(STEP);
    progress(100, Some(100), Some("done"));
    Ok("Tool with progress executed successfully")
}

fn error_handling(_: NoInput) -> Result<&'static str, ToolError> {
    Err(ToolError::failed("This tool intentionally returns an error for testing"))
}

/// Arguments of `test_sampling`.
#[derive(Debug, Deserialize, JsonSchema)]
struct SamplingArgs {
    /// The prompt to send to the model.
    prompt: String,
}

/// Asks the platform's model (over MCP: the client's own, by sampling) for at most 100
/// tokens.
fn sampling(args: SamplingArgs) -> Result<String, ToolError> {
    let request = maestro_sdk::model::Request::new(maestro_sdk::ModelTier::Medium, 100).user(args.prompt);
    let answer = maestro_sdk::model::complete(&request)?;
    Ok(format!("LLM response: {}", answer.text))
}

/// Arguments of `test_elicitation`.
#[derive(Debug, Deserialize, JsonSchema)]
struct ElicitationArgs {
    /// The message to show the user.
    message: String,
}

/// `action, content` as the suite's texts show an answer.
fn described(answer: &maestro_sdk::user::Answer) -> (&'static str, Value) {
    use maestro_sdk::user::Answer;
    match answer {
        Answer::Accepted(content) => ("accept", content.clone()),
        Answer::Declined => ("decline", Value::Null),
        Answer::Cancelled => ("cancel", Value::Null),
    }
}

/// Asks the user (over MCP: elicitation) for a username and an email.
fn elicitation(args: ElicitationArgs) -> Result<String, ToolError> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "username": { "type": "string", "description": "User's response" },
            "email": { "type": "string", "description": "User's email address" }
        },
        "required": ["username", "email"]
    });
    let (action, content) = described(&maestro_sdk::user::ask(&args.message, &schema)?);
    Ok(format!("User response: <action: {action}, content: {content}>"))
}

/// Asks two questions in turn, the second only once the first is answered (a run's
/// plugin question replayed across attempts; host/tests/it/plugin_asks.rs).
fn two_questions(_: NoInput) -> Result<String, ToolError> {
    let name = serde_json::json!({
        "type": "object", "properties": { "name": { "type": "string" } }, "required": ["name"]
    });
    let (action, who) = described(&maestro_sdk::user::ask("Your name?", &name)?);
    if action != "accept" {
        return Ok(format!("no name ({action})"));
    }
    let plan = serde_json::json!({
        "type": "object",
        "properties": { "plan": { "type": "string", "enum": ["free", "pro"] } },
        "required": ["plan"]
    });
    let (action, plan) = described(&maestro_sdk::user::ask("Which plan?", &plan)?);
    Ok(format!("name={}, plan={} ({action})", who["name"], plan["plan"]))
}

/// `{ "name": string }`, required: the one-field form the SEP-2322 scenarios ask with.
fn one_field(field: &str, kind: &str) -> Value {
    serde_json::json!({
        "type": "object", "properties": { field: { "type": kind } }, "required": [field]
    })
}

/// `input-required-result-basic-elicitation` (and the scenarios that reuse it): asks the
/// name; over stateless MCP the question is an input-required result.
fn input_required_elicitation(_: NoInput) -> Result<String, ToolError> {
    match maestro_sdk::user::ask("What is your name?", &one_field("name", "string"))? {
        maestro_sdk::user::Answer::Accepted(answer) => {
            Ok(format!("Hello, {}!", answer["name"].as_str().unwrap_or("?")))
        }
        _ => Ok("No name given.".to_owned()),
    }
}

/// `input-required-result-request-state`: a confirmation whose answer arrives only with
/// the request state the host sealed (the text says `state-ok`).
fn input_required_request_state(_: NoInput) -> Result<String, ToolError> {
    let (action, content) = described(&maestro_sdk::user::ask("Please confirm", &one_field("ok", "boolean"))?);
    Ok(format!("state-ok: {action}, {content}"))
}

/// `input-required-result-multi-round`: two rounds, the second asked once the first is
/// answered.
fn input_required_multi_round(_: NoInput) -> Result<String, ToolError> {
    let (_, name) = described(&maestro_sdk::user::ask("Step 1: What is your name?", &one_field("name", "string"))?);
    let (_, color) =
        described(&maestro_sdk::user::ask("Step 2: What is your favorite color?", &one_field("color", "string"))?);
    Ok(format!("{} likes {}", name["name"], color["color"]))
}

/// `input-required-result-basic-sampling`: a completion the stateless client's model
/// answers on its retry.
fn input_required_sampling(_: NoInput) -> Result<String, ToolError> {
    let request =
        maestro_sdk::model::Request::new(maestro_sdk::ModelTier::Medium, 100).user("What is the capital of France?");
    Ok(format!("LLM response: {}", maestro_sdk::model::complete(&request)?.text))
}

/// `input-required-result-tampered-state`: a confirmation; a retry whose request state
/// was changed is refused by the host before the tool runs.
fn input_required_tampered_state(_: NoInput) -> Result<String, ToolError> {
    let (action, _) = described(&maestro_sdk::user::ask("Please confirm", &one_field("ok", "boolean"))?);
    Ok(format!("confirmed ({action})"))
}

/// Asks with a default for every primitive type (SEP-1034).
fn elicitation_defaults(_: NoInput) -> Result<String, ToolError> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "name": { "type": "string", "default": "John Doe" },
            "age": { "type": "integer", "default": 30 },
            "score": { "type": "number", "default": 95.5 },
            "status": { "type": "string", "enum": ["active", "inactive", "pending"], "default": "active" },
            "verified": { "type": "boolean", "default": true }
        }
    });
    let (action, content) = described(&maestro_sdk::user::ask("Please review and update the form fields", &schema)?);
    Ok(format!("Elicitation completed: action={action}, content={content}"))
}

/// Asks with the five enum forms (SEP-1330).
fn elicitation_enums(_: NoInput) -> Result<String, ToolError> {
    let schema = serde_json::json!({
        "type": "object",
        "properties": {
            "untitledSingle": { "type": "string", "enum": ["option1", "option2", "option3"] },
            "titledSingle": { "type": "string", "oneOf": [
                { "const": "value1", "title": "First Option" },
                { "const": "value2", "title": "Second Option" },
                { "const": "value3", "title": "Third Option" }
            ] },
            "legacyEnum": { "type": "string", "enum": ["opt1", "opt2", "opt3"],
                "enumNames": ["Option One", "Option Two", "Option Three"] },
            "untitledMulti": { "type": "array", "items": { "type": "string", "enum": ["option1", "option2", "option3"] } },
            "titledMulti": { "type": "array", "items": { "anyOf": [
                { "const": "value1", "title": "First Choice" },
                { "const": "value2", "title": "Second Choice" },
                { "const": "value3", "title": "Third Choice" }
            ] } }
        }
    });
    let (action, content) = described(&maestro_sdk::user::ask("Please select options", &schema)?);
    Ok(format!("Elicitation completed: action={action}, content={content}"))
}

/// Arguments of `json_schema_2020_12_tool`: any object. What the suite checks is the
/// input schema, which keeps JSON Schema 2020-12 keywords (`$defs`, `$anchor`, `allOf`,
/// `anyOf`, `if`/`then`/`else`, `additionalProperties`) as written.
#[derive(Debug, Deserialize)]
struct ContactArgs(Map<String, Value>);

impl JsonSchema for ContactArgs {
    fn schema_name() -> Cow<'static, str> {
        "ContactArgs".into()
    }

    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "$defs": {
                "address": {
                    "$anchor": "addressDef",
                    "type": "object",
                    "properties": { "street": { "type": "string" }, "city": { "type": "string" } }
                }
            },
            "properties": {
                "name": { "type": "string" },
                "address": { "$ref": "#/$defs/address" },
                "contactMethod": { "type": "string", "enum": ["phone", "email"] },
                "phone": { "type": "string" },
                "email": { "type": "string" }
            },
            "allOf": [{ "anyOf": [{ "required": ["phone"] }, { "required": ["email"] }] }],
            "if": { "properties": { "contactMethod": { "const": "phone" } }, "required": ["contactMethod"] },
            "then": { "required": ["phone"] },
            "else": { "required": ["email"] },
            "additionalProperties": false
        })
    }
}

fn json_schema_2020_12(args: ContactArgs) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::structured(Value::Object(args.0)))
}

fn simple_prompt() -> Persona {
    Persona::new(PersonaSpec::new(
        "test_simple_prompt",
        "Simple prompt",
        "A simple prompt without arguments",
        "This is a simple prompt for testing.",
    ))
}

fn prompt_with_arguments() -> Persona {
    Persona::new(
        PersonaSpec::new(
            "test_prompt_with_arguments",
            "Prompt with arguments",
            "A prompt with required arguments",
            "Prompt with arguments: arg1='{{arg1}}', arg2='{{arg2}}'",
        )
        .argument(PromptArgument::required("arg1", "First test argument").values(["testValue1", "test-alpha", "other"]))
        .argument(PromptArgument::required("arg2", "Second test argument")),
    )
}

/// A persona that may call this plugin's tools (a run whose tools ask the user;
/// host/tests/it/plugin_asks.rs).
fn asking_persona() -> Persona {
    Persona::new(
        PersonaSpec::new("test_asker", "Asker", "Calls the tools that ask the user", "You are the asker.")
            .tools(["conformance.*", "calc.*"]),
    )
}

/// `prompts-get-with-image`: an image, then a text asking about it.
fn prompt_with_image() -> Persona {
    fn messages(_: &RenderContext<'_>) -> Result<Vec<PromptMessage>, String> {
        Ok(Messages::new()
            .user(PromptContent::image(&RED_PIXEL_PNG, "image/png"))
            .user("Please analyze the image above.")
            .build())
    }
    Persona::new(PersonaSpec::new(
        "test_prompt_with_image",
        "Prompt with image",
        "A prompt that includes image content",
        "This prompt shows an image.",
    ))
    .messages_with(messages)
}

/// `prompts-get-embedded-resource`: the resource named by `resourceUri`, then a text
/// asking to process it.
fn prompt_with_embedded_resource() -> Persona {
    fn messages(ctx: &RenderContext<'_>) -> Result<Vec<PromptMessage>, String> {
        Ok(Messages::new()
            .user(PromptContent::embedded_text(
                ctx.require("resourceUri")?,
                "text/plain",
                "Embedded resource content for testing.",
            ))
            .user("Please process the embedded resource above.")
            .build())
    }
    Persona::new(
        PersonaSpec::new(
            "test_prompt_with_embedded_resource",
            "Prompt with embedded resource",
            "A prompt that includes an embedded resource",
            "This prompt embeds a resource.",
        )
        .argument(PromptArgument::required("resourceUri", "URI of the resource to embed")),
    )
    .messages_with(messages)
}

export_plugin! {
    tools: [
        tool("test_simple_text", "Returns simple text content", simple_text).read_only(),
        tool("test_image_content", "Returns a 1x1 red PNG", image_content).read_only(),
        tool("test_audio_content", "Returns a short silent WAV", audio_content).read_only(),
        tool("test_embedded_resource", "Returns an embedded text resource", embedded_resource).read_only(),
        tool("test_multiple_content_types", "Returns text, an image and an embedded resource", multiple_content_types)
            .read_only(),
        tool("test_tool_with_logging", "Logs three messages at info level, 50 ms apart", tool_with_logging).read_only(),
        tool("test_logging_tool", "Logs one message at info level", logging_tool).read_only(),
        tool("test_tool_with_progress", "Reports progress 0, 50 and 100 of 100, 50 ms apart", tool_with_progress)
            .read_only(),
        tool("test_error_handling", "Always fails", error_handling).read_only(),
        tool("json_schema_2020_12_tool", "Tool with JSON Schema 2020-12 features", json_schema_2020_12).read_only(),
        tool("test_sampling", "Asks the client's model (MCP sampling) to answer a prompt", sampling).read_only(),
        tool("test_elicitation", "Asks the user (MCP elicitation) for a username and an email", elicitation).read_only(),
        tool("test_elicitation_sep1034_defaults", "Asks the user with a default for every field", elicitation_defaults)
            .read_only(),
        tool("test_elicitation_sep1330_enums", "Asks the user with every enum form", elicitation_enums).read_only(),
        tool("test_reconnection", "Answers on a stream the server closes first (SEP-1699 polling)", reconnection)
            .read_only(),
        tool("test_two_questions", "Asks the user for a name, then for a plan", two_questions).read_only(),
        tool("test_input_required_result_elicitation", "Asks the user's name (SEP-2322)", input_required_elicitation)
            .read_only(),
        tool("test_input_required_result_request_state", "Asks for a confirmation (SEP-2322 request state)", input_required_request_state)
            .read_only(),
        tool("test_input_required_result_multi_round", "Asks a name, then a colour (SEP-2322 rounds)", input_required_multi_round)
            .read_only(),
        tool("test_input_required_result_sampling", "Asks the client's model (SEP-2322 sampling)", input_required_sampling)
            .read_only(),
        tool("test_input_required_result_tampered_state", "Asks for a confirmation (SEP-2322 sealed state)", input_required_tampered_state)
            .read_only(),
    ],
    personas: [
        simple_prompt(),
        prompt_with_arguments(),
        prompt_with_image(),
        prompt_with_embedded_resource(),
        asking_persona(),
    ],
    resources: [static_text(), static_binary(), watched_resource()],
    resource_templates: [template_data()],
}

// ─── Resources (the resources-* scenarios) ───────────────────────────────────────────

fn static_text() -> Resource {
    Resource::new("test://static-text", "static-text", || {
        Ok(Body::text("This is the content of the static text resource."))
    })
    .title("Static text")
    .description("A static text resource for testing")
    .mime_type("text/plain")
}

fn static_binary() -> Resource {
    Resource::new("test://static-binary", "static-binary", || Ok(Body::bytes(RED_PIXEL_PNG)))
        .title("Static binary")
        .description("A static binary resource (a 1x1 red PNG) for testing")
        .mime_type("image/png")
        .size(RED_PIXEL_PNG.len() as u64)
}

/// The resource `resources-subscribe` and `resources-unsubscribe` subscribe to.
fn watched_resource() -> Resource {
    Resource::new("test://watched-resource", "watched-resource", || Ok(Body::text("Watched resource content")))
        .title("Watched resource")
        .description("A resource clients subscribe to; it changes when the plugin is reloaded")
        .mime_type("text/plain")
}

fn template_data() -> ResourceTemplate {
    ResourceTemplate::new("test://template/{id}/data", "template-data", |params: &Params| {
        let id = params.decoded("id").ok_or_else(|| ResourceError::not_found("the id is not UTF-8"))?;
        let data = serde_json::json!({ "id": id, "templateTest": true, "data": format!("Data for ID: {id}") });
        Ok(Body::text(data.to_string()))
    })
    .title("Template data")
    .description("Data for an id, substituted into the template")
    .mime_type("application/json")
}

#[cfg(test)]
mod tests {
    use maestro_sdk::testing::FakeHost;
    use maestro_sdk::{LogLevel, ResourceContents};
    use serde_json::json;

    use super::*;

    #[test]
    fn sampling_asks_for_100_tokens_and_prefixes_the_answer() {
        let host = FakeHost::install();
        host.on_complete(|_| Ok(maestro_sdk::model::Completion::text("hi there")));
        let out = maestro_plugin().call("test_sampling", r#"{"prompt":"Say hi"}"#).expect("answered");
        assert_eq!(out.content, vec![Content::Text("LLM response: hi there".into())]);
        let asked = host.completions();
        assert_eq!((asked[0].max_tokens, asked[0].messages[0].text.as_str()), (100, "Say hi"));
    }

    #[test]
    fn elicitation_reports_the_action_and_content_or_fails_when_nobody_can_be_asked() {
        let host = FakeHost::install();
        let err = maestro_plugin().call("test_elicitation", r#"{"message":"Who?"}"#).expect_err("nobody to ask");
        assert!(err.to_string().contains("needs input from the user: Who?"), "{err}");
        host.on_ask(|_, _| Ok(maestro_sdk::user::Answer::Accepted(json!({ "username": "a", "email": "b" }))));
        let out = maestro_plugin().call("test_elicitation", r#"{"message":"Who?"}"#).expect("answered");
        assert_eq!(
            out.content,
            vec![Content::Text(r#"User response: <action: accept, content: {"email":"b","username":"a"}>"#.into())]
        );
        host.on_ask(|_, _| Ok(maestro_sdk::user::Answer::Declined));
        let out = maestro_plugin().call("test_elicitation_sep1330_enums", "{}").expect("answered");
        assert_eq!(out.content, vec![Content::Text("Elicitation completed: action=decline, content=null".into())]);
        assert_eq!(host.questions()[2].1["properties"]["legacyEnum"]["enumNames"][0], "Option One");
    }

    #[test]
    fn contents_are_what_the_suite_checks() {
        let plugin = maestro_plugin();
        let out = plugin.call("test_simple_text", "").expect("no arguments");
        assert_eq!(out.text_content(), "This is a simple text response for testing.");
        let out = plugin.call("test_audio_content", "{}").expect("audio");
        let [Content::Audio { data, mime_type }] = out.content.as_slice() else { panic!("{out:?}") };
        assert_eq!((mime_type.as_str(), &data[..8]), ("audio/wav", "UklGRnQA"), "RIFF, 36 + 80 bytes");
        let out = plugin.call("test_multiple_content_types", "{}").expect("mixed");
        assert!(matches!(
            out.content.as_slice(),
            [
                Content::Text(_),
                Content::Image { .. },
                Content::EmbeddedResource { contents: ResourceContents::Text(_), .. }
            ]
        ));
        let err = plugin.call("test_error_handling", "{}").expect_err("always fails");
        assert_eq!(err.to_string(), "This tool intentionally returns an error for testing");
    }

    #[test]
    fn wav_header_matches_its_length() {
        let wav = silent_wav(80);
        assert_eq!(wav.len(), 124);
        assert_eq!(&wav[..4], b"RIFF");
        assert_eq!(u32::from_le_bytes([wav[4], wav[5], wav[6], wav[7]]), 116);
        assert_eq!(u32::from_le_bytes([wav[40], wav[41], wav[42], wav[43]]), 80);
    }

    #[test]
    fn logs_and_reports_progress_in_steps() {
        let host = FakeHost::install();
        maestro_plugin().call("test_tool_with_logging", "{}").expect("runs");
        let logs = host.logs();
        assert_eq!(logs.len(), 3);
        assert!(logs.iter().all(|l| l.level == LogLevel::Info));
        maestro_plugin().call("test_tool_with_progress", "{}").expect("runs");
        let done: Vec<u64> = host.progress().iter().map(|p| p.done).collect();
        assert_eq!(done, [0, 50, 100]);
    }

    #[test]
    fn keeps_the_2020_12_keywords_in_the_input_schema() {
        let spec =
            maestro_plugin().tool_specs().into_iter().find(|s| s.name == "json_schema_2020_12_tool").expect("listed");
        let schema = spec.input_schema;
        assert_eq!(schema["$schema"], "https://json-schema.org/draft/2020-12/schema");
        assert_eq!(schema["$defs"]["address"]["$anchor"], "addressDef");
        assert_eq!(schema["additionalProperties"], false);
        assert!(schema["allOf"][0]["anyOf"].is_array() && schema["if"].is_object() && schema["else"].is_object());
    }

    #[test]
    fn prompts_fill_their_arguments() {
        let plugin = maestro_plugin();
        let rendered = plugin
            .render("test_prompt_with_arguments", &json!({ "arg1": "testValue1", "arg2": "testValue2" }).to_string());
        assert_eq!(rendered, Ok(Some("Prompt with arguments: arg1='testValue1', arg2='testValue2'".into())));
        assert_eq!(plugin.render("test_simple_prompt", "{}"), Ok(Some("This is a simple prompt for testing.".into())));
    }

    #[test]
    fn resources_are_what_the_suite_reads() {
        let plugin = maestro_plugin();
        let text = plugin.read_resource("test://static-text").expect("static text");
        assert_eq!(text[0].text(), Some("This is the content of the static text resource."));
        assert_eq!(text[0].mime_type.as_deref(), Some("text/plain"));
        let binary = plugin.read_resource("test://static-binary").expect("static binary");
        assert!(matches!(&binary[0].data, ResourceContents::Blob(b) if b.starts_with("iVBORw0KGgo")));
        let data = plugin.read_resource("test://template/123/data").expect("template");
        let json: serde_json::Value = serde_json::from_str(data[0].text().expect("text")).expect("json");
        assert_eq!(json, json!({ "id": "123", "templateTest": true, "data": "Data for ID: 123" }));
        assert_eq!(data[0].uri, "test://template/123/data");
        assert!(plugin.read_resource("test://nonexistent").is_err());
    }
}

//! `hostile`: a test fixture for the host's sandbox tests and benchmarks. Never shipped.
//!
//! Each tool misbehaves in one way the sandbox must contain (or, for `noop`, does nothing
//! at all, to measure the cost of a call).
//!
//! The exports are written out by hand instead of with `export_plugin!`, so that
//! `bad_structured` can return what the SDK never would: structured output that is not
//! JSON.
#![cfg_attr(target_arch = "wasm32", allow(unsafe_code))]

use std::hint::black_box;
use std::time::Duration;

use maestro_sdk::{
    Content, IntoToolOutput, ModelTier, NoInput, Persona, PersonaSpec, Plugin, PromptArgument, RenderContext,
    Structured, ToolError, ToolOutput, ToolSet, tool,
};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

fn noop(_: NoInput) -> Result<&'static str, ToolError> {
    Ok("ok")
}

fn echo(args: Map<String, Value>) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput::structured(Value::Object(args)))
}

/// Arguments of `spin`.
#[derive(Deserialize, JsonSchema)]
struct SpinArgs {
    /// Stop after this many iterations and log it (default: loop forever).
    #[serde(default)]
    iterations: Option<u64>,
}

fn spin(args: SpinArgs) -> Result<&'static str, ToolError> {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
        if args.iterations.is_some_and(|n| counter >= n) {
            maestro_sdk::log::info(format!("spun {counter} iterations"));
            return Ok("spun");
        }
    }
}

fn spin_until_cancelled(_: NoInput) -> Result<&'static str, ToolError> {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
        if maestro_sdk::cancelled() {
            maestro_sdk::log::info(format!("cancelled after {counter} iterations"));
            return Err(ToolError::Cancelled);
        }
    }
}

#[allow(unconditional_recursion)]
fn dive(depth: u64) -> u64 {
    let frame = black_box([depth; 64]);
    dive(black_box(frame[7] + 1)).wrapping_add(frame[3])
}

fn recurse(_: NoInput) -> Result<String, ToolError> {
    Ok(dive(0).to_string())
}

/// Arguments of `grow_memory`.
#[derive(Deserialize, JsonSchema)]
struct GrowArgs {
    /// Megabytes to allocate and touch.
    mb: u32,
}

fn grow_memory(args: GrowArgs) -> Result<String, ToolError> {
    let bytes = usize::try_from(args.mb)
        .ok()
        .and_then(|mb| mb.checked_mul(1024 * 1024))
        .ok_or_else(|| ToolError::invalid("too many megabytes"))?;
    let mut block: Vec<u8> = Vec::new();
    block
        .try_reserve_exact(bytes)
        .map_err(|e| ToolError::failed(format!("could not allocate {} MiB: {e}", args.mb)))?;
    block.resize(bytes, 0);
    for i in (0..bytes).step_by(4096) {
        block[i] = 1;
    }
    let touched = black_box(&block).iter().step_by(4096).filter(|b| **b == 1).count();
    Ok(format!("touched {touched} pages of {} MiB", args.mb))
}

/// Arguments of `huge_output`.
#[derive(Deserialize, JsonSchema)]
struct HugeArgs {
    /// Length of the text returned.
    bytes: usize,
}

fn huge_output(args: HugeArgs) -> Result<String, ToolError> {
    Ok("x".repeat(args.bytes))
}

/// Arguments of `sleep`.
#[derive(Deserialize, JsonSchema)]
struct SleepArgs {
    /// Milliseconds to block in a host call.
    ms: u64,
}

fn sleep(args: SleepArgs) -> Result<String, ToolError> {
    std::thread::sleep(Duration::from_millis(args.ms));
    Ok(format!("slept {} ms", args.ms))
}

/// Arguments of `fetch`.
#[derive(Deserialize, JsonSchema)]
struct FetchArgs {
    /// URL to GET.
    url: String,
}

/// What `fetch` returns.
#[derive(Serialize, JsonSchema)]
struct Fetched {
    status: u16,
    body_len: usize,
    truncated: bool,
}

fn fetch(args: FetchArgs) -> Result<Structured<Fetched>, ToolError> {
    let response = maestro_sdk::http::get(&args.url).send()?;
    Ok(Structured(Fetched { status: response.status, body_len: response.body.len(), truncated: response.truncated }))
}

fn fail(_: NoInput) -> Result<&'static str, ToolError> {
    Err(ToolError::failed("boom"))
}

fn config(_: NoInput) -> Result<ToolOutput, ToolError> {
    let raw = maestro_sdk::config_json();
    let value: Value = serde_json::from_str(&raw).map_err(|e| ToolError::failed(format!("config is not JSON: {e}")))?;
    Ok(ToolOutput { content: vec![maestro_sdk::Content::text(raw)], structured: Some(value) })
}

/// Arguments of `progress`.
#[derive(Deserialize, JsonSchema)]
struct ProgressArgs {
    /// Steps to report.
    n: u64,
}

fn progress(args: ProgressArgs) -> Result<String, ToolError> {
    for i in 1..=args.n {
        maestro_sdk::log::info(format!("step {i} of {}", args.n));
        maestro_sdk::progress(i, Some(args.n), Some(&format!("step {i}")));
    }
    Ok(format!("reported {} steps", args.n))
}

/// Arguments of `trap`.
#[derive(Deserialize, JsonSchema)]
struct TrapArgs {
    /// `panic` (default) or `unreachable` (a bare wasm `unreachable` instruction).
    #[serde(default)]
    kind: Option<String>,
}

fn trap(args: TrapArgs) -> Result<&'static str, ToolError> {
    if args.kind.as_deref() == Some("unreachable") {
        #[cfg(target_arch = "wasm32")]
        core::arch::wasm32::unreachable();
    }
    panic!("trap requested");
}

/// Arguments of `progress_flood`.
#[derive(Deserialize, JsonSchema)]
struct FloodArgs {
    /// Reports to send (`done` runs 1..=n of n).
    n: u64,
}

fn progress_flood(args: FloodArgs) -> Result<String, ToolError> {
    for i in 1..=args.n {
        maestro_sdk::progress(i, Some(args.n), None);
    }
    Ok(format!("reported {} times", args.n))
}

fn huge_error(args: HugeArgs) -> Result<&'static str, ToolError> {
    Err(ToolError::failed("e".repeat(args.bytes)))
}

/// Arguments of `empty_items`.
#[derive(Deserialize, JsonSchema)]
struct ItemsArgs {
    /// Empty text items to return.
    n: usize,
}

fn empty_items(args: ItemsArgs) -> Result<ToolOutput, ToolError> {
    Ok(ToolOutput { content: vec![Content::text(""); args.n], structured: None })
}

fn control_text(args: HugeArgs) -> Result<String, ToolError> {
    Ok("\u{1}".repeat(args.bytes))
}

/// Arguments of `print`.
#[derive(Deserialize, JsonSchema)]
struct PrintArgs {
    /// Bytes to print.
    bytes: usize,
    /// `stdout` (default), `stderr`, or `log` (the host log, in lines of 4096 bytes).
    #[serde(default)]
    stream: Option<String>,
    /// Panic with this message after printing.
    #[serde(default)]
    panic: Option<String>,
}

fn print(args: PrintArgs) -> Result<String, ToolError> {
    if args.stream.as_deref() == Some("log") {
        let line = "l".repeat(4096);
        for _ in 0..args.bytes / line.len() {
            maestro_sdk::log::info(&line);
        }
        return Ok(format!("logged {} bytes", args.bytes / line.len() * line.len()));
    }
    let line = format!("{}\n", "p".repeat(99));
    let mut left = args.bytes;
    while left > 0 {
        let chunk = &line[..left.min(line.len())];
        if args.stream.as_deref() == Some("stderr") {
            eprint!("{chunk}");
        } else {
            print!("{chunk}");
        }
        left -= chunk.len();
    }
    if let Some(message) = args.panic {
        panic!("{message}");
    }
    Ok(format!("printed {} bytes", args.bytes))
}

/// Arguments of `bad_structured`.
#[derive(Deserialize, JsonSchema)]
struct BadArgs {
    /// Return text that is not JSON at all (only on wasm: the SDK always serialises).
    #[serde(default)]
    #[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
    invalid: bool,
}

/// A result whose declared schema says `count` is an integer, while the value has a
/// string there.
struct Mismatched;

impl IntoToolOutput for Mismatched {
    fn output_schema() -> Option<Value> {
        Some(serde_json::json!({
            "type": "object",
            "properties": { "count": { "type": "integer" } },
            "required": ["count"]
        }))
    }

    fn into_tool_output(self) -> Result<ToolOutput, ToolError> {
        Ok(ToolOutput::structured(serde_json::json!({ "count": "many" })))
    }
}

fn bad_structured(_: BadArgs) -> Result<Mismatched, ToolError> {
    Ok(Mismatched)
}

/// What `bad_structured` returns with `invalid: true`, bypassing the SDK.
#[cfg_attr(not(target_arch = "wasm32"), allow(dead_code))]
const NOT_JSON: &str = "{\"count\": ";

fn hog(_: NoInput) -> Result<String, ToolError> {
    let mut blocks: Vec<Vec<u8>> = Vec::new();
    loop {
        let mut block: Vec<u8> = Vec::new();
        if block.try_reserve_exact(1 << 20).is_err() {
            return Err(ToolError::failed(format!("refused more memory after {} MiB", blocks.len())));
        }
        block.resize(1 << 20, 1);
        blocks.push(black_box(block));
    }
}

/// Arguments of `canary`.
#[derive(Deserialize, JsonSchema)]
struct CanaryArgs {
    /// Written into the instance's memory (a global) after the previous value is read.
    #[serde(default)]
    write: Option<String>,
}

/// What earlier calls in this instance left behind.
static CANARY: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn canary(args: CanaryArgs) -> Result<String, ToolError> {
    let mut canary = CANARY.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let seen = canary.clone().unwrap_or_default();
    if let Some(write) = args.write {
        *canary = Some(write);
    }
    Ok(seen)
}

/// Renders the saboteur's prompt, `repeat` times over; `fail` fails with a message of
/// that many bytes.
fn sabotage(context: &RenderContext<'_>) -> Result<String, String> {
    let number = |name: &str| context.get(name).map(|n| n.parse::<usize>().map_err(|e| format!("{name}: {e}")));
    if let Some(bytes) = number("fail").transpose()? {
        return Err("f".repeat(bytes));
    }
    let once = context.fill(&context.spec().system_prompt);
    Ok(once.repeat(number("repeat").transpose()?.unwrap_or(1)))
}

fn saboteur() -> Persona {
    Persona::new(
        PersonaSpec::new(
            "saboteur",
            "Saboteur",
            "exercises the personas export in sandbox tests",
            "You test the sandbox. Target: {{target}}.",
        )
        .model_tier(ModelTier::Small)
        .tools(["hostile.*"])
        .argument(PromptArgument::required("target", "what to attack"))
        .argument(PromptArgument::optional("style", "how").values(["loud", "quiet"]))
        .argument(PromptArgument::optional("repeat", "times to repeat the prompt"))
        .argument(PromptArgument::optional("fail", "fail with a message of this many bytes")),
    )
    .render_with(sabotage)
}

/// This plugin's tools, added to the registry or to one call's dispatch.
fn tools<S: ToolSet>(set: S) -> S {
    set.tool(tool("noop", "Returns \"ok\" at once (the trivial tool for benchmarks)", noop).read_only())
        .tool(tool("echo", "Returns its arguments as structured JSON", echo).read_only())
        .tool(tool("spin", "Loops forever without checking anything", spin))
        .tool(tool("spin_until_cancelled", "Loops until the call is cancelled", spin_until_cancelled))
        .tool(tool("recurse", "Recurses without bound (stack overflow)", recurse))
        .tool(tool("grow_memory", "Allocates and touches `mb` megabytes", grow_memory))
        .tool(tool("huge_output", "Returns a text of `bytes` bytes", huge_output))
        .tool(tool("sleep", "Blocks in a host call (a WASI poll) for `ms` milliseconds", sleep))
        .tool(tool("fetch", "GETs a URL through the SDK's HTTP client", fetch).open_world())
        .tool(tool("fail", "Fails with \"boom\"", fail))
        .tool(tool("config", "Returns the plugin configuration", config).read_only())
        .tool(tool("progress", "Reports progress 1..=n, logging each step", progress))
        .tool(tool("trap", "Panics (or executes `unreachable`)", trap))
        .tool(tool("progress_flood", "Reports progress `n` times as fast as it can", progress_flood))
        .tool(tool("huge_error", "Fails with a message of `bytes` bytes", huge_error))
        .tool(tool("empty_items", "Returns `n` empty text items", empty_items))
        .tool(tool(
            "control_text",
            "Returns `bytes` control characters (each escaped as \\u0001 in JSON)",
            control_text,
        ))
        .tool(tool("print", "Prints `bytes` bytes to stdout, stderr or the log, then maybe panics", print))
        .tool(tool(
            "bad_structured",
            "Returns structured output that breaks its schema, or is not JSON",
            bad_structured,
        ))
        .tool(tool("hog", "Allocates 1 MiB blocks until refused", hog))
        .tool(tool(
            "canary",
            "Returns what an earlier call of this instance left in a global (empty if nothing), then writes `write` \
             there",
            canary,
        ))
}

/// This plugin's tools and personas, built on first use (by the listing exports and the
/// native tests).
#[allow(dead_code)]
fn maestro_plugin() -> &'static Plugin {
    static PLUGIN: std::sync::OnceLock<Plugin> = std::sync::OnceLock::new();
    PLUGIN.get_or_init(|| tools(Plugin::new()).persona(saboteur()))
}

#[cfg(target_arch = "wasm32")]
const _: () = {
    use maestro_sdk::__private as sdk;

    struct Exports;

    impl sdk::ToolsGuest for Exports {
        fn list_tools() -> Vec<sdk::WitToolSpec> {
            sdk::tools_list(maestro_plugin())
        }

        fn call(name: String, arguments: String) -> Result<sdk::WitToolOutput, sdk::WitToolError> {
            if name == "bad_structured" && serde_json::from_str::<BadArgs>(&arguments).is_ok_and(|a| a.invalid) {
                return Ok(sdk::WitToolOutput { content: Vec::new(), structured: Some(NOT_JSON.to_owned()) });
            }
            // Only the called tool runs; the registry is not built.
            sdk::tool_result(tools(maestro_sdk::Dispatch::new(&name, &arguments)).finish())
        }
    }

    impl sdk::PersonasGuest for Exports {
        fn list_personas() -> Vec<sdk::WitPersonaSpec> {
            sdk::personas_list(maestro_plugin())
        }

        fn render(name: String, context: String) -> Result<Option<String>, String> {
            sdk::personas_render(maestro_plugin(), name, context)
        }

        fn render_messages(name: String, context: String) -> Result<Vec<sdk::WitPromptMessage>, String> {
            sdk::personas_render_messages(maestro_plugin(), name, context)
        }
    }

    // No resources: the SDK's (empty) answers.
    impl sdk::ResourcesGuest for Exports {
        fn list_resources() -> Vec<sdk::WitResourceSpec> {
            sdk::resources_list(maestro_plugin())
        }

        fn list_resource_templates() -> Vec<sdk::WitResourceTemplate> {
            sdk::resources_templates(maestro_plugin())
        }

        fn read_resource(uri: String) -> Result<Vec<sdk::WitContents>, sdk::WitResourceError> {
            sdk::resources_read(maestro_plugin(), uri)
        }
    }

    sdk::bindings::__maestro_export_world!(Exports with_types_in maestro_sdk::__private::bindings);
};

#[cfg(test)]
mod tests {
    use maestro_sdk::http::Response;
    use maestro_sdk::testing::FakeHost;
    use serde_json::json;

    use super::*;

    fn call(name: &str, args: Value) -> Result<ToolOutput, ToolError> {
        maestro_plugin().call(name, &args.to_string())
    }

    #[test]
    fn lists_every_fixture_tool_and_the_persona() {
        let names: Vec<String> = maestro_plugin().tool_specs().into_iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 21);
        assert!(names.iter().all(|n| maestro_sdk::is_valid_name(n)));
        assert_eq!(maestro_plugin().persona_specs()[0].name, "saboteur");
    }

    #[test]
    fn noop_echo_fail_behave() {
        assert_eq!(call("noop", json!({})).expect("ok").text_content(), "ok");
        let out = call("echo", json!({"a": [1, 2]})).expect("echo");
        assert_eq!(out.structured, Some(json!({"a": [1, 2]})));
        assert_eq!(call("fail", json!({})), Err(ToolError::Failed("boom".into())));
    }

    #[test]
    fn spin_until_cancelled_stops_when_cancelled() {
        let host = FakeHost::install();
        host.cancel();
        assert_eq!(call("spin_until_cancelled", json!({})), Err(ToolError::Cancelled));
    }

    #[test]
    fn config_and_progress_reach_the_host() {
        let host = FakeHost::install();
        host.set_config(json!({"k": 1}));
        let out = call("config", json!({})).expect("config");
        assert_eq!(out.structured, Some(json!({"k": 1})));
        call("progress", json!({"n": 3})).expect("progress");
        assert_eq!(host.progress().len(), 3);
        assert_eq!(host.logs().len(), 3);
    }

    #[test]
    fn fetch_reports_status_or_the_denial() {
        let host = FakeHost::install();
        let err = call("fetch", json!({"url": "http://169.254.169.254/"})).expect_err("denied");
        assert!(err.to_string().contains("HTTP-request-denied"), "{err}");
        host.on_http(|_| Ok(Response::new(204, "")));
        let out = call("fetch", json!({"url": "https://example.com/"})).expect("fetched");
        assert_eq!(out.structured, Some(json!({"status": 204, "body_len": 0, "truncated": false})));
    }

    #[test]
    fn small_allocations_and_outputs_work() {
        assert!(call("grow_memory", json!({"mb": 1})).is_ok());
        assert_eq!(call("huge_output", json!({"bytes": 10})).expect("text").text_content().len(), 10);
        assert!(matches!(call("grow_memory", json!({})), Err(ToolError::InvalidArguments(_))));
    }

    #[test]
    fn flooding_tools_produce_what_they_promise() {
        let host = FakeHost::install();
        call("progress_flood", json!({"n": 50})).expect("floods");
        assert_eq!(host.progress().len(), 50);
        assert_eq!(call("huge_error", json!({"bytes": 7})), Err(ToolError::Failed("eeeeeee".into())));
        assert_eq!(call("empty_items", json!({"n": 4})).expect("items").content.len(), 4);
        assert_eq!(call("control_text", json!({"bytes": 3})).expect("text").text_content(), "\u{1}\u{1}\u{1}");
        assert_eq!(call("print", json!({"bytes": 250})).expect("prints").text_content(), "printed 250 bytes");
    }

    #[test]
    fn bad_structured_breaks_its_declared_schema() {
        let spec = maestro_plugin().tool_specs().into_iter().find(|s| s.name == "bad_structured").expect("listed");
        assert_eq!(spec.output_schema.expect("declared")["properties"]["count"]["type"], "integer");
        let out = call("bad_structured", json!({})).expect("returns");
        assert_eq!(out.structured, Some(json!({"count": "many"})));
        assert!(serde_json::from_str::<Value>(NOT_JSON).is_err());
    }

    #[test]
    fn spin_stops_after_the_iterations_it_was_given() {
        let host = FakeHost::install();
        assert_eq!(call("spin", json!({ "iterations": 10 })).expect("stops").text_content(), "spun");
        assert_eq!(host.logs().len(), 1);
    }

    #[test]
    fn canary_returns_what_the_previous_call_wrote() {
        assert_eq!(call("canary", json!({ "write": "first" })).expect("writes").text_content(), "");
        assert_eq!(call("canary", json!({})).expect("reads").text_content(), "first");
    }

    #[test]
    fn saboteur_repeats_or_fails_on_request() {
        let plugin = maestro_plugin();
        let once = plugin.render("saboteur", r#"{"target":"x"}"#).expect("renders").expect("text");
        let thrice = plugin.render("saboteur", r#"{"target":"x","repeat":"3"}"#).expect("renders").expect("text");
        assert_eq!(thrice, once.repeat(3));
        assert_eq!(plugin.render("saboteur", r#"{"target":"x","fail":"2"}"#), Err("ff".into()));
    }
}

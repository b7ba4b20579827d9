//! `hostile`: a test fixture for the host's sandbox tests and benchmarks. Never shipped.
//!
//! Each tool misbehaves in one way the sandbox must contain (or, for `noop`, does nothing
//! at all, to measure the cost of a call).

use std::hint::black_box;
use std::time::Duration;

use maestro_sdk::{
    ModelTier, NoInput, Persona, PersonaSpec, PromptArgument, Structured, ToolError, ToolOutput, export_plugin, tool,
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

fn spin(_: NoInput) -> Result<&'static str, ToolError> {
    let mut counter: u64 = 0;
    loop {
        counter = black_box(counter.wrapping_add(1));
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
        .argument(PromptArgument::optional("style", "how").values(["loud", "quiet"])),
    )
}

export_plugin! {
    tools: [
        tool("noop", "Returns \"ok\" at once (the trivial tool for benchmarks)", noop).read_only(),
        tool("echo", "Returns its arguments as structured JSON", echo).read_only(),
        tool("spin", "Loops forever without checking anything", spin),
        tool("spin_until_cancelled", "Loops until the call is cancelled", spin_until_cancelled),
        tool("recurse", "Recurses without bound (stack overflow)", recurse),
        tool("grow_memory", "Allocates and touches `mb` megabytes", grow_memory),
        tool("huge_output", "Returns a text of `bytes` bytes", huge_output),
        tool("sleep", "Blocks in a host call (a WASI poll) for `ms` milliseconds", sleep),
        tool("fetch", "GETs a URL through the SDK's HTTP client", fetch).open_world(),
        tool("fail", "Fails with \"boom\"", fail),
        tool("config", "Returns the plugin configuration", config).read_only(),
        tool("progress", "Reports progress 1..=n, logging each step", progress),
        tool("trap", "Panics (or executes `unreachable`)", trap),
    ],
    personas: [saboteur()],
}

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
        assert_eq!(names.len(), 13);
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
}

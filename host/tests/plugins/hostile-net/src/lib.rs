//! `hostile-net`: a test fixture for the host's outbound client. Never shipped.
//!
//! `flood` sends the same request `n` times, whatever the answers, the way a plugin
//! stuck in a retry loop (or trying to flood the host's log and memory with denials)
//! would. The host must keep its log and the call's network record bounded and still
//! end the call with a clear `network_denied`.

use maestro_sdk::{ToolError, export_plugin, tool};
use schemars::JsonSchema;
use serde::Deserialize;

/// Arguments of `flood`.
#[derive(Deserialize, JsonSchema)]
struct FloodArgs {
    /// URL to GET again and again.
    url: String,
    /// How many requests to attempt.
    n: u64,
}

fn flood(args: FloodArgs) -> Result<String, ToolError> {
    let mut failed = 0u64;
    let mut last = None;
    for _ in 0..args.n {
        if let Err(err) = maestro_sdk::http::get(&args.url).send() {
            failed += 1;
            last = Some(err);
        }
    }
    match last {
        Some(err) => Err(ToolError::failed(format!("{failed} of {} requests failed, the last with {err}", args.n))),
        None => Ok(format!("{} requests answered", args.n)),
    }
}

export_plugin! {
    tools: [tool("flood", "GETs `url` `n` times, ignoring failures", flood).open_world()],
}

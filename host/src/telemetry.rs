//! Logging through `tracing`: human lines by default, JSON with `--log-format json`,
//! always on stderr (stdout carries command output such as a newly created key).

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs the global subscriber. Fails on a filter that does not parse.
pub fn init(filter: &str, format: LogFormat) -> Result<(), String> {
    let filter =
        EnvFilter::try_new(quiet_libraries(filter)).map_err(|e| format!("invalid log filter `{filter}`: {e}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(false).try_init(),
    };
    result.map_err(|e| format!("cannot install the log subscriber: {e}"))
}

/// `filter` plus `rmcp::service=error` unless the filter names rmcp itself: rmcp logs a
/// warning for every JSON-RPC error it answers, so a client sending bad calls in a loop
/// would flood the log (Maestro logs each MCP request and its outcome itself).
fn quiet_libraries(filter: &str) -> String {
    if filter.contains(crate::mcp::LIBRARY_TARGET) {
        filter.to_owned()
    } else {
        format!("{filter},{}", crate::mcp::QUIET_LIBRARY_LOGS)
    }
}

#[cfg(test)]
mod tests {
    use super::quiet_libraries;

    #[test]
    fn rmcp_error_warnings_are_quiet_unless_asked_for() {
        let quiet = crate::mcp::QUIET_LIBRARY_LOGS;
        assert_eq!(quiet_libraries("info"), format!("info,{quiet}"));
        assert_eq!(quiet_libraries("debug,rmcp=trace"), "debug,rmcp=trace");
    }
}

//! What the host grants every plugin: logging, progress, cancellation and configuration.
//!
//! Inside the component these call the `maestro:plugin/host` imports; on other targets
//! they talk to the in-process fake in [`testing`](crate::testing).

use serde::de::DeserializeOwned;

use crate::tool::ToolError;

#[cfg(target_arch = "wasm32")]
pub(crate) use crate::wit::sys;

#[cfg(not(target_arch = "wasm32"))]
pub(crate) use crate::testing::sys;

/// Log levels, lowest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum LogLevel {
    /// Very detailed.
    Trace,
    /// For debugging.
    Debug,
    /// Normal operation.
    Info,
    /// Something unexpected that the tool survived.
    Warn,
    /// A failure.
    Error,
}

/// Writes to the host's log, attributed to this plugin and the current call.
pub mod log {
    pub use super::LogLevel;

    /// Logs a message at a level.
    pub fn log(level: LogLevel, message: impl AsRef<str>) {
        super::sys::log(level, message.as_ref());
    }

    /// Logs at trace level.
    pub fn trace(message: impl AsRef<str>) {
        log(LogLevel::Trace, message);
    }

    /// Logs at debug level.
    pub fn debug(message: impl AsRef<str>) {
        log(LogLevel::Debug, message);
    }

    /// Logs at info level.
    pub fn info(message: impl AsRef<str>) {
        log(LogLevel::Info, message);
    }

    /// Logs at warn level.
    pub fn warn(message: impl AsRef<str>) {
        log(LogLevel::Warn, message);
    }

    /// Logs at error level.
    pub fn error(message: impl AsRef<str>) {
        log(LogLevel::Error, message);
    }
}

/// Reports progress of the current call (`done` of `total`, when known).
pub fn progress(done: u64, total: Option<u64>, message: Option<&str>) {
    sys::progress(done, total, message);
}

/// Whether the caller has cancelled the current call. Long-running tools check it and
/// return [`ToolError::Cancelled`] (see [`ToolError::check_cancelled`]); the host stops
/// the call at its deadline regardless.
pub fn cancelled() -> bool {
    sys::cancelled()
}

/// This plugin's configuration from policy, as a JSON document (`{}` when none).
pub fn config_json() -> String {
    sys::config()
}

/// This plugin's configuration, deserialised. A configuration that does not fit `T` is
/// a [`ToolError::Failed`] naming the problem, so tools can use `?`.
pub fn config<T: DeserializeOwned>() -> Result<T, ToolError> {
    let json = config_json();
    let json = if json.trim().is_empty() { "{}" } else { json.as_str() };
    serde_json::from_str(json).map_err(|e| ToolError::failed(format!("invalid plugin configuration: {e}")))
}

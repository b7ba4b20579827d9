//! The sandbox behind the core's [`ToolExecutor`] port: a [`Job`] becomes a
//! [`CallContext`], the sandbox's [`CallOutcome`] and [`Failure`] become the core's
//! [`Outcome`] and [`call::Failure`], and the caller's cancellation, progress and log
//! sinks are bridged both ways.

use std::sync::Arc;
use std::time::Instant;

use maestro_core::call::{self, Job, Metering, Outcome, ToolExecutor};
use maestro_core::plugin::ToolOutput;

use super::net::NetPolicy;
use super::{CallContext, CallLimits, CallOutcome, CancelToken, Failure, LoadedPlugin, LogLevel, Progress, Sandbox};

#[async_trait::async_trait]
impl ToolExecutor for Sandbox {
    type Plugin = LoadedPlugin;
    type Network = NetPolicy;

    async fn call_tool(&self, plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<ToolOutput> {
        let (context, cancel, item, arguments) = context(job);
        let run = Sandbox::call_tool(self, plugin, &item, arguments, &context);
        let outcome = until_cancelled(run, &cancel, &context.cancel).await;
        tool_outcome(outcome)
    }

    async fn render_persona(&self, plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<Option<String>> {
        let (context, cancel, item, arguments) = context(job);
        let started = Instant::now();
        let bytes_in = arguments.len();
        let run = Sandbox::render_persona(self, plugin, &item, arguments, &context);
        // The sandbox holds a rendered prompt to the output limit, like a tool's result.
        let result = until_cancelled(run, &cancel, &context.cancel).await.map_err(failure);
        let bytes_out = result.as_ref().map_or(0, |text| text.as_ref().map_or(0, String::len));
        Outcome {
            result,
            metering: Metering { duration: started.elapsed(), bytes_in, bytes_out, ..Metering::default() },
        }
    }
}

/// Runs `run` to its end; when the caller cancels first, cancels the sandbox call and
/// still waits the moment it takes to stop (its outcome says it was cancelled).
async fn until_cancelled<R>(run: impl Future<Output = R>, caller: &call::CancelToken, sandbox: &CancelToken) -> R {
    tokio::pin!(run);
    tokio::select! {
        done = &mut run => done,
        () = caller.cancelled() => {
            sandbox.cancel();
            run.await
        }
    }
}

fn context(job: Job<NetPolicy>) -> (CallContext, call::CancelToken, String, String) {
    let Job { item, arguments, limits, network, config_json, caller, observe } = job;
    let progress = observe.progress.map(|sink| {
        Arc::new(move |p: Progress| sink(call::Progress { done: p.done, total: p.total, message: p.message }))
            as super::ProgressSink
    });
    let log = observe
        .log
        .map(|sink| Arc::new(move |level: LogLevel, line: &str| sink(log_level(level), line)) as super::LogSink);
    let context = CallContext {
        limits: CallLimits {
            fuel: limits.fuel,
            timeout: limits.timeout,
            memory_bytes: limits.memory_bytes,
            output_bytes: limits.output_bytes,
        },
        network,
        config_json,
        cancel: CancelToken::default(),
        progress,
        log,
        caller,
    };
    (context, observe.cancel, item, arguments)
}

fn log_level(level: LogLevel) -> call::LogLevel {
    match level {
        LogLevel::Trace => call::LogLevel::Trace,
        LogLevel::Debug => call::LogLevel::Debug,
        LogLevel::Info => call::LogLevel::Info,
        LogLevel::Warn => call::LogLevel::Warn,
        LogLevel::Error => call::LogLevel::Error,
    }
}

/// The sandbox's failure in the core's terms (panic or runtime text in
/// [`Failure::Unavailable`] becomes the log-only detail).
pub fn failure(failure: Failure) -> call::Failure {
    match failure {
        Failure::Timeout(after) => call::Failure::Timeout(after),
        Failure::OutOfFuel(fuel) => call::Failure::OutOfFuel(fuel),
        Failure::MemoryLimit(bytes) => call::Failure::MemoryLimit(bytes),
        Failure::Trap(message) => call::Failure::Trap(message),
        Failure::NetworkDenied { url, reason } => call::Failure::NetworkDenied { url, reason },
        Failure::OutputTooLarge { size, limit } => call::Failure::OutputTooLarge { size, limit },
        Failure::ToolError(error) => call::Failure::ToolError(error),
        Failure::Cancelled => call::Failure::Cancelled,
        Failure::Unavailable(detail) => call::Failure::Unavailable { detail },
    }
}

fn tool_outcome(outcome: CallOutcome) -> Outcome<ToolOutput> {
    let metering = Metering {
        duration: outcome.duration,
        fuel: outcome.fuel_used,
        bytes_in: outcome.bytes_in,
        bytes_out: outcome.bytes_out,
        http_requests: outcome.network.requests,
        http_denied: u32::try_from(outcome.network.denials).unwrap_or(u32::MAX),
        http_bytes_received: outcome.network.bytes_received,
        credits_charged: 0,
    };
    Outcome { result: outcome.result.map_err(failure), metering }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn sandbox_failures_keep_their_kind_and_hide_host_detail() {
        let converted = failure(Failure::Unavailable("sandbox task failed: panicked at 'boom'".into()));
        assert_eq!(converted.kind(), "unavailable");
        assert!(!converted.to_string().contains("panicked"), "{converted}");
        assert!(converted.is_host_side());
        for f in [
            Failure::Timeout(Duration::from_secs(1)),
            Failure::OutOfFuel(5),
            Failure::MemoryLimit(5),
            Failure::Trap("t".into()),
            Failure::OutputTooLarge { size: 2, limit: 1 },
            Failure::Cancelled,
        ] {
            assert_eq!(f.kind(), failure(f.clone()).kind());
        }
    }
}

//! The sandbox behind the core's [`ToolExecutor`] port: a [`Job`] becomes a
//! [`CallContext`] and the sandbox's [`CallOutcome`](super::CallOutcome) the core's
//! [`Outcome`]. Nothing else is converted: failures, metering, cancellation, progress
//! and log sinks are the core's types throughout.

use maestro_core::call::{Job, Outcome, ToolExecutor};
use maestro_core::plugin::{ReadContents, Rendered, ToolOutput};

use super::net::NetPolicy;
use super::{CallContext, LoadedPlugin, Sandbox};

#[async_trait::async_trait]
impl ToolExecutor for Sandbox {
    type Plugin = LoadedPlugin;
    type Network = NetPolicy;

    async fn call_tool(&self, plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<ToolOutput> {
        let (context, item, arguments) = context(job);
        Sandbox::call_tool(self, plugin, &item, arguments, &context).await.into_outcome()
    }

    async fn render_persona(&self, plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<Rendered> {
        let (context, item, arguments) = context(job);
        Sandbox::render_persona(self, plugin, &item, arguments, &context).await.into_outcome()
    }

    async fn read_resource(&self, plugin: &LoadedPlugin, job: Job<NetPolicy>) -> Outcome<Vec<ReadContents>> {
        let (context, uri, _) = context(job);
        Sandbox::read_resource(self, plugin, &uri, &context).await.into_outcome()
    }
}

fn context(job: Job<NetPolicy>) -> (CallContext, String, String) {
    let Job { item, arguments, limits, network, config_json, caller, observe, platform } = job;
    let context = CallContext {
        limits,
        network,
        config_json,
        cancel: observe.cancel,
        progress: observe.progress,
        log: observe.log,
        caller,
        platform,
    };
    (context, item, arguments)
}

//! `list_changed` notifications: when plugins or policies reload, each connected
//! caller is told which of its lists (tools, prompts, resources) changed for it.

use std::future::Future;
use std::sync::Arc;

use rmcp::Peer;
use rmcp::service::{RoleServer, SubscriptionSink};
use tokio_util::sync::CancellationToken;

use super::Mcp;
use crate::tools::Principal;

/// A list that changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Change {
    Tools,
    Prompts,
    Resources,
}

/// Where notifications go: a session's peer, or a `subscriptions/listen` stream.
pub(super) trait ChangeSink: Send + Sync + 'static {
    /// Sends one notification; `false` when the client is gone.
    fn send(&self, change: Change) -> impl Future<Output = bool> + Send;
}

/// A session (2025-11-25) or stdio peer.
pub(super) struct PeerSink(pub(super) Peer<RoleServer>);

impl ChangeSink for PeerSink {
    async fn send(&self, change: Change) -> bool {
        let sent = match change {
            Change::Tools => self.0.notify_tool_list_changed().await,
            Change::Prompts => self.0.notify_prompt_list_changed().await,
            Change::Resources => self.0.notify_resource_list_changed().await,
        };
        sent.is_ok()
    }
}

/// A `subscriptions/listen` request (2026-07-28).
pub(super) struct SubscriptionSinkAdapter(pub(super) SubscriptionSink);

impl ChangeSink for SubscriptionSinkAdapter {
    async fn send(&self, change: Change) -> bool {
        let sent = match change {
            Change::Tools => self.0.notify_tool_list_changed().await,
            Change::Prompts => self.0.notify_prompt_list_changed().await,
            Change::Resources => self.0.notify_resource_list_changed().await,
        };
        sent.is_ok()
    }
}

/// What the caller's lists look like: names with the plugin hash (a reinstalled plugin
/// may have changed a schema under the same name).
#[derive(Debug, PartialEq, Eq)]
struct Snapshot {
    tools: Vec<(String, String)>,
    prompts: Vec<(String, String)>,
    resources: Vec<String>,
}

fn snapshot(mcp: &Mcp, principal: &Principal) -> Snapshot {
    Snapshot {
        tools: mcp
            .tools_for(principal)
            .into_iter()
            // Built-in tools change only with the binary.
            .map(|(n, t)| (n, t.plugin.as_ref().map_or_else(String::new, |p| p.sha256.clone())))
            .collect(),
        prompts: mcp.personas_for(principal).into_iter().map(|(n, p)| (n, p.plugin.sha256.clone())).collect(),
        resources: mcp.tools.visible_plugins(principal).iter().map(|p| p.manifest.name.clone()).collect(),
    }
}

/// Watches plugin and policy reloads until `stop` or the client goes away, sending a
/// notification for each of the principal's lists that changed.
pub(super) async fn notify_changes(
    mcp: Arc<Mcp>,
    principal: Principal,
    stop: CancellationToken,
    sink: impl ChangeSink,
) {
    mcp.tools.registry().first_scan().await;
    let mut plugins = mcp.tools.registry().subscribe();
    let mut policies = mcp.tools.policies().subscribe();
    let mut last = snapshot(&mcp, &principal);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            changed = plugins.changed() => if changed.is_err() { return },
            changed = policies.changed() => if changed.is_err() { return },
        }
        let now = snapshot(&mcp, &principal);
        let changes = [
            (now.tools != last.tools, Change::Tools),
            (now.prompts != last.prompts, Change::Prompts),
            (now.resources != last.resources, Change::Resources),
        ];
        for (changed, change) in changes {
            if changed && !sink.send(change).await {
                return;
            }
        }
        last = now;
    }
}

//! What the resource subscriptions of documents (`agents.rs`) and memories
//! (`memories.rs`) share: a session's subscribed URIs and the one task that forwards
//! their changes to its peer, and the forwarding of a stateless `subscriptions/listen`
//! stream. Each kind says which URI a change of its signal updated ([`Change`]).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use maestro_core::TenantId;
use rmcp::{Peer, RoleServer};
use tokio::sync::broadcast::Receiver;
use tokio_util::sync::CancellationToken;

/// A change signal's message: which resource it updated.
pub(super) trait Change: Clone + Send + 'static {
    /// The URI of the resource this change updated, when it is of `tenant`.
    fn uri(&self, tenant: &TenantId) -> Option<String>;
}

/// One session's subscriptions of one kind, and the task that forwards their changes.
#[derive(Debug, Default)]
pub(super) struct Subscriptions {
    uris: Arc<Mutex<HashSet<String>>>,
    started: Mutex<bool>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Subscriptions {
    /// Adds `uri` (already checked readable), starting the forwarding of `changes` to
    /// `peer` on the first subscription.
    pub(super) fn add<C: Change>(
        &self,
        uri: &str,
        changes: impl FnOnce() -> Receiver<C>,
        tenant: &TenantId,
        peer: Peer<RoleServer>,
        stop: CancellationToken,
    ) {
        lock(&self.uris).insert(uri.to_owned());
        let mut started = lock(&self.started);
        if !*started {
            *started = true;
            tokio::spawn(forward(changes(), self.uris.clone(), tenant.clone(), Target::Peer(peer), stop));
        }
    }

    /// Drops a subscription (unknown ones are fine).
    pub(super) fn remove(&self, uri: &str) {
        lock(&self.uris).remove(uri);
    }
}

/// Forwards updates of `uris` (already accepted and checked readable) to a stateless
/// `subscriptions/listen` stream until it ends.
pub(super) async fn listen<C: Change>(
    changes: Receiver<C>,
    uris: HashSet<String>,
    tenant: &TenantId,
    sink: rmcp::service::SubscriptionSink,
    stop: CancellationToken,
) {
    forward(changes, Arc::new(Mutex::new(uris)), tenant.clone(), Target::Sink(sink), stop).await;
}

/// Where updates go: a session's peer, or a stateless listen stream.
enum Target {
    Peer(Peer<RoleServer>),
    Sink(rmcp::service::SubscriptionSink),
}

impl Target {
    /// Sends one update; `false` once the client is gone.
    async fn updated(&self, uri: String) -> bool {
        match self {
            Target::Peer(peer) => {
                peer.notify_resource_updated(rmcp::model::ResourceUpdatedNotificationParam::new(uri)).await.is_ok()
            }
            Target::Sink(sink) => sink.notify_resource_updated(uri).await.is_ok(),
        }
    }
}

/// Sends `notifications/resources/updated` for every change of a subscribed resource
/// of the tenant, until the session ends or the client is gone.
async fn forward<C: Change>(
    mut changes: Receiver<C>,
    uris: Arc<Mutex<HashSet<String>>>,
    tenant: TenantId,
    target: Target,
    stop: CancellationToken,
) {
    use tokio::sync::broadcast::error::RecvError;
    loop {
        let changed = tokio::select! {
            changed = changes.recv() => changed,
            () = stop.cancelled() => return,
        };
        let updated: Vec<String> = match changed {
            Ok(change) => change.uri(&tenant).filter(|uri| lock(&uris).contains(uri)).into_iter().collect(),
            // Missed changes: every subscribed resource may have changed.
            Err(RecvError::Lagged(_)) => lock(&uris).iter().cloned().collect(),
            Err(RecvError::Closed) => return,
        };
        for uri in updated {
            if !target.updated(uri).await {
                return;
            }
        }
    }
}

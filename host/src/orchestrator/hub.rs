//! The live side of run events, within one process: committed events are published
//! here and fanned out to subscribers of their run and of their session; cancel
//! requests reach the runner executing a run on this process.
//!
//! Feeds replay from the store first and then follow live, so a subscriber never sees a
//! gap or a duplicate; a subscriber that lags falls back to replay. Live events from
//! other replicas are not published here: feeds also poll the store while idle, so a
//! run executing elsewhere still streams (issue 11 adds LISTEN/NOTIFY for latency).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use maestro_core::RunStore;
use maestro_core::run::{RunEvent, RunId};
use tokio_util::sync::CancellationToken;

/// The process's event hub.
#[derive(Debug)]
pub struct EventHub {
    store: Arc<dyn RunStore>,
    cancels: Mutex<HashMap<RunId, CancellationToken>>,
}

impl EventHub {
    /// A hub that replays from `store`.
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Self { store, cancels: Mutex::default() }
    }

    /// The store feeds replay from.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Publishes events just committed, in order. Never blocks and never fails: a
    /// subscriber that cannot keep up lags and replays.
    pub fn publish(&self, events: &[RunEvent]) {
        let _ = events;
    }

    /// The cancellation token of a run executing on this process: the runner holds it
    /// while the run executes ([`EventHub::release`] when it ends).
    pub fn cancel_token(&self, run: &RunId) -> CancellationToken {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner).entry(run.clone()).or_default().clone()
    }

    /// Forgets a run's token (its runner ended).
    pub fn release(&self, run: &RunId) {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner).remove(run);
    }

    /// Signals the runner of `run`, if it executes on this process. (A runner elsewhere
    /// sees the store's `cancel_requested` at its next check.)
    pub fn cancel(&self, run: &RunId) {
        if let Some(token) = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).get(run) {
            token.cancel();
        }
    }
}

//! Idle instances of stateless plugins, kept after a call for the same caller's next one.
//!
//! A plugin whose manifest says `stateless = true` promises that none of its tools
//! depends on what an earlier call left in its memory. For such a plugin an instance
//! that ended a call cleanly (the export returned: no trap, timeout, cancellation, fuel
//! or memory refusal) is kept idle instead of being dropped, and the next call skips
//! instantiation, the guest's own start-up and the reset of its memory.
//!
//! What the host guarantees whatever the plugin does:
//!
//! - An idle instance serves only a call with the same caller (the tenant) and the same
//!   plugin configuration as the call that left it: one caller's data never reaches
//!   another through a guest's memory.
//! - It serves a call only if its linear memory is no larger than that call's memory
//!   limit (memory limits are per store: an instance grown under a larger grant is not
//!   reused under a smaller one); the call's own limit then bounds further growth. Fuel,
//!   deadline, output and network limits are the call's own, as for a fresh instance.
//! - Nothing is kept after a call that did not end cleanly, nor an instance whose linear
//!   memory grew past [`MAX_IDLE_MEMORY`].
//! - At most [`IDLE_PER_PLUGIN`] instances per plugin and a quarter of the sandbox's
//!   instance slots in all are idle; an instance idle for [`IDLE_TTL`] is dropped at
//!   the plugin's next call, and every idle instance when the plugin is unloaded.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use wasmtime::Store;

use crate::State;
use crate::wit;

/// Most idle instances kept per plugin.
pub const IDLE_PER_PLUGIN: usize = 16;
/// Largest linear memory an idle instance may have (it stays resident while idle).
pub const MAX_IDLE_MEMORY: usize = 8 << 20;
/// How long an instance may stay idle.
pub const IDLE_TTL: Duration = Duration::from_secs(30);

/// An instance that ended its call cleanly, with the store it lives in.
pub(crate) struct Idle {
    pub(crate) store: Store<State>,
    pub(crate) instance: wit::Instance,
    caller: Arc<str>,
    config: Arc<str>,
    since: Instant,
}

impl Idle {
    pub(crate) fn new(store: Store<State>, instance: wit::Instance, caller: Arc<str>, config: Arc<str>) -> Self {
        Self { store, instance, caller, config, since: Instant::now() }
    }

    pub(crate) fn into_parts(self) -> (Store<State>, wit::Instance) {
        (self.store, self.instance)
    }
}

/// The idle slots left in the whole sandbox (shared by every plugin's pool).
#[derive(Debug, Clone)]
pub(crate) struct Budget(Arc<AtomicUsize>);

impl Budget {
    pub(crate) fn new(slots: usize) -> Self {
        Self(Arc::new(AtomicUsize::new(slots)))
    }

    fn take(&self) -> bool {
        self.0.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    fn give(&self, slots: usize) {
        self.0.fetch_add(slots, Ordering::AcqRel);
    }
}

/// One plugin's idle instances, oldest first.
pub(crate) struct Pool {
    idle: Mutex<VecDeque<Idle>>,
    budget: Budget,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool").field("idle", &self.lock().len()).finish()
    }
}

impl Pool {
    pub(crate) fn new(budget: Budget) -> Self {
        Self { idle: Mutex::new(VecDeque::new()), budget }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently used idle instance this caller may have: same caller, same
    /// configuration, memory within `memory_limit`.
    pub(crate) fn take(&self, caller: &Arc<str>, config: &Arc<str>, memory_limit: usize) -> Option<Idle> {
        let mut idle = self.lock();
        let at = idle.iter().rposition(|i| {
            same(&i.caller, caller) && same(&i.config, config) && i.store.data().memory_size() <= memory_limit
        })?;
        let taken = idle.remove(at);
        drop(idle);
        if taken.is_some() {
            self.budget.give(1);
        }
        taken
    }

    /// Keeps an instance that ended its call cleanly, if there is room (the oldest
    /// goes when the plugin is at its cap); drops expired ones.
    pub(crate) fn put(&self, instance: Idle) {
        if instance.store.data().memory_size() > MAX_IDLE_MEMORY {
            return;
        }
        let mut dropped = Vec::new();
        let mut idle = self.lock();
        while idle.front().is_some_and(|i| i.since.elapsed() >= IDLE_TTL) {
            dropped.extend(idle.pop_front());
        }
        if idle.len() >= IDLE_PER_PLUGIN {
            dropped.extend(idle.pop_front());
        }
        // The slot of an instance dropped here passes to the new one without going
        // through the budget.
        let mut freed = dropped.len();
        if freed > 0 {
            freed -= 1;
            idle.push_back(instance);
        } else if self.budget.take() {
            idle.push_back(instance);
        } else {
            dropped.push(instance);
        }
        drop(idle);
        self.budget.give(freed);
        // Stores are dropped (their memory reset) outside the lock.
        drop(dropped);
    }

    /// How many instances are idle.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let idle = self.idle.get_mut().unwrap_or_else(PoisonError::into_inner);
        self.budget.give(idle.len());
    }
}

fn same(a: &Arc<str>, b: &Arc<str>) -> bool {
    Arc::ptr_eq(a, b) || a == b
}

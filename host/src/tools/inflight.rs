//! Calls in flight: counted per tenant, so one tenant cannot hold every sandbox slot and
//! thread while another's calls wait. Over the limit a call is refused at once (with a
//! retry hint), never queued: a queue would hold the caller's connection and memory for
//! as long as the tenant's spinners run, which is what the limit is there to prevent.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

/// The default limit of calls (tools and personas together) one tenant may have
/// running at once.
pub const DEFAULT_MAX_CALLS_IN_FLIGHT_PER_TENANT: usize = 16;

/// Calls running, in total and per tenant.
#[derive(Debug)]
pub(super) struct InFlight {
    per_tenant: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    limit: usize,
}

impl Default for InFlight {
    fn default() -> Self {
        Self::with_limit(DEFAULT_MAX_CALLS_IN_FLIGHT_PER_TENANT)
    }
}

impl InFlight {
    /// At most `limit` calls per tenant (at least one).
    pub(super) fn with_limit(limit: usize) -> Self {
        Self { per_tenant: Mutex::default(), total: AtomicUsize::new(0), limit: limit.max(1) }
    }

    /// The per-tenant limit.
    pub(super) fn limit(&self) -> usize {
        self.limit
    }

    /// Counts one more call for `tenant`, or refuses it when the tenant already has
    /// `limit` calls running. The call counts until the guard is dropped.
    pub(super) fn admit(self: &Arc<Self>, tenant: &str) -> Option<Admitted> {
        let mut per_tenant = self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        let running = per_tenant.entry(tenant.to_owned()).or_default();
        if *running >= self.limit {
            return None;
        }
        *running += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Admitted { in_flight: self.clone(), tenant: tenant.to_owned() })
    }

    /// Calls running now, every tenant together.
    pub(super) fn total(&self) -> usize {
        self.total.load(Ordering::SeqCst)
    }

    #[cfg(test)]
    fn tenants(&self) -> usize {
        self.per_tenant.lock().unwrap_or_else(PoisonError::into_inner).len()
    }
}

/// One admitted call; dropping it (completed, failed or cancelled) frees its place.
#[derive(Debug)]
pub(super) struct Admitted {
    in_flight: Arc<InFlight>,
    tenant: String,
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut per_tenant = self.in_flight.per_tenant.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(running) = per_tenant.get_mut(&self.tenant) {
            *running = running.saturating_sub(1);
            if *running == 0 {
                per_tenant.remove(&self.tenant);
            }
        }
        self.in_flight.total.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_at_its_limit_is_refused_while_others_are_admitted() {
        let in_flight = Arc::new(InFlight::with_limit(2));
        let a1 = in_flight.admit("a").expect("first");
        let _a2 = in_flight.admit("a").expect("second");
        assert!(in_flight.admit("a").is_none(), "third call of a over the limit");
        let b = in_flight.admit("b").expect("another tenant is not affected");
        assert_eq!(in_flight.total(), 3);
        drop(a1);
        let _a3 = in_flight.admit("a").expect("a finished call frees a place");
        drop(b);
        assert_eq!((in_flight.total(), in_flight.tenants()), (2, 1), "idle tenants leave no entry");
    }
}

//! Periodic work tied to the life of a shared value (plugin and policy reloading).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Runs `tick` every `interval` (first after one interval) for as long as `target` is
/// alive elsewhere; the task ends once the last other `Arc` is dropped.
pub(crate) fn every<T, F, Fut>(target: &Arc<T>, interval: Duration, tick: F) -> tokio::task::JoinHandle<()>
where
    T: Send + Sync + 'static,
    F: Fn(Arc<T>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let target = Arc::downgrade(target);
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(interval);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticker.tick().await;
        loop {
            ticker.tick().await;
            let Some(target) = target.upgrade() else { return };
            tick(target).await;
        }
    })
}

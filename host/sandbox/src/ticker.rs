//! The epoch ticker: a thread that advances the engine's epoch every tick while guest
//! code may run, so that a guest's epoch callback checks its deadline and cancellation,
//! and sleeps when no call has run for a while.
//!
//! So an idle server is not woken a hundred times a second for nothing. Every
//! call holds a [`Ticking`] guard for as long as its future lives (also when it moved
//! to the sandbox runtime, and after its caller stopped waiting: a cancelled guest
//! still needs a tick to notice). The ticker parks only after [`IDLE_TICKS`] ticks in a
//! row with no call running and none started; a call that starts while it is parked
//! wakes it (one `unpark`, only on the first call after an idle spell).
//!
//! The hand-off is the usual pair of sequentially consistent flags: the ticker sets
//! `parked` and then reads `running`; a call adds to `running` and then reads `parked`.
//! Whatever the interleaving, either the ticker sees the call and does not park, or the
//! call sees the ticker parked and unparks it (an `unpark` before `park` is not lost).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread::Thread;
use std::time::Duration;

use wasmtime::Engine;

/// Ticks in a row without any call before the ticker parks (a second at the default
/// 10 ms tick).
pub(crate) const IDLE_TICKS: u32 = 100;

/// What the ticker thread and the calls share.
#[derive(Debug, Default)]
struct Shared {
    /// Calls whose guard is alive.
    running: AtomicUsize,
    /// A call started since the ticker last looked.
    started: AtomicBool,
    /// The ticker is parked, or about to park.
    parked: AtomicBool,
    /// The sandbox is gone: the thread ends.
    stop: AtomicBool,
}

/// The ticker thread of one engine; stops it when dropped.
#[derive(Debug)]
pub(crate) struct Ticker {
    shared: Arc<Shared>,
    thread: Thread,
}

impl Ticker {
    /// Starts the thread advancing `engine`'s epoch every `tick` while calls run.
    pub(crate) fn start(engine: Engine, tick: Duration) -> std::io::Result<Self> {
        let shared = Arc::new(Shared::default());
        let state = shared.clone();
        let handle = std::thread::Builder::new().name("maestro-epoch".into()).spawn(move || {
            let mut idle = 0u32;
            while !state.stop.load(Ordering::Relaxed) {
                std::thread::sleep(tick);
                engine.increment_epoch();
                let busy = state.running.load(Ordering::SeqCst) > 0 || state.started.swap(false, Ordering::SeqCst);
                idle = if busy { 0 } else { idle.saturating_add(1) };
                if idle >= IDLE_TICKS {
                    state.parked.store(true, Ordering::SeqCst);
                    while state.running.load(Ordering::SeqCst) == 0
                        && !state.started.load(Ordering::SeqCst)
                        && !state.stop.load(Ordering::SeqCst)
                    {
                        std::thread::park();
                    }
                    state.parked.store(false, Ordering::SeqCst);
                    idle = 0;
                }
            }
        })?;
        Ok(Self { shared, thread: handle.thread().clone() })
    }

    /// A guard for one call: the epoch advances while it lives.
    pub(crate) fn ticking(&self) -> Ticking {
        self.shared.started.store(true, Ordering::SeqCst);
        self.shared.running.fetch_add(1, Ordering::SeqCst);
        if self.shared.parked.load(Ordering::SeqCst) {
            self.thread.unpark();
        }
        Ticking { shared: self.shared.clone() }
    }

    /// Whether the thread is parked for want of calls (for tests).
    #[cfg(test)]
    pub(crate) fn is_parked(&self) -> bool {
        self.shared.parked.load(Ordering::SeqCst)
    }
}

impl Drop for Ticker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.thread.unpark();
    }
}

/// One call's claim on the ticker (see [`Ticker::ticking`]).
#[derive(Debug)]
pub(crate) struct Ticking {
    shared: Arc<Shared>,
}

impl Drop for Ticking {
    fn drop(&mut self) {
        self.shared.running.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn engine() -> Engine {
        let mut config = wasmtime::Config::new();
        config.epoch_interruption(true);
        Engine::new(&config).expect("engine")
    }

    /// Waits until `condition` holds, or fails after 10 s.
    fn until(what: &str, condition: impl Fn() -> bool) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn the_ticker_parks_when_idle_and_a_call_wakes_it_until_the_call_ends() {
        let ticker = Ticker::start(engine(), Duration::from_micros(200)).expect("ticker");
        until("the idle ticker parks", || ticker.is_parked());
        let call = ticker.ticking();
        until("a call wakes the ticker", || !ticker.is_parked());
        // While the call lives the ticker never parks, however long it runs.
        std::thread::sleep(Duration::from_micros(200) * (IDLE_TICKS * 3));
        assert!(!ticker.is_parked(), "the ticker parked under a running call");
        drop(call);
        until("the ticker parks again after the call", || ticker.is_parked());
    }

    #[test]
    fn many_calls_racing_the_park_always_find_the_ticker_awake() {
        let ticker = Arc::new(Ticker::start(engine(), Duration::from_micros(50)).expect("ticker"));
        for _ in 0..200 {
            until("the idle ticker parks", || ticker.is_parked());
            let calls: Vec<_> = (0..4)
                .map(|_| {
                    let ticker = ticker.clone();
                    std::thread::spawn(move || {
                        let call = ticker.ticking();
                        until("the ticker is awake under a call", || !ticker.is_parked());
                        drop(call);
                    })
                })
                .collect();
            for call in calls {
                call.join().expect("call thread");
            }
        }
    }
}

//! Rate limiting: a token bucket per (grant, key), shared by tool calls and persona
//! renderings. Idle buckets are swept at most once a second once there are many of
//! them, so a call never scans every bucket.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Token buckets per (grant, key).
#[derive(Debug)]
pub(super) struct RateLimiter {
    state: Mutex<State>,
}

#[derive(Debug)]
struct State {
    buckets: HashMap<(String, String), Bucket>,
    /// When idle buckets were last dropped.
    last_sweep: Instant,
    /// Sweeps so far (for tests).
    sweeps: u64,
}

#[derive(Debug)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    /// The refill window: a bucket idle for that long is full again and can be dropped.
    per: Duration,
}

/// Above this many buckets, full ones are dropped (a full bucket is the same as none).
const MAX_IDLE_BUCKETS: usize = 10_000;
/// Sweeps run at most this often, whatever the number of buckets.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

impl Default for RateLimiter {
    fn default() -> Self {
        Self::starting_at(Instant::now())
    }
}

impl RateLimiter {
    fn starting_at(now: Instant) -> Self {
        Self { state: Mutex::new(State { buckets: HashMap::new(), last_sweep: now, sweeps: 0 }) }
    }

    /// Takes one token, or says how long until one is available.
    pub(super) fn admit(&self, rule: &str, key: &str, calls: u32, per: Duration) -> Result<(), Duration> {
        self.admit_at(rule, key, calls, per, Instant::now())
    }

    fn admit_at(&self, rule: &str, key: &str, calls: u32, per: Duration, now: Instant) -> Result<(), Duration> {
        let capacity = f64::from(calls);
        let refill_per_sec = capacity / per.as_secs_f64();
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.buckets.len() > MAX_IDLE_BUCKETS && now.saturating_duration_since(state.last_sweep) >= SWEEP_EVERY {
            state.buckets.retain(|_, b| now.saturating_duration_since(b.updated) < b.per);
            state.last_sweep = now;
            state.sweeps += 1;
        }
        let bucket = state.buckets.entry((rule.to_owned(), key.to_owned())).or_insert(Bucket {
            tokens: capacity,
            updated: now,
            per,
        });
        bucket.tokens = (bucket.tokens + now.saturating_duration_since(bucket.updated).as_secs_f64() * refill_per_sec)
            .min(capacity);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / refill_per_sec))
        }
    }

    #[cfg(test)]
    fn stats(&self) -> (usize, u64) {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        (state.buckets.len(), state.sweeps)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limiter_admits_the_burst_then_refuses_with_a_retry_time() {
        let limiter = RateLimiter::default();
        for _ in 0..3 {
            limiter.admit("r", "k", 3, Duration::from_secs(60)).expect("within the rate");
        }
        let retry = limiter.admit("r", "k", 3, Duration::from_secs(60)).expect_err("over the rate");
        assert!(retry > Duration::from_secs(10) && retry <= Duration::from_secs(20), "{retry:?}");
        limiter.admit("r", "other-key", 3, Duration::from_secs(60)).expect("buckets are per key");
    }

    #[test]
    fn many_buckets_are_swept_at_most_once_a_second_not_on_every_call() {
        let start = Instant::now();
        let limiter = RateLimiter::starting_at(start);
        let minute = Duration::from_secs(60);
        // 30k keys within one second: past 10k buckets, no call scans them all.
        for i in 0..30_000u32 {
            let now = start + Duration::from_micros(u64::from(i) * 30);
            limiter.admit_at("r", &i.to_string(), 5, minute, now).expect("first call of a key");
        }
        assert_eq!(limiter.stats(), (30_000, 0), "no sweep within the first second");
        // A second later one sweep runs; the buckets are not yet full, so all stay.
        for i in 0..1_000u32 {
            limiter.admit_at("r", &format!("late-{i}"), 5, minute, start + Duration::from_secs(2)).expect("admitted");
        }
        assert_eq!(limiter.stats(), (31_000, 1), "one sweep for a thousand calls");
    }

    #[test]
    fn idle_full_buckets_are_dropped_by_the_next_sweep() {
        let start = Instant::now();
        let limiter = RateLimiter::starting_at(start);
        for i in 0..=MAX_IDLE_BUCKETS {
            limiter.admit_at("r", &i.to_string(), 5, Duration::from_secs(1), start).expect("admitted");
        }
        limiter.admit_at("r", "k", 5, Duration::from_secs(1), start + Duration::from_secs(3)).expect("admitted");
        assert_eq!(limiter.stats(), (1, 1), "every idle bucket was full again and dropped");
        // A dropped bucket is the same as a full one.
        for _ in 0..5 {
            limiter.admit_at("r", "0", 5, Duration::from_secs(1), start + Duration::from_secs(3)).expect("full again");
        }
    }
}

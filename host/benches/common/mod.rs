//! Figures the benchmarks print, shared by every bench target.

use std::time::Duration;

/// The `p` quantile (0..=1) of sorted durations, nearest rank; zero when empty.
#[allow(clippy::cast_precision_loss, clippy::cast_possible_truncation, clippy::cast_sign_loss, dead_code)]
pub(crate) fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Microseconds, fractional.
#[allow(dead_code)]
pub(crate) fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// Milliseconds, fractional.
#[allow(dead_code)]
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

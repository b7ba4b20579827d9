//! When and how long to wait before trying again, as the official SDKs do it.

use std::hash::{BuildHasher as _, Hasher as _};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};

/// Longest wait a server may ask for that is honoured (longer: our own backoff).
const MAX_HONOURED: Duration = Duration::from_secs(60);
/// First backoff wait.
const INITIAL_BACKOFF: Duration = Duration::from_millis(500);
/// Longest backoff wait.
const MAX_BACKOFF: Duration = Duration::from_secs(8);

/// Whether a failed response may be tried again: `x-should-retry` when the server
/// says, else 408, 409, 429 and every 5xx (529 included).
pub(crate) fn should_retry(status: StatusCode, headers: &HeaderMap) -> bool {
    match headers.get("x-should-retry").and_then(|v| v.to_str().ok()).map(str::trim) {
        Some("true") => true,
        Some("false") => false,
        _ => matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error(),
    }
}

/// The wait the server asked for: `retry-after-ms`, else `retry-after` in seconds or as
/// an HTTP date; only a wait from 0 to 60 s is honoured.
pub(crate) fn server_wait(headers: &HeaderMap, now: SystemTime) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim);
    let wait = if let Some(ms) = header("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        Duration::try_from_secs_f64(ms / 1000.0).ok()
    } else if let Some(value) = header("retry-after") {
        match value.parse::<f64>() {
            Ok(seconds) => Duration::try_from_secs_f64(seconds).ok(),
            Err(_) => {
                let date = chrono::DateTime::parse_from_rfc2822(value).ok()?;
                let at = SystemTime::UNIX_EPOCH + Duration::from_millis(u64::try_from(date.timestamp_millis()).ok()?);
                Some(at.duration_since(now).unwrap_or(Duration::ZERO))
            }
        }
    } else {
        None
    }?;
    (wait <= MAX_HONOURED).then_some(wait)
}

/// Our own wait before retry number `retry` (0 for the first): 0.5 s·2ⁿ, at most 8 s,
/// less up to a quarter at random (so clients that failed together spread out).
pub(crate) fn backoff(retry: u32) -> Duration {
    let base = INITIAL_BACKOFF.saturating_mul(2u32.saturating_pow(retry.min(16))).min(MAX_BACKOFF);
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u32(retry);
    let jitter = (hasher.finish() % 1000) as f64 / 1000.0;
    base.mul_f64(1.0 - 0.25 * jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().expect("header value"));
        }
        map
    }

    #[test]
    fn the_servers_word_comes_first_then_the_status() {
        let status = |code| StatusCode::from_u16(code).expect("status");
        assert!(should_retry(status(400), &headers(&[("x-should-retry", "true")])));
        assert!(!should_retry(status(503), &headers(&[("x-should-retry", "false")])));
        for code in [408, 409, 429, 500, 502, 503, 529] {
            assert!(should_retry(status(code), &HeaderMap::new()), "{code}");
        }
        for code in [400, 401, 403, 404, 422] {
            assert!(!should_retry(status(code), &HeaderMap::new()), "{code}");
        }
    }

    #[test]
    fn retry_after_is_read_in_milliseconds_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480); // 2015-10-21T07:28:00Z
        assert_eq!(server_wait(&headers(&[("retry-after-ms", "250")]), now), Some(Duration::from_millis(250)));
        assert_eq!(
            server_wait(&headers(&[("retry-after-ms", "100"), ("retry-after", "9")]), now),
            Some(Duration::from_millis(100)),
            "milliseconds win"
        );
        assert_eq!(server_wait(&headers(&[("retry-after", "2")]), now), Some(Duration::from_secs(2)));
        assert_eq!(server_wait(&headers(&[("retry-after", "0")]), now), Some(Duration::ZERO));
        assert_eq!(
            server_wait(&headers(&[("retry-after", "Wed, 21 Oct 2015 07:28:05 GMT")]), now),
            Some(Duration::from_secs(5))
        );
        assert_eq!(server_wait(&headers(&[("retry-after", "61")]), now), None, "too long: our backoff");
        assert_eq!(server_wait(&headers(&[("retry-after", "soon")]), now), None);
        assert_eq!(server_wait(&HeaderMap::new(), now), None);
    }

    #[test]
    fn backoff_doubles_from_half_a_second_up_to_eight_with_jitter() {
        for (retry, base) in [(0, 0.5), (1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 8.0), (40, 8.0)] {
            let wait = backoff(retry).as_secs_f64();
            assert!(wait <= base && wait >= base * 0.75, "retry {retry}: {wait}");
        }
    }
}

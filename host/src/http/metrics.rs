//! Prometheus metrics: requests by route, method and status, and a latency histogram
//! by route. Every label is bounded whatever clients send: routes are the matched
//! templates (`/v1/keys/{id}`) or `unmatched`, never raw paths, and methods are the
//! standard ones or `other`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

/// The registry. Cheap to update: one uncontended lock per request.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
    /// MCP sessions (2025-11-25 revision) the `/mcp` guard holds owners for.
    mcp_sessions: AtomicUsize,
}

#[derive(Debug, Default)]
struct Inner {
    /// By route (the template): found without allocating once the route was seen.
    routes: BTreeMap<String, RouteStats>,
}

/// One route's requests by method and status, and its latency.
#[derive(Debug, Default)]
struct RouteStats {
    requests: BTreeMap<(&'static str, u16), u64>,
    latency: Histogram,
}

#[derive(Debug, Default)]
struct Histogram {
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Metrics {
    /// Sets the number of MCP sessions held.
    pub(super) fn set_mcp_sessions(&self, sessions: usize) {
        self.mcp_sessions.store(sessions, Ordering::Relaxed);
    }

    fn record(&self, method: &'static str, route: &str, status: u16, seconds: f64) {
        let mut inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let stats = match inner.routes.get_mut(route) {
            Some(stats) => stats,
            None => inner.routes.entry(route.to_owned()).or_default(),
        };
        *stats.requests.entry((method, status)).or_default() += 1;
        let histogram = &mut stats.latency;
        histogram.count += 1;
        histogram.sum += seconds;
        for (bucket, bound) in histogram.buckets.iter_mut().zip(BUCKETS) {
            if seconds <= bound {
                *bucket += 1;
            }
        }
    }

    /// The registry in Prometheus text exposition format 0.0.4.
    pub fn render(&self) -> String {
        let inner = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out = String::new();
        out.push_str("# HELP maestro_build_info Build information.\n# TYPE maestro_build_info gauge\n");
        let _ = writeln!(out, "maestro_build_info{{version=\"{}\"}} 1", env!("CARGO_PKG_VERSION"));
        out.push_str("# HELP maestro_http_requests_total HTTP requests by route, method and status.\n");
        out.push_str("# TYPE maestro_http_requests_total counter\n");
        for (route, stats) in &inner.routes {
            for ((method, status), count) in &stats.requests {
                let _ = writeln!(
                    out,
                    "maestro_http_requests_total{{method=\"{method}\",route=\"{route}\",status=\"{status}\"}} {count}"
                );
            }
        }
        out.push_str("# HELP maestro_http_request_duration_seconds HTTP request latency by route.\n");
        out.push_str("# TYPE maestro_http_request_duration_seconds histogram\n");
        for (route, RouteStats { latency: h, .. }) in &inner.routes {
            for (bound, count) in BUCKETS.iter().zip(h.buckets) {
                let _ = writeln!(
                    out,
                    "maestro_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"{bound}\"}} {count}"
                );
            }
            let _ = writeln!(
                out,
                "maestro_http_request_duration_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(out, "maestro_http_request_duration_seconds_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "maestro_http_request_duration_seconds_count{{route=\"{route}\"}} {}", h.count);
        }
        out.push_str("# HELP maestro_mcp_sessions MCP sessions (2025-11-25 revision) held in this process.\n");
        out.push_str("# TYPE maestro_mcp_sessions gauge\n");
        let _ = writeln!(out, "maestro_mcp_sessions {}", self.mcp_sessions.load(Ordering::Relaxed));
        out
    }
}

/// The method as a label: one of the standard methods, or `other` (a client may send
/// any token as a method).
pub(super) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "other",
    }
}

/// Middleware recording every request.
pub(super) async fn track(State(metrics): State<Arc<Metrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    // A reference-counted clone of the template, not a copy of it.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let response = next.run(request).await;
    let elapsed = started.elapsed();
    let status = response.status().as_u16();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    metrics.record(method, route, status, elapsed.as_secs_f64());
    tracing::debug!(status, micros = elapsed.as_micros(), "request");
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_outside_the_standard_set_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::PATCH), "PATCH");
        assert_eq!(method_label(&Method::from_bytes(b"FROB").expect("a token")), "other");
        assert_eq!(method_label(&Method::from_bytes(b"get").expect("a token")), "other");
    }

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record("GET", "/healthz", 200, 0.0007);
        metrics.record("GET", "/healthz", 200, 0.2);
        let text = metrics.render();
        assert!(text.contains("maestro_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 2"));
        assert!(text.contains("maestro_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.0005\"} 0"));
        assert!(text.contains("maestro_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.001\"} 1"));
        assert!(text.contains("maestro_http_request_duration_seconds_bucket{route=\"/healthz\",le=\"0.25\"} 2"));
        assert!(text.contains("maestro_http_request_duration_seconds_count{route=\"/healthz\"} 2"));
    }
}

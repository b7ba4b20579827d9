//! Request ids and request spans. Every request runs in a `request` span carrying its
//! id, method, route (the matched template, never the raw URI) and, once the caller is
//! authenticated, its tenant and key id. The id is taken from a well-formed incoming
//! `x-request-id` (1 to 64 ASCII letters, digits, `-`, `_`, `.`, `:`) or generated,
//! and returned as `x-request-id` on every response, errors included.

use axum::extract::{MatchedPath, Request};
use axum::http::HeaderValue;
use axum::middleware::Next;
use axum::response::Response;
use tracing::Instrument as _;

use crate::telemetry::{RequestId, RequestSpan};

/// The header carrying the request id, both ways.
pub const HEADER: &str = "x-request-id";

/// Middleware (the outermost layer): assigns the id, runs the request in its span and
/// returns the id as a response header.
pub(super) async fn assign(mut request: Request, next: Next) -> Response {
    let incoming = request.headers().get(HEADER).and_then(|v| v.to_str().ok()).and_then(RequestId::parse);
    let id = incoming.unwrap_or_else(RequestId::generate);
    let route = request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str);
    let method = super::metrics::method_label(request.method());
    let span = tracing::info_span!(
        "request",
        request_id = %id,
        method,
        route,
        tenant = tracing::field::Empty,
        key_id = tracing::field::Empty,
    );
    request.extensions_mut().insert(id.clone());
    request.extensions_mut().insert(RequestSpan(span.clone()));
    let mut response = id.clone().scope(next.run(request).instrument(span)).await;
    let value = HeaderValue::from_str(id.as_str()).expect("request ids are checked or generated ASCII");
    response.headers_mut().insert(HEADER, value);
    response
}

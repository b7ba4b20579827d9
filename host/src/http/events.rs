//! Server-sent event streams of run events (`/v1/runs/{id}/events`,
//! `/v1/sessions/{id}/events`): a hub [`Feed`] written as SSE.
//!
//! Each event is `id: <position>`, `event: <type>`, `data: <json>` where the position
//! is the run's `seq` (run streams) or the session's `session_seq` (session streams)
//! and the JSON is `{run, seq, session_seq, type, v, at, data}` (`data`: the versioned
//! payload). A client resumes with the `Last-Event-ID` header, or `?after=` for a
//! browser that reopens an `EventSource` itself; idle streams carry a heartbeat comment.
//! A slow client never slows a run: its feed's live buffer is bounded and it replays
//! from the store when it falls behind.

use std::convert::Infallible;

use axum::body::Body;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::IntoResponse;
use bytes::Bytes;
use maestro_core::run::{EVENT_VERSION, RunEvent};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use utoipa::{IntoParams, ToSchema};

use super::error::{ApiError, ErrorCode};
use crate::orchestrator::hub::Feed;

/// Query of the event streams.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Resume after this position (for clients that cannot send `Last-Event-ID`; the
    /// header wins when both are given). Default 0: from the first event.
    pub after: Option<String>,
}

/// An event as streamed (the `data:` line of each SSE event).
#[derive(Debug, Serialize, ToSchema)]
pub struct EventView<'a> {
    /// The run.
    #[schema(value_type = String)]
    pub run: &'a str,
    /// Position in the run, dense from 1.
    pub seq: i64,
    /// Position in the session, dense from 1 across its runs.
    pub session_seq: i64,
    /// The event type (`run.started`, `message.delta`, …; also the SSE `event:` field).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// The payload's version.
    pub v: u32,
    /// When it happened.
    pub at: chrono::DateTime<chrono::Utc>,
    /// The payload (fields depend on the type).
    #[schema(value_type = Object)]
    pub data: serde_json::Value,
}

/// The position a stream resumes after: the `Last-Event-ID` header, else `?after=`,
/// else 0; refused when malformed or beyond `head`, the last stored position.
pub(super) fn resume_position(headers: &HeaderMap, query: &EventsQuery, head: i64) -> Result<i64, ApiError> {
    let (raw, source) = match headers.get("last-event-id") {
        Some(value) => (Some(value.to_str().unwrap_or("\u{fffd}").trim().to_owned()), "Last-Event-ID"),
        None => (query.after.as_ref().map(|a| a.trim().to_owned()), "after"),
    };
    let Some(raw) = raw else { return Ok(0) };
    let shown: String = raw.chars().take(32).collect();
    let position = raw.parse::<i64>().ok().filter(|p| *p >= 0).ok_or_else(|| {
        ApiError::new(ErrorCode::InvalidLastEventId, format!("{source} `{shown}` is not a non-negative integer"))
    })?;
    if position > head {
        return Err(ApiError::new(
            ErrorCode::InvalidLastEventId,
            format!("{source} {position} is beyond the last event ({head})"),
        ));
    }
    Ok(position)
}

/// Appends the SSE form of an event, identified by `position` (the JSON has no line
/// breaks: serde writes compact JSON and escapes them in strings).
fn write_event(out: &mut String, event: &RunEvent, position: i64) {
    use std::fmt::Write as _;
    let _ = write!(out, "id: {position}\nevent: {}\ndata: {}\n\n", event.body.kind(), event_json(event));
}

/// An event as the `data:` JSON ([`EventView`]), written in one pass: the body is
/// serialised once (its `type` tag first, as serde writes internally tagged enums) and
/// its fields become `data` (this is on the replay path of every stream).
fn event_json(event: &RunEvent) -> String {
    let body = serde_json::to_string(&event.body).expect("event bodies always serialise");
    let kind = event.body.kind();
    let fields = body
        .strip_prefix("{\"type\":")
        .and_then(|rest| rest.strip_prefix(&serde_json::to_string(kind).expect("a string serialises")))
        .map(|rest| rest.strip_prefix(',').unwrap_or(rest));
    let data = match fields {
        Some(fields) => format!("{{{fields}"),
        // Not the expected shape: take the slow, sure path.
        None => event.body.payload().to_string(),
    };
    let at = serde_json::to_string(&event.at).expect("times serialise");
    format!(
        "{{\"run\":\"{}\",\"seq\":{},\"session_seq\":{},\"type\":\"{kind}\",\"v\":{EVENT_VERSION},\"at\":{at},\"data\":{data}}}",
        event.run.as_str(),
        event.seq,
        event.session_seq,
    )
}

/// Which position identifies an event in a stream.
#[derive(Debug, Clone, Copy)]
pub(super) enum Positions {
    /// The run's `seq`.
    Run,
    /// The session's `session_seq`.
    Session,
}

/// At most this much text goes out in one write when events are already buffered
/// (a replay page): one chunk for many events instead of one per event.
const BATCH_BYTES: usize = 64 * 1024;

/// Writes `feed` as SSE until it ends, the store fails (the client resumes with
/// `Last-Event-ID`) or the server shuts down; a heartbeat comment after `heartbeat` of
/// silence. Events the feed already holds (a replay page) are written together.
pub(super) fn stream(
    feed: Feed,
    positions: Positions,
    heartbeat: std::time::Duration,
    shutdown: CancellationToken,
) -> impl IntoResponse {
    let position = move |event: &RunEvent| match positions {
        Positions::Run => event.seq,
        Positions::Session => event.session_seq,
    };
    let chunks = futures_util::stream::unfold(Some(feed), move |feed| {
        let shutdown = shutdown.clone();
        async move {
            let mut feed = feed?;
            // `Feed::next` may be dropped at any await: it changes nothing until a read
            // completes, and the live channel's receive is cancel-safe.
            let next = tokio::select! {
                next = feed.next() => next,
                () = tokio::time::sleep(heartbeat) => {
                    return Some((Ok::<Bytes, Infallible>(Bytes::from_static(b": heartbeat\n\n")), Some(feed)));
                }
                () = shutdown.cancelled() => return None,
            };
            match next {
                Ok(Some(event)) => {
                    let mut out = String::with_capacity(1024);
                    write_event(&mut out, &event, position(&event));
                    while out.len() < BATCH_BYTES {
                        let Some(event) = feed.next_buffered() else { break };
                        write_event(&mut out, &event, position(&event));
                    }
                    Some((Ok(Bytes::from(out)), Some(feed)))
                }
                Ok(None) => None,
                Err(err) => {
                    tracing::warn!(error = %crate::telemetry::error_chain(&err), "event stream ended by a store error");
                    None
                }
            }
        }
    });
    let headers = [
        (CONTENT_TYPE, HeaderValue::from_static("text/event-stream")),
        (CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        // Reverse proxies (nginx) must pass events on as they come, not buffer them.
        (HeaderName::from_static("x-accel-buffering"), HeaderValue::from_static("no")),
    ];
    (headers, Body::from_stream(chunks))
}

#[cfg(test)]
mod tests {
    use maestro_core::run::{EventBody, RunError, RunId, RunTotals, SessionId, ToolResultBody};

    use super::*;

    #[test]
    fn the_streamed_json_is_the_event_view_of_every_kind_of_body() {
        let bodies = [
            EventBody::MessageDelta { step: 1, call: 2, text: "h\u{e9} \"quoted\"\n".into() },
            EventBody::RunInterrupted { step: None, reason: "taken over".into() },
            EventBody::ToolResult(ToolResultBody {
                step: 1,
                call_id: "c".into(),
                tool: "calc.add".into(),
                ok: true,
                content: "3".into(),
                error: None,
                credits: 1,
                duration_ms: 2,
            }),
            EventBody::RunFailed {
                error: RunError { code: "x".into(), message: "y".into() },
                totals: RunTotals::default(),
            },
        ];
        for body in bodies {
            let event = RunEvent {
                run: RunId::from_random([1; 16]),
                session: SessionId::from_random([2; 16]),
                seq: 3,
                session_seq: 7,
                at: chrono::Utc::now(),
                body,
            };
            let view = EventView {
                run: event.run.as_str(),
                seq: event.seq,
                session_seq: event.session_seq,
                kind: event.body.kind(),
                v: EVENT_VERSION,
                at: event.at,
                data: event.body.payload(),
            };
            let expected = serde_json::to_value(&view).expect("serialises");
            let written: serde_json::Value = serde_json::from_str(&event_json(&event)).expect("valid JSON");
            assert_eq!(written, expected);
        }
    }
}

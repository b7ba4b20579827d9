//! Stream resumption for the Streamable HTTP transport (SEP-1699, 2025-11-25
//! "Resumability and Redelivery"): every event the server sends on an SSE stream of a
//! session (a POST's stream, the session's GET stream) is kept here under an id of
//! its own before it is written, so a client whose stream broke, or whose stream the
//! server closed on purpose (see `mcp.poll_tools`), reconnects with `GET` and
//! `Last-Event-ID` and gets every later event of that stream, the call's result
//! included, even when the result was produced while it was away.
//!
//! Bounds: a stream keeps its last [`MAX_STREAM_EVENTS`] events, the buffer keeps at
//! most [`MAX_STREAMS`] streams and [`MAX_BUFFERED_BYTES`] of messages (the oldest
//! streams are dropped first) and a finished stream
//! (its response was sent) is kept [`FINISHED_TTL`] after. Nothing past a bound is
//! lost silently: a `Last-Event-ID` whose following events are no longer all here is
//! refused with a clear error ([`ResumeError`]) instead of replaying with a gap, and
//! a reader that falls behind the bound has its stream ended, so its reconnection
//! gets that error.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rmcp::model::ServerJsonRpcMessage;
use rmcp::transport::streamable_http_server::session::{
    EventId, EventStore, EventStoreError, EventStream, ServerSseMessage,
};
use tokio::sync::watch;

/// Events one stream keeps for a reconnecting client (the oldest go first).
pub const MAX_STREAM_EVENTS: usize = 256;
/// Streams the buffer keeps (the oldest is dropped first).
pub(super) const MAX_STREAMS: usize = 4096;
/// Bytes of messages the buffer keeps in all (the oldest streams are dropped first).
pub(super) const MAX_BUFFERED_BYTES: usize = 64 << 20;
/// How long a finished stream (its response sent) stays resumable.
pub(super) const FINISHED_TTL: Duration = Duration::from_secs(5 * 60);

/// Why a `Last-Event-ID` cannot be resumed from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// Not an id this server gave out.
    #[error("`{0}` is not an event id of this server")]
    Malformed(String),
    /// The stream is no longer buffered (finished long ago, or dropped for newer ones).
    #[error(
        "the stream of event `{0}` is no longer buffered (it finished more than {ttl} ago, or newer streams \
         replaced it); its remaining events cannot be delivered",
        ttl = humantime::format_duration(FINISHED_TTL)
    )]
    Gone(String),
    /// Events after the id were dropped: the stream keeps only its latest events.
    #[error(
        "events after `{0}` are no longer buffered (a stream keeps its last {MAX_STREAM_EVENTS} events); \
         replaying from here would skip {1} of them"
    )]
    Lost(String, u64),
}

/// One stream's kept events.
struct Stream {
    /// Sequence number of `events[0]`.
    first: u64,
    events: VecDeque<(ServerSseMessage, usize)>,
    /// Bytes of the kept messages (serialized).
    bytes: usize,
    /// Set once the stream's response (or error) is kept: no event follows.
    finished: Option<Instant>,
    /// Wakes readers when an event is added.
    changed: watch::Sender<()>,
}

impl Stream {
    fn next(&self) -> u64 {
        self.first + self.events.len() as u64
    }
}

#[derive(Default)]
struct Streams {
    /// By stream token (the part of an event id before the dot).
    by_token: HashMap<String, Stream>,
    /// rmcp's stream id → token.
    tokens: HashMap<String, String>,
    /// Tokens, oldest first.
    order: VecDeque<(String, String)>,
    /// Bytes of all kept messages.
    bytes: usize,
}

impl Streams {
    fn remove(&mut self, stream_id: &str, token: &str) {
        self.tokens.remove(stream_id);
        if let Some(stream) = self.by_token.remove(token) {
            self.bytes -= stream.bytes;
        }
    }

    fn drop_oldest(&mut self) {
        if let Some((stream_id, token)) = self.order.pop_front() {
            self.remove(&stream_id, &token);
        }
    }

    /// Drops finished streams past their time, and the oldest ones past the cap.
    fn sweep(&mut self, now: Instant) {
        let expired: Vec<(String, String)> = self
            .order
            .iter()
            .filter(|(_, token)| {
                self.by_token
                    .get(token)
                    .and_then(|s| s.finished)
                    .is_some_and(|at| now.duration_since(at) >= FINISHED_TTL)
            })
            .cloned()
            .collect();
        if !expired.is_empty() {
            self.order.retain(|entry| !expired.contains(entry));
            for (stream_id, token) in expired {
                self.remove(&stream_id, &token);
            }
        }
        while self.order.len() >= MAX_STREAMS {
            self.drop_oldest();
        }
    }
}

/// The in-process event buffer behind `/mcp` (an rmcp [`EventStore`]).
#[derive(Clone, Default)]
pub struct EventBuffer {
    inner: Arc<Mutex<Streams>>,
}

impl std::fmt::Debug for EventBuffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBuffer").finish_non_exhaustive()
    }
}

/// A fresh unguessable stream token: event ids are not enumerable across streams.
fn token() -> String {
    crate::random::random_bytes::<16>().iter().map(|b| format!("{b:02x}")).collect()
}

/// What a kept event costs: its message, serialized.
fn kept_size(event: &ServerSseMessage) -> usize {
    let message = event.message.as_deref().map_or(0, |m| serde_json::to_vec(m).map_or(0, |v| v.len()));
    message + 64
}

fn parse(id: &str) -> Result<(&str, u64), ResumeError> {
    id.split_once('.')
        .filter(|(token, _)| token.len() == 32 && token.bytes().all(|b| b.is_ascii_hexdigit()))
        .and_then(|(token, seq)| seq.parse::<u64>().ok().map(|seq| (token, seq)))
        .ok_or_else(|| ResumeError::Malformed(id.chars().take(80).collect()))
}

impl EventBuffer {
    fn lock(&self) -> MutexGuard<'_, Streams> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether the events after `last_event_id` can all still be delivered.
    pub fn check(&self, last_event_id: &str) -> Result<(), ResumeError> {
        let (token, seq) = parse(last_event_id)?;
        let streams = self.lock();
        let stream = streams.by_token.get(token).ok_or_else(|| ResumeError::Gone(last_event_id.to_owned()))?;
        if seq >= stream.next() {
            return Err(ResumeError::Malformed(last_event_id.chars().take(80).collect()));
        }
        if seq + 1 < stream.first {
            return Err(ResumeError::Lost(last_event_id.to_owned(), stream.first - seq - 1));
        }
        Ok(())
    }

    /// Keeps `event` as the next of `stream_id`; its id.
    fn store(&self, stream_id: &str, event: &ServerSseMessage) -> EventId {
        let mut streams = self.lock();
        let token = match streams.tokens.get(stream_id) {
            Some(token) => token.clone(),
            None => {
                streams.sweep(Instant::now());
                let token = token();
                let (changed, _) = watch::channel(());
                let stream = Stream { first: 0, events: VecDeque::new(), bytes: 0, finished: None, changed };
                streams.by_token.insert(token.clone(), stream);
                streams.tokens.insert(stream_id.to_owned(), token.clone());
                streams.order.push_back((stream_id.to_owned(), token.clone()));
                token
            }
        };
        let size = kept_size(event);
        // Room for this message: the oldest other streams go first.
        while streams.bytes + size > MAX_BUFFERED_BYTES
            && let Some(at) = streams.order.iter().position(|(_, t)| *t != token)
        {
            if let Some((stream_id, old)) = streams.order.remove(at) {
                streams.remove(&stream_id, &old);
            }
        }
        streams.bytes += size;
        let stream = streams.by_token.get_mut(&token).expect("every token in `tokens` has its stream");
        let id = format!("{token}.{}", stream.next());
        let mut kept = event.clone();
        kept.event_id = Some(id.clone());
        let terminal =
            matches!(kept.message.as_deref(), Some(ServerJsonRpcMessage::Response(_) | ServerJsonRpcMessage::Error(_)));
        stream.events.push_back((kept, size));
        stream.bytes += size;
        let mut freed = 0;
        while stream.events.len() > MAX_STREAM_EVENTS || (stream.bytes > MAX_BUFFERED_BYTES && stream.events.len() > 1)
        {
            if let Some((_, gone)) = stream.events.pop_front() {
                stream.first += 1;
                stream.bytes -= gone;
                freed += gone;
            }
        }
        if terminal {
            stream.finished = Some(Instant::now());
        }
        stream.changed.send_replace(());
        streams.bytes -= freed;
        id
    }

    /// The event numbered `seq` of the stream `token`: `Ok` when kept, `Err(Some)` when
    /// not sent yet (a receiver to wait on), `Err(None)` when the stream ended for this
    /// reader (finished, dropped, or `seq` fell out of the bound).
    fn event(&self, token: &str, seq: u64) -> Result<ServerSseMessage, Option<watch::Receiver<()>>> {
        let streams = self.lock();
        let Some(stream) = streams.by_token.get(token) else { return Err(None) };
        if seq < stream.first {
            tracing::warn!(stream = %token, "an MCP stream reader fell behind the resumption buffer; ending its stream");
            return Err(None);
        }
        if let Some(event) = usize::try_from(seq - stream.first).ok().and_then(|i| stream.events.get(i)) {
            return Ok(event.0.clone());
        }
        if stream.finished.is_some() {
            return Err(None);
        }
        let mut receiver = stream.changed.subscribe();
        receiver.mark_unchanged();
        Err(Some(receiver))
    }

    /// The events of the stream after `last_event_id`, then its later ones as they come
    /// until the stream finishes.
    fn replay(&self, last_event_id: &str) -> Result<EventStream, ResumeError> {
        self.check(last_event_id)?;
        let (token, seq) = parse(last_event_id)?;
        let state = (self.clone(), token.to_owned(), seq + 1);
        let stream = futures_util::stream::unfold(state, |(buffer, token, seq)| async move {
            loop {
                match buffer.event(&token, seq) {
                    Ok(event) => return Some((event, (buffer, token, seq + 1))),
                    Err(None) => return None,
                    Err(Some(mut receiver)) => {
                        if receiver.changed().await.is_err() {
                            return None;
                        }
                    }
                }
            }
        });
        Ok(Box::pin(stream))
    }
}

#[async_trait::async_trait]
impl EventStore for EventBuffer {
    async fn store_event(&self, stream_id: &str, event: &ServerSseMessage) -> Result<EventId, EventStoreError> {
        Ok(self.store(stream_id, event))
    }

    async fn replay_events_after(&self, last_event_id: &str) -> Result<EventStream, EventStoreError> {
        self.replay(last_event_id).map_err(|e| Box::new(e) as EventStoreError)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt as _;

    use super::*;

    fn priming() -> ServerSseMessage {
        ServerSseMessage::retry(Duration::from_secs(1))
    }

    #[tokio::test]
    async fn a_reader_gets_every_event_after_its_id_then_the_later_ones_until_the_stream_finishes() {
        let buffer = EventBuffer::default();
        let first = buffer.store("s", &priming());
        let second = buffer.store("s", &priming());
        let mut replay = buffer.replay(&first).expect("resumable");
        assert_eq!(replay.next().await.and_then(|e| e.event_id), Some(second));
        let response = ServerSseMessage::from_message(ServerJsonRpcMessage::response(
            rmcp::model::ServerResult::empty(()),
            rmcp::model::NumberOrString::Number(1),
        ));
        let writer = buffer.clone();
        let late = tokio::spawn(async move { writer.store("s", &response) });
        let third = late.await.expect("stored");
        assert_eq!(replay.next().await.and_then(|e| e.event_id), Some(third));
        assert!(replay.next().await.is_none(), "the stream ends after its response");
    }

    #[test]
    fn ids_past_the_bound_are_refused_not_replayed_with_a_gap() {
        let buffer = EventBuffer::default();
        let first = buffer.store("s", &priming());
        let second = buffer.store("s", &priming());
        for _ in 0..MAX_STREAM_EVENTS {
            buffer.store("s", &priming());
        }
        assert_eq!(buffer.check(&first), Err(ResumeError::Lost(first.clone(), 1)));
        assert_eq!(buffer.check(&second), Ok(()), "the events after `second` are all still kept");
        assert!(matches!(buffer.check("nope"), Err(ResumeError::Malformed(_))));
        let other = buffer.store("t", &priming());
        assert_ne!(other.split('.').next(), first.split('.').next(), "streams have their own tokens");
        assert!(matches!(buffer.check(&format!("{}.0", "0".repeat(32))), Err(ResumeError::Gone(_))));
    }

    #[test]
    fn past_the_byte_budget_the_oldest_streams_go_and_say_so() {
        let buffer = EventBuffer::default();
        let big = |n: i64| {
            let text = "x".repeat(MAX_BUFFERED_BYTES / 3);
            let result = rmcp::model::CallToolResult::success(vec![rmcp::model::ContentBlock::text(text)]);
            ServerSseMessage::from_message(ServerJsonRpcMessage::response(
                rmcp::model::ServerResult::CallToolResult(result),
                rmcp::model::NumberOrString::Number(n),
            ))
        };
        let first = buffer.store("a", &priming());
        buffer.store("a", &big(1));
        let second = buffer.store("b", &priming());
        buffer.store("b", &big(2));
        assert_eq!(buffer.check(&first), Ok(()));
        buffer.store("c", &big(3));
        assert!(matches!(buffer.check(&first), Err(ResumeError::Gone(_))), "the oldest stream made room");
        assert_eq!(buffer.check(&second), Ok(()));
        assert!(buffer.lock().bytes <= MAX_BUFFERED_BYTES);
    }
}

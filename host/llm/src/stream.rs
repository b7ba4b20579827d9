//! A live answer: the response body, decoded and parsed as it arrives, under the
//! first-token and idle timeouts. Dropping it drops the body, which closes the
//! connection.

use std::time::Duration;

use async_trait::async_trait;
use http_body_util::BodyExt as _;
use maestro_core::llm::{ChatEvent, ChatStream, LlmError};
use maestro_outbound::{OutboundBody, empty_body};
use tokio::time::Instant;

use crate::answer::{Answer, Failure};
use crate::sse::{SseDecoder, SseEvent};
use crate::{anthropic, openai};

/// The wire format's parser.
#[derive(Debug)]
pub(crate) enum Wire {
    /// Chat Completions.
    OpenAi(openai::Parser),
    /// Messages.
    Anthropic(anthropic::Parser),
}

impl Wire {
    fn done(&self) -> bool {
        match self {
            Wire::OpenAi(p) => p.done(),
            Wire::Anthropic(p) => p.done(),
        }
    }

    fn event(&mut self, event: &SseEvent, answer: &mut Answer) -> Result<(), Failure> {
        match self {
            Wire::OpenAi(p) => p.event(event, answer),
            Wire::Anthropic(p) => p.event(event, answer),
        }
    }

    fn whole(&mut self, value: serde_json::Value, answer: &mut Answer) -> Result<(), Failure> {
        match self {
            Wire::OpenAi(p) => p.whole(value, answer),
            Wire::Anthropic(p) => p.whole(value, answer),
        }
    }

    fn end(&mut self, answer: &Answer) -> Result<(), Failure> {
        match self {
            Wire::OpenAi(p) => p.end(answer),
            Wire::Anthropic(p) => p.end(answer),
        }
    }
}

/// A streamed answer being read.
pub(crate) struct Live {
    body: OutboundBody,
    decoder: SseDecoder,
    wire: Wire,
    answer: Answer,
    model: String,
    provider: String,
    /// Until the first content: the first-token deadline.
    first_deadline: Instant,
    first_token_timeout: Duration,
    idle_timeout: Duration,
    /// Whether content arrived (from then on the idle timeout applies).
    content_seen: bool,
    /// Whether the answer completed or failed (nothing more is read).
    finished: bool,
    /// Whether the answer completed and the rest of its body is still to be read.
    drain_pending: bool,
    /// Whether any server-sent event arrived.
    sse_seen: bool,
    /// The body so far while no event arrived (a server that ignored `stream: true`
    /// answers one JSON document), up to [`MAX_WHOLE`] bytes.
    raw: Vec<u8>,
}

/// How long the rest of a completed answer's body is read before its connection is
/// given up.
const DRAIN_TIMEOUT: Duration = Duration::from_millis(100);
/// How much of it is read at most.
const DRAIN_LIMIT: usize = 64 << 10;

/// Largest whole JSON answer read from a server that does not stream.
const MAX_WHOLE: usize = 4 << 20;

impl std::fmt::Debug for Live {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Live").field("model", &self.model).field("provider", &self.provider).finish_non_exhaustive()
    }
}

/// What [`Live::new`] needs besides the body.
#[derive(Debug)]
pub(crate) struct LiveSetup {
    pub(crate) wire: Wire,
    pub(crate) answer: Answer,
    pub(crate) model: String,
    pub(crate) provider: String,
    pub(crate) first_deadline: Instant,
    pub(crate) first_token_timeout: Duration,
    pub(crate) idle_timeout: Duration,
}

impl Live {
    /// Reading `body` as set up.
    pub(crate) fn new(body: OutboundBody, setup: LiveSetup) -> Self {
        Self {
            body,
            decoder: SseDecoder::default(),
            wire: setup.wire,
            answer: setup.answer,
            model: setup.model,
            provider: setup.provider,
            first_deadline: setup.first_deadline,
            first_token_timeout: setup.first_token_timeout,
            idle_timeout: setup.idle_timeout,
            content_seen: false,
            finished: false,
            sse_seen: false,
            drain_pending: false,
            raw: Vec::new(),
        }
    }

    /// Reads until an event is ready or the answer is over, then announces the
    /// answer with [`ChatEvent::Started`] ahead of its first content.
    pub(crate) async fn start(&mut self) -> Result<(), Failure> {
        self.fill().await?;
        self.answer
            .events
            .push_front(ChatEvent::Started { model: self.model.clone(), provider: self.provider.clone() });
        Ok(())
    }

    /// Reads until at least one event is queued (or the answer is over).
    async fn fill(&mut self) -> Result<(), Failure> {
        let mut events = Vec::new();
        while self.answer.events.is_empty() && !self.finished {
            let wait = if self.content_seen {
                self.idle_timeout
            } else {
                self.first_deadline.saturating_duration_since(Instant::now())
            };
            let frame = match tokio::time::timeout(wait, self.body.frame()).await {
                Err(_) if self.content_seen => {
                    return Err(
                        self.fail(Failure::Timeout(format!("no data from the model for {:?}", self.idle_timeout)))
                    );
                }
                Err(_) => {
                    return Err(self.fail(Failure::Timeout(format!(
                        "no first token from the model within {:?}",
                        self.first_token_timeout
                    ))));
                }
                Ok(frame) => frame,
            };
            match frame {
                None => {
                    self.decoder.finish(&mut events);
                    self.sse_seen |= !events.is_empty();
                    self.parse(&mut events)?;
                    if !self.sse_seen && !self.finished {
                        self.read_whole()?;
                    }
                    if !self.finished {
                        if let Err(failure) = self.wire.end(&self.answer) {
                            return Err(self.fail(failure));
                        }
                        self.complete()?;
                    }
                }
                Some(Err(err)) => {
                    let mut message = format!("the connection failed: {err}");
                    let mut source = std::error::Error::source(&err);
                    while let Some(cause) = source {
                        message.push_str(&format!(": {cause}"));
                        source = cause.source();
                    }
                    return Err(self.fail(Failure::Retryable(message)));
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        if !self.sse_seen && self.raw.len() < MAX_WHOLE {
                            self.raw.extend_from_slice(&data);
                        }
                        self.decoder.feed(&data, &mut events);
                        if !events.is_empty() {
                            self.sse_seen = true;
                            self.raw = Vec::new();
                        }
                        self.parse(&mut events)?;
                    }
                }
            }
            if !self.answer.events.is_empty() {
                self.content_seen = true;
            }
        }
        if self.drain_pending {
            self.drain().await;
        }
        Ok(())
    }

    fn parse(&mut self, events: &mut Vec<SseEvent>) -> Result<(), Failure> {
        for event in events.drain(..) {
            if self.finished {
                break;
            }
            if let Err(failure) = self.wire.event(&event, &mut self.answer) {
                return Err(self.fail(failure));
            }
            if self.wire.done() {
                self.complete()?;
            }
        }
        Ok(())
    }

    /// The body was one JSON document, not events: a whole answer or an error.
    fn read_whole(&mut self) -> Result<(), Failure> {
        let raw = std::mem::take(&mut self.raw);
        let text = String::from_utf8_lossy(&raw);
        if text.trim().is_empty() {
            return Ok(());
        }
        let value: serde_json::Value = match serde_json::from_str(text.trim()) {
            Ok(value) => value,
            Err(_) => {
                tracing::debug!(raw = %crate::answer::truncate(&text, 2000), "model answer is neither events nor JSON");
                return Err(self.fail(Failure::Invalid("the answer is neither an event stream nor JSON".into())));
            }
        };
        if let Err(failure) = self.wire.whole(value, &mut self.answer) {
            return Err(self.fail(failure));
        }
        self.complete()
    }

    fn complete(&mut self) -> Result<(), Failure> {
        if let Err(failure) = self.answer.complete(&self.model, &self.provider) {
            return Err(self.fail(failure));
        }
        self.finished = true;
        self.drain_pending = true;
        Ok(())
    }

    /// The answer is whole: reads what is left of the body (the end of the chunked
    /// encoding follows the last event at once) so its connection can serve the next
    /// call; a body that goes on is dropped, which closes the connection.
    async fn drain(&mut self) {
        self.drain_pending = false;
        let mut rest = std::mem::replace(&mut self.body, empty_body());
        let drain = async {
            let mut left = DRAIN_LIMIT;
            while let Some(Ok(frame)) = rest.frame().await {
                left = left.saturating_sub(frame.data_ref().map_or(0, bytes::Buf::remaining));
                if left == 0 {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(DRAIN_TIMEOUT, drain).await;
    }

    fn fail(&mut self, failure: Failure) -> Failure {
        self.finished = true;
        self.body = empty_body();
        failure
    }
}

#[async_trait]
impl ChatStream for Live {
    async fn next(&mut self) -> Option<Result<ChatEvent, LlmError>> {
        if let Some(event) = self.answer.events.pop_front() {
            return Some(Ok(event));
        }
        if self.finished {
            return None;
        }
        match self.fill().await {
            Ok(()) => self.answer.events.pop_front().map(Ok),
            Err(failure) => Some(Err(match failure {
                Failure::Timeout(message) => LlmError::Timeout(message),
                Failure::Quota(message) => LlmError::QuotaExceeded(message),
                Failure::Invalid(message) => LlmError::InvalidResponse(message),
                Failure::Retryable(message) | Failure::Refused { message, .. } => LlmError::Stream(message),
            })),
        }
    }
}

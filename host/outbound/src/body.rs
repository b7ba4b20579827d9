//! Bodies the client sends and returns, and the cap and deadline on them.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame};
use http_body_util::BodyExt as _;

use super::client::{OutboundError, lock};
use super::log::NetLog;

/// A request or response body of the client.
pub type OutboundBody = http_body_util::combinators::UnsyncBoxBody<Bytes, OutboundError>;

/// An empty body.
pub fn empty_body() -> OutboundBody {
    http_body_util::Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A body of these bytes.
pub fn full_body(bytes: impl Into<Bytes>) -> OutboundBody {
    http_body_util::Full::new(bytes.into()).map_err(|never| match never {}).boxed_unsync()
}

/// The next chunk of data of a streamed body (trailers are skipped); `None` at its end.
/// For callers that read a response as it arrives without depending on `http-body`.
pub async fn next_chunk(body: &mut OutboundBody) -> Option<Result<Bytes, OutboundError>> {
    loop {
        match body.frame().await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) if data.is_empty() => {}
                Ok(data) => return Some(Ok(data)),
                Err(_trailers) => {}
            },
            Err(err) => return Some(Err(err)),
        }
    }
}

/// A body that fails once more than `limit` bytes have passed (and, for responses,
/// when its deadline passes), counting what it delivers into the client's log.
pub(crate) struct CappedBody {
    inner: OutboundBody,
    limit: u64,
    seen: u64,
    log: Option<Arc<Mutex<NetLog>>>,
    overflow: Option<OutboundError>,
    deadline: Option<(Pin<Box<tokio::time::Sleep>>, Duration)>,
}

impl CappedBody {
    pub(crate) fn new(
        inner: OutboundBody,
        limit: u64,
        log: Option<Arc<Mutex<NetLog>>>,
        overflow: OutboundError,
    ) -> Self {
        Self { inner, limit, seen: 0, log, overflow: Some(overflow), deadline: None }
    }

    pub(crate) fn with_deadline(mut self, after: Duration) -> Self {
        self.deadline = Some((Box::pin(tokio::time::sleep(after)), after));
        self
    }
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = OutboundError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, OutboundError>>> {
        if let Some((deadline, after)) = self.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            let after = *after;
            self.deadline = None;
            return Poll::Ready(Some(Err(OutboundError::ReadTimeout(after))));
        }
        let frame = match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            let len = data.len() as u64;
            self.seen += len;
            if let Some(log) = &self.log {
                lock(log).bytes_received += len;
            }
            if self.seen > self.limit {
                let limit = self.limit;
                let err = self.overflow.take().unwrap_or(OutboundError::ResponseTooLarge { size: None, limit });
                return Poll::Ready(Some(Err(err)));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
}

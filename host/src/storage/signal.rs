//! [`maestro_core::EventSignal`] on Postgres: `NOTIFY maestro_run_events` after a run's
//! events commit, and one `LISTEN`ing connection per replica.
//!
//! `notify` never blocks and never runs inside a transaction: it queues the notice
//! (bounded; a full queue drops it, which costs a reader latency, never an event: feeds
//! poll the store as a backstop) for a background task that coalesces what is queued per
//! run (the highest positions win) and sends `SELECT pg_notify(…)` on the pool. The
//! payload is JSON: `{"run", "session", "seq", "session_seq"}`. The listener
//! reconnects after a lost connection (notifications sent meanwhile are lost, as above)
//! and stops when the pool closes.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use maestro_core::EventNotice;
use maestro_core::run::{RunId, SessionId};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

/// The channel every replica listens on.
pub(super) const CHANNEL: &str = "maestro_run_events";

/// Notices waiting to be sent before new ones are dropped.
const QUEUE: usize = 1024;

/// The longest wait between two reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    run: String,
    session: String,
    seq: i64,
    session_seq: i64,
}

/// The sending and listening halves over one pool.
#[derive(Debug)]
pub(super) struct PgSignal {
    pool: PgPool,
    queue: OnceLock<mpsc::Sender<EventNotice>>,
}

impl PgSignal {
    pub(super) fn new(pool: PgPool) -> Self {
        Self { pool, queue: OnceLock::new() }
    }

    /// Queues a notice for the sender task (started on first use).
    pub(super) fn notify(&self, notice: EventNotice) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(send_loop(self.pool.clone(), rx));
            tx
        });
        if queue.try_send(notice).is_err() {
            tracing::debug!("event notice queue full or closed; readers fall back to polling");
        }
    }

    /// Starts the listening task.
    pub(super) fn listen(&self, on_notice: Arc<dyn Fn(EventNotice) + Send + Sync>) {
        tokio::spawn(listen_loop(self.pool.clone(), on_notice));
    }
}

async fn send_loop(pool: PgPool, mut rx: mpsc::Receiver<EventNotice>) {
    while let Some(first) = rx.recv().await {
        let mut latest: HashMap<RunId, EventNotice> = HashMap::new();
        let mut keep = |notice: EventNotice| {
            let entry = latest.entry(notice.run.clone()).or_insert_with(|| notice.clone());
            entry.seq = entry.seq.max(notice.seq);
            entry.session_seq = entry.session_seq.max(notice.session_seq);
        };
        keep(first);
        while let Ok(more) = rx.try_recv() {
            keep(more);
        }
        for notice in latest.into_values() {
            let payload = Payload {
                run: notice.run.to_string(),
                session: notice.session.to_string(),
                seq: notice.seq,
                session_seq: notice.session_seq,
            };
            let Ok(payload) = serde_json::to_string(&payload) else { continue };
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&pool).await {
                if matches!(err, sqlx::Error::PoolClosed) {
                    return;
                }
                tracing::warn!(error = %err, "cannot send an event notification; readers fall back to polling");
            }
        }
    }
}

async fn listen_loop(pool: PgPool, on_notice: Arc<dyn Fn(EventNotice) + Send + Sync>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(sqlx::Error::PoolClosed) => return,
            Err(err) => {
                tracing::warn!(error = %err, "cannot connect the event listener; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        if let Err(err) = listener.listen(CHANNEL).await {
            tracing::warn!(error = %err, "cannot listen for event notifications; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        tracing::debug!(channel = CHANNEL, "listening for run events of every replica");
        backoff = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => match decode(notification.payload()) {
                    Some(notice) => on_notice(notice),
                    None => tracing::debug!("ignored a malformed event notification"),
                },
                // The connection was lost; the next call reconnects and listens again.
                Ok(None) => tracing::warn!("event listener connection lost; reconnecting"),
                Err(sqlx::Error::PoolClosed) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "event listener failed; reconnecting");
                    break;
                }
            }
        }
        tokio::time::sleep(backoff).await;
    }
}

fn decode(payload: &str) -> Option<EventNotice> {
    let payload: Payload = serde_json::from_str(payload).ok()?;
    Some(EventNotice {
        run: RunId::parse(&payload.run).ok()?,
        session: SessionId::parse(&payload.session).ok()?,
        seq: payload.seq,
        session_seq: payload.session_seq,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_round_trip_and_malformed_ones_are_ignored() {
        let run = RunId::from_random([1; 16]);
        let session = SessionId::from_random([2; 16]);
        let text = serde_json::to_string(&Payload {
            run: run.to_string(),
            session: session.to_string(),
            seq: 7,
            session_seq: 9,
        })
        .expect("json");
        assert_eq!(decode(&text), Some(EventNotice { run, session, seq: 7, session_seq: 9 }));
        assert_eq!(decode("{\"run\": \"nope\"}"), None);
        assert_eq!(decode("not json"), None);
    }
}

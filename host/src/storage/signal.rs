//! [`maestro_core::EventSignal`] on Postgres: `NOTIFY maestro_run_events` after a run's
//! events commit, `NOTIFY maestro_document_changes` after a document version commits,
//! `NOTIFY maestro_memory_changes` after a memory is edited or deleted, and one
//! `LISTEN`ing connection per replica for all three.
//!
//! `notify` and `notify_document` never block and never run inside a transaction: they
//! queue the notice (bounded; a full queue drops it, which costs a reader latency, never
//! an event: feeds poll the store as a backstop) for a background task that coalesces
//! what is queued per run and per document (the highest positions win) and sends
//! `SELECT pg_notify(…)` on the pool. The payloads are JSON: `{"run", "session", "seq",
//! "session_seq"}` and `{"tenant", "document", "version", "origin"}`, where `origin`
//! names the sending process so that its own document notices are not heard back (it
//! announces them in process); memory notices are `{"tenant", "memory", "origin"}`. The listener reconnects after a lost connection
//! (notifications sent meanwhile are lost, as above) and stops when the pool closes.
//!
//! Key changes: the trigger of migration 0016 notifies `maestro_key_changes` when any
//! write to `api_keys` commits. Each notice, this process's own key writes, and every
//! loss or re-establishment of the listening connection move the process's key
//! generation ([`PgSignal::key_generation`]), which callers' key caches compare before
//! trusting an entry; while the listener is not connected there is no generation, so
//! nothing cached is trusted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use maestro_core::document::DocumentId;
use maestro_core::memory::MemoryId;
use maestro_core::run::{RunId, SessionId};
use maestro_core::{DocumentNotice, EventNotice, MemoryNotice, TenantId};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::mpsc;

/// The channel of run events.
pub(super) const CHANNEL: &str = "maestro_run_events";

/// The channel of document changes.
pub(super) const DOCUMENT_CHANNEL: &str = "maestro_document_changes";

/// The channel of memory changes.
pub(super) const MEMORY_CHANNEL: &str = "maestro_memory_changes";

/// The channel of key changes (sent by the trigger of migration 0016).
pub(super) const KEY_CHANNEL: &str = "maestro_key_changes";

/// Notices waiting to be sent before new ones are dropped.
const QUEUE: usize = 1024;

/// The longest wait between two reconnection attempts of the listener.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The run notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct Payload {
    run: String,
    session: String,
    seq: i64,
    session_seq: i64,
}

/// The document notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct DocumentPayload {
    tenant: String,
    document: String,
    version: i64,
    /// The sending process.
    origin: String,
}

/// The memory notification payload.
#[derive(Debug, Serialize, Deserialize)]
struct MemoryPayload {
    tenant: String,
    memory: String,
    /// The sending process.
    origin: String,
}

/// A notice waiting to be sent.
#[derive(Debug)]
enum Outgoing {
    Run(EventNotice),
    Document(DocumentNotice),
    Memory(MemoryNotice),
}

type OnRun = Arc<dyn Fn(EventNotice) + Send + Sync>;
type OnDocument = Arc<dyn Fn(DocumentNotice) + Send + Sync>;
type OnMemory = Arc<dyn Fn(MemoryNotice) + Send + Sync>;

/// Who hears what the listener receives.
#[derive(Default)]
struct Handlers {
    runs: Mutex<Vec<OnRun>>,
    documents: Mutex<Vec<OnDocument>>,
    memories: Mutex<Vec<OnMemory>>,
    keys: KeyWatch,
}

/// The process's key generation and whether the listener hears key notices right now.
#[derive(Debug, Default)]
struct KeyWatch {
    generation: AtomicU64,
    live: AtomicBool,
}

impl KeyWatch {
    fn changed(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// The listener connected (or lost its connection): whatever was cached may have
    /// missed notices, so it is all dropped.
    fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::SeqCst);
        self.changed();
    }

    fn current(&self) -> Option<u64> {
        let generation = self.generation.load(Ordering::SeqCst);
        self.live.load(Ordering::SeqCst).then_some(generation)
    }
}

/// A copy of the handlers, so that none is called under the lock.
fn handlers_of<T: Clone>(list: &Mutex<Vec<T>>) -> Vec<T> {
    list.lock().unwrap_or_else(PoisonError::into_inner).clone()
}

/// The sending and listening halves over one pool.
pub(super) struct PgSignal {
    pool: PgPool,
    /// This process, in the document notices it sends.
    origin: String,
    queue: OnceLock<mpsc::Sender<Outgoing>>,
    handlers: Arc<Handlers>,
    listening: OnceLock<()>,
}

impl std::fmt::Debug for PgSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgSignal").field("origin", &self.origin).finish_non_exhaustive()
    }
}

impl PgSignal {
    pub(super) fn new(pool: PgPool) -> Self {
        let origin = hex::encode(crate::random::random_bytes::<8>());
        Self { pool, origin, queue: OnceLock::new(), handlers: Arc::default(), listening: OnceLock::new() }
    }

    /// Queues a run notice for the sender task (started on first use).
    pub(super) fn notify(&self, notice: EventNotice) {
        self.enqueue(Outgoing::Run(notice));
    }

    /// Queues a document notice for the sender task (started on first use).
    pub(super) fn notify_document(&self, notice: DocumentNotice) {
        self.enqueue(Outgoing::Document(notice));
    }

    /// Queues a memory notice for the sender task (started on first use).
    pub(super) fn notify_memory(&self, notice: MemoryNotice) {
        self.enqueue(Outgoing::Memory(notice));
    }

    fn enqueue(&self, notice: Outgoing) {
        let queue = self.queue.get_or_init(|| {
            let (tx, rx) = mpsc::channel(QUEUE);
            tokio::spawn(send_loop(self.pool.clone(), self.origin.clone(), rx));
            tx
        });
        if queue.try_send(notice).is_err() {
            tracing::debug!("notice queue full or closed; readers fall back to polling");
        }
    }

    /// Hands run notices to `on_notice` (and starts the listening task).
    pub(super) fn listen(&self, on_notice: OnRun) {
        self.handlers.runs.lock().unwrap_or_else(PoisonError::into_inner).push(on_notice);
        self.start_listening();
    }

    /// Hands other replicas' document notices to `on_notice` (and starts the listening
    /// task).
    pub(super) fn listen_documents(&self, on_notice: OnDocument) {
        self.handlers.documents.lock().unwrap_or_else(PoisonError::into_inner).push(on_notice);
        self.start_listening();
    }

    /// Hands other replicas' memory notices to `on_notice` (and starts the listening
    /// task).
    pub(super) fn listen_memories(&self, on_notice: OnMemory) {
        self.handlers.memories.lock().unwrap_or_else(PoisonError::into_inner).push(on_notice);
        self.start_listening();
    }

    /// The process's key generation (and starts the listening task): `None` until the
    /// listener hears key notices.
    pub(super) fn key_generation(&self) -> Option<u64> {
        self.start_listening();
        self.handlers.keys.current()
    }

    /// This process wrote a key: its own cache must not wait for the notice.
    pub(super) fn keys_written(&self) {
        self.handlers.keys.changed();
    }

    fn start_listening(&self) {
        self.listening.get_or_init(|| {
            tokio::spawn(listen_loop(self.pool.clone(), self.origin.clone(), self.handlers.clone()));
        });
    }
}

async fn send_loop(pool: PgPool, origin: String, mut rx: mpsc::Receiver<Outgoing>) {
    while let Some(first) = rx.recv().await {
        let mut runs: HashMap<RunId, EventNotice> = HashMap::new();
        let mut documents: HashMap<DocumentId, DocumentNotice> = HashMap::new();
        let mut memories: HashMap<MemoryId, MemoryNotice> = HashMap::new();
        let mut keep = |notice: Outgoing| match notice {
            Outgoing::Run(notice) => {
                let entry = runs.entry(notice.run.clone()).or_insert_with(|| notice.clone());
                entry.seq = entry.seq.max(notice.seq);
                entry.session_seq = entry.session_seq.max(notice.session_seq);
            }
            Outgoing::Document(notice) => {
                let entry = documents.entry(notice.document.clone()).or_insert_with(|| notice.clone());
                entry.version = entry.version.max(notice.version);
            }
            Outgoing::Memory(notice) => {
                memories.insert(notice.memory.clone(), notice);
            }
        };
        keep(first);
        while let Ok(more) = rx.try_recv() {
            keep(more);
        }
        let runs = runs.into_values().filter_map(|notice| {
            let payload = Payload {
                run: notice.run.to_string(),
                session: notice.session.to_string(),
                seq: notice.seq,
                session_seq: notice.session_seq,
            };
            Some((CHANNEL, serde_json::to_string(&payload).ok()?))
        });
        let documents = documents.into_values().filter_map(|notice| {
            let payload = DocumentPayload {
                tenant: notice.tenant.to_string(),
                document: notice.document.to_string(),
                version: notice.version,
                origin: origin.clone(),
            };
            Some((DOCUMENT_CHANNEL, serde_json::to_string(&payload).ok()?))
        });
        let memories = memories.into_values().filter_map(|notice| {
            let payload = MemoryPayload {
                tenant: notice.tenant.to_string(),
                memory: notice.memory.to_string(),
                origin: origin.clone(),
            };
            Some((MEMORY_CHANNEL, serde_json::to_string(&payload).ok()?))
        });
        let payloads: Vec<(&str, String)> = runs.chain(documents).chain(memories).collect();
        for (channel, payload) in payloads {
            if let Err(err) = sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&pool).await {
                if matches!(err, sqlx::Error::PoolClosed) {
                    return;
                }
                tracing::warn!(error = %err, channel, "cannot send a notification; readers fall back to polling");
            }
        }
    }
}

async fn listen_loop(pool: PgPool, origin: String, handlers: Arc<Handlers>) {
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
        let channels = [CHANNEL, DOCUMENT_CHANNEL, MEMORY_CHANNEL, KEY_CHANNEL];
        if let Err(err) = listener.listen_all(channels).await {
            tracing::warn!(error = %err, "cannot listen for event notifications; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        tracing::debug!(?channels, "listening for notices of every replica");
        handlers.keys.set_live(true);
        backoff = Duration::from_millis(100);
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let payload = notification.payload();
                    if notification.channel() == KEY_CHANNEL {
                        handlers.keys.changed();
                    } else if notification.channel() == DOCUMENT_CHANNEL {
                        match decode_document(payload) {
                            Some((_, from)) if from == origin => {}
                            Some((notice, _)) => {
                                for on_notice in handlers_of(&handlers.documents) {
                                    on_notice(notice.clone());
                                }
                            }
                            None => tracing::debug!("ignored a malformed document notification"),
                        }
                    } else if notification.channel() == MEMORY_CHANNEL {
                        match decode_memory(payload) {
                            Some((_, from)) if from == origin => {}
                            Some((notice, _)) => {
                                for on_notice in handlers_of(&handlers.memories) {
                                    on_notice(notice.clone());
                                }
                            }
                            None => tracing::debug!("ignored a malformed memory notification"),
                        }
                    } else {
                        match decode(payload) {
                            Some(notice) => {
                                for on_notice in handlers_of(&handlers.runs) {
                                    on_notice(notice.clone());
                                }
                            }
                            None => tracing::debug!("ignored a malformed event notification"),
                        }
                    }
                }
                // The connection was lost: notices sent meanwhile are lost, so key
                // caches stop being trusted until a new connection listens again.
                Ok(None) => {
                    tracing::warn!("event listener connection lost; reconnecting");
                    handlers.keys.set_live(false);
                    break;
                }
                Err(sqlx::Error::PoolClosed) => {
                    handlers.keys.set_live(false);
                    return;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "event listener failed; reconnecting");
                    handlers.keys.set_live(false);
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

/// A memory notice and the process that sent it.
fn decode_memory(payload: &str) -> Option<(MemoryNotice, String)> {
    let payload: MemoryPayload = serde_json::from_str(payload).ok()?;
    let notice =
        MemoryNotice { tenant: TenantId::parse(&payload.tenant).ok()?, memory: MemoryId::parse(&payload.memory).ok()? };
    Some((notice, payload.origin))
}

/// A document notice and the process that sent it.
fn decode_document(payload: &str) -> Option<(DocumentNotice, String)> {
    let payload: DocumentPayload = serde_json::from_str(payload).ok()?;
    let notice = DocumentNotice {
        tenant: TenantId::parse(&payload.tenant).ok()?,
        document: DocumentId::parse(&payload.document).ok()?,
        version: payload.version,
    };
    Some((notice, payload.origin))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_payloads_round_trip_with_their_origin() {
        let (tenant, memory) = (TenantId::from_random([5; 16]), MemoryId::from_random([6; 16]));
        let text = serde_json::to_string(&MemoryPayload {
            tenant: tenant.to_string(),
            memory: memory.to_string(),
            origin: "abc".into(),
        })
        .expect("json");
        assert_eq!(decode_memory(&text), Some((MemoryNotice { tenant, memory }, "abc".to_owned())));
        assert_eq!(decode_memory(r#"{"tenant":"x","memory":"mem_1","origin":"a"}"#), None);
    }

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

    #[test]
    fn document_payloads_round_trip_with_their_origin() {
        let tenant = TenantId::from_random([3; 16]);
        let document = DocumentId::from_random([4; 16]);
        let text = serde_json::to_string(&DocumentPayload {
            tenant: tenant.to_string(),
            document: document.to_string(),
            version: 5,
            origin: "a1".into(),
        })
        .expect("json");
        assert_eq!(decode_document(&text), Some((DocumentNotice { tenant, document, version: 5 }, "a1".to_owned())));
        assert_eq!(
            decode_document("{\"tenant\": \"nope\", \"document\": \"x\", \"version\": 1, \"origin\": \"a\"}"),
            None
        );
        assert_eq!(decode_document("[]"), None);
    }
}

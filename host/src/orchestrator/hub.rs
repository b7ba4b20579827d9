//! The live side of run events, within one process: committed events are published
//! here and fanned out to subscribers of their run and of their session; cancel
//! requests reach the runner executing a run on this process.
//!
//! Feeds replay from the store first and then follow live, so a subscriber never sees a
//! gap or a duplicate: a feed subscribes before it replays, drops live events at or
//! below the last position it delivered, and replays from the store whenever a live
//! event would skip a position (out-of-order publishes) or its buffer overflowed (a
//! slow reader). Each subscriber's live buffer is bounded ([`LIVE_BUFFER`] events) and
//! [`EventHub::publish`] never waits for a subscriber: a reader that falls behind loses
//! live events and replays them from the store instead.
//!
//! Across replicas: with an [`EventSignal`] ([`EventHub::with_signal`]; Postgres
//! `LISTEN`/`NOTIFY`), `publish` also signals every replica, and a signal heard for a
//! run or session that has feeds here wakes them: they read the new events from the
//! store. A lost signal costs latency, never an event: feeds also poll the store while
//! idle (every [`EventHub::poll_interval`]).

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use maestro_core::run::{RunEvent, RunId, SessionId};
use maestro_core::{EventNotice, EventSignal, RunStore, StoreError};
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;

/// Live events each subscriber may have waiting before it lags (and replays).
pub const LIVE_BUFFER: usize = 256;

/// Events read from the store per replay query.
pub const REPLAY_PAGE: u32 = 500;

/// How often an idle feed looks at the store by default.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// How often an idle event stream sends a heartbeat by default.
pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(15);

type Live = broadcast::Sender<Arc<RunEvent>>;

/// Live channels by run and by session; an entry lives while it has subscribers.
#[derive(Debug, Default)]
struct Channels {
    runs: HashMap<RunId, Live>,
    sessions: HashMap<SessionId, Live>,
    /// The last position another replica signalled, by run and by session (feeds wake
    /// on a change).
    run_heads: HashMap<RunId, watch::Sender<i64>>,
    session_heads: HashMap<SessionId, watch::Sender<i64>>,
    /// Times a feed's live buffer overflowed and it replayed from the store.
    lagged: u64,
}

fn lock(channels: &Mutex<Channels>) -> MutexGuard<'_, Channels> {
    channels.lock().unwrap_or_else(PoisonError::into_inner)
}

fn subscribe<K: Eq + Hash + Clone>(map: &mut HashMap<K, Live>, key: &K) -> broadcast::Receiver<Arc<RunEvent>> {
    map.entry(key.clone()).or_insert_with(|| broadcast::channel(LIVE_BUFFER).0).subscribe()
}

fn forget_if_unwatched<K: Eq + Hash>(map: &mut HashMap<K, Live>, key: &K) {
    if map.get(key).is_some_and(|live| live.receiver_count() == 0) {
        map.remove(key);
    }
}

fn watch_head<K: Eq + Hash + Clone>(map: &mut HashMap<K, watch::Sender<i64>>, key: &K) -> watch::Receiver<i64> {
    map.entry(key.clone()).or_insert_with(|| watch::channel(0).0).subscribe()
}

fn forget_head_if_unwatched<K: Eq + Hash>(map: &mut HashMap<K, watch::Sender<i64>>, key: &K) {
    if map.get(key).is_some_and(|head| head.receiver_count() == 0) {
        map.remove(key);
    }
}

/// Raises a head to `position`, waking its feeds, unless it is there already.
fn raise<K: Eq + Hash>(map: &HashMap<K, watch::Sender<i64>>, key: &K, position: i64) {
    if let Some(head) = map.get(key) {
        head.send_if_modified(|head| {
            let raised = position > *head;
            *head = (*head).max(position);
            raised
        });
    }
}

/// The process's event hub.
#[derive(Debug)]
pub struct EventHub {
    store: Arc<dyn RunStore>,
    channels: Arc<Mutex<Channels>>,
    cancels: Mutex<HashMap<RunId, CancellationToken>>,
    poll_interval: Duration,
    heartbeat_interval: Duration,
    signal: Option<Arc<dyn EventSignal>>,
}

impl EventHub {
    /// A hub that replays from `store`, polling idle feeds every second and sending
    /// heartbeats on idle streams every 15 s.
    pub fn new(store: Arc<dyn RunStore>) -> Self {
        Self {
            store,
            channels: Arc::default(),
            cancels: Mutex::default(),
            poll_interval: DEFAULT_POLL_INTERVAL,
            heartbeat_interval: DEFAULT_HEARTBEAT_INTERVAL,
            signal: None,
        }
    }

    /// Signals committed events to other replicas through `signal`, and listens to
    /// theirs: a signal for a run or session with feeds here wakes those feeds. Call once
    /// per process (it starts the listener).
    #[must_use]
    pub fn with_signal(mut self, signal: Arc<dyn EventSignal>) -> Self {
        let channels = self.channels.clone();
        signal.listen(Arc::new(move |notice: EventNotice| {
            let channels = lock(&channels);
            raise(&channels.run_heads, &notice.run, notice.seq);
            raise(&channels.session_heads, &notice.session, notice.session_seq);
        }));
        self.signal = Some(signal);
        self
    }

    /// Sets how often idle feeds look at the store (tests shorten it).
    #[must_use]
    pub fn with_poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Sets how often idle event streams send a heartbeat (tests shorten it).
    #[must_use]
    pub fn with_heartbeat_interval(mut self, interval: Duration) -> Self {
        self.heartbeat_interval = interval;
        self
    }

    /// How often idle feeds look at the store.
    pub fn poll_interval(&self) -> Duration {
        self.poll_interval
    }

    /// How often idle event streams send a heartbeat.
    pub fn heartbeat_interval(&self) -> Duration {
        self.heartbeat_interval
    }

    /// The store feeds replay from.
    pub fn store(&self) -> &Arc<dyn RunStore> {
        &self.store
    }

    /// Publishes events just committed, in order. Never blocks and never fails: a
    /// subscriber that cannot keep up lags and replays.
    pub fn publish(&self, events: &[RunEvent]) {
        if events.is_empty() {
            return;
        }
        if let Some(signal) = &self.signal {
            let mut notices: Vec<EventNotice> = Vec::new();
            for event in events {
                match notices.iter_mut().find(|n| n.run == event.run) {
                    Some(notice) => {
                        notice.seq = notice.seq.max(event.seq);
                        notice.session_seq = notice.session_seq.max(event.session_seq);
                    }
                    None => notices.push(EventNotice {
                        run: event.run.clone(),
                        session: event.session.clone(),
                        seq: event.seq,
                        session_seq: event.session_seq,
                    }),
                }
            }
            for notice in notices {
                signal.notify(notice);
            }
        }
        let channels = lock(&self.channels);
        for event in events {
            let run = channels.runs.get(&event.run);
            let session = channels.sessions.get(&event.session);
            if run.is_none() && session.is_none() {
                continue;
            }
            let event = Arc::new(event.clone());
            // A send fails only when every receiver is gone; the last feed's drop
            // removes the entry, so there is nothing to do here.
            if let Some(live) = run {
                let _ = live.send(event.clone());
            }
            if let Some(live) = session {
                let _ = live.send(event);
            }
        }
    }

    /// A feed of `run`'s events with `seq > after`, in order: replayed from the store,
    /// then live; it ends after the run's terminal event.
    pub fn run_feed(&self, run: &RunId, after: i64) -> Feed {
        let (live, head) = {
            let mut channels = lock(&self.channels);
            (subscribe(&mut channels.runs, run), watch_head(&mut channels.run_heads, run))
        };
        self.feed(Scope::Run(run.clone()), live, head, after)
    }

    /// A feed of `session`'s events (all its runs) with `session_seq > after`, in that
    /// order: replayed from the store, then live; it never ends.
    pub fn session_feed(&self, session: &SessionId, after: i64) -> Feed {
        let (live, head) = {
            let mut channels = lock(&self.channels);
            (subscribe(&mut channels.sessions, session), watch_head(&mut channels.session_heads, session))
        };
        self.feed(Scope::Session(session.clone()), live, head, after)
    }

    fn feed(
        &self,
        scope: Scope,
        live: broadcast::Receiver<Arc<RunEvent>>,
        head: watch::Receiver<i64>,
        after: i64,
    ) -> Feed {
        Feed {
            store: self.store.clone(),
            channels: self.channels.clone(),
            scope,
            live: Some(live),
            head: Some(head),
            after,
            pending: VecDeque::new(),
            replay: true,
            ended: false,
            poll_interval: self.poll_interval,
        }
    }

    /// How many times a feed fell behind its live buffer and replayed from the store.
    pub fn lagged(&self) -> u64 {
        lock(&self.channels).lagged
    }

    /// Runs and sessions with live subscribers on this process.
    pub fn watched(&self) -> (usize, usize) {
        let channels = lock(&self.channels);
        (channels.runs.len(), channels.sessions.len())
    }

    /// The cancellation token of a run executing on this process: the runner holds it
    /// while the run executes ([`EventHub::release`] when it ends).
    pub fn cancel_token(&self, run: &RunId) -> CancellationToken {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner).entry(run.clone()).or_default().clone()
    }

    /// Forgets a run's token (its runner ended).
    pub fn release(&self, run: &RunId) {
        self.cancels.lock().unwrap_or_else(PoisonError::into_inner).remove(run);
    }

    /// Signals the runner of `run`, if it executes on this process. (A runner elsewhere
    /// sees the store's `cancel_requested` at its next check.)
    pub fn cancel(&self, run: &RunId) {
        if let Some(token) = self.cancels.lock().unwrap_or_else(PoisonError::into_inner).get(run) {
            token.cancel();
        }
    }
}

/// What a feed follows.
#[derive(Debug, Clone)]
enum Scope {
    Run(RunId),
    Session(SessionId),
}

impl Scope {
    /// The event's position in this scope (`seq` or `session_seq`).
    fn position(&self, event: &RunEvent) -> i64 {
        match self {
            Scope::Run(_) => event.seq,
            Scope::Session(_) => event.session_seq,
        }
    }
}

/// One subscriber's ordered view of a run's or a session's events: every stored event
/// after the starting position, once, in order, with no gap (see the module docs).
#[derive(Debug)]
pub struct Feed {
    store: Arc<dyn RunStore>,
    channels: Arc<Mutex<Channels>>,
    scope: Scope,
    /// `None` once the hub's channel closed (then the feed only polls).
    live: Option<broadcast::Receiver<Arc<RunEvent>>>,
    /// The position other replicas signalled (`None` once its channel closed).
    head: Option<watch::Receiver<i64>>,
    /// The last position delivered (or the starting one).
    after: i64,
    /// Replayed events not yet delivered.
    pending: VecDeque<Arc<RunEvent>>,
    /// Whether the store may hold events after `after` that the feed has not read.
    replay: bool,
    /// A run feed delivered its run's terminal event.
    ended: bool,
    poll_interval: Duration,
}

impl Feed {
    /// The last position delivered (`seq` for a run feed, `session_seq` for a session
    /// feed), or the starting one.
    pub fn position(&self) -> i64 {
        self.after
    }

    /// The next event; `Ok(None)` once a run feed delivered the run's terminal event
    /// (or its run is over and nothing is left after the starting position). A store
    /// error leaves the feed usable: calling again retries from the same position.
    pub async fn next(&mut self) -> Result<Option<Arc<RunEvent>>, StoreError> {
        loop {
            if self.ended {
                return Ok(None);
            }
            if let Some(event) = self.pending.pop_front() {
                if self.scope.position(&event) <= self.after {
                    continue;
                }
                return Ok(Some(self.deliver(event)));
            }
            if self.replay {
                self.read_page().await?;
                continue;
            }
            let Some(live) = self.live.as_mut() else {
                tokio::time::sleep(self.poll_interval).await;
                self.poll().await?;
                continue;
            };
            let head = self.head.as_mut();
            let signalled = async move {
                match head {
                    Some(head) => head.changed().await.map(|()| *head.borrow_and_update()).ok(),
                    None => std::future::pending().await,
                }
            };
            let received = tokio::select! {
                received = live.recv() => received,
                head = signalled => {
                    match head {
                        // Another replica committed events past this feed: read them.
                        Some(head) if head > self.after => self.replay = true,
                        Some(_) => {}
                        None => self.head = None,
                    }
                    continue;
                }
                () = tokio::time::sleep(self.poll_interval) => {
                    self.poll().await?;
                    continue;
                }
            };
            match received {
                Ok(event) => {
                    let position = self.scope.position(&event);
                    if position <= self.after {
                        // Already replayed.
                        continue;
                    }
                    if position == self.after + 1 {
                        return Ok(Some(self.deliver(event)));
                    }
                    // A gap: an earlier event was published later (or elsewhere).
                    self.replay = true;
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    tracing::debug!(missed, "event feed lagged; replaying from the store");
                    lock(&self.channels).lagged += 1;
                    self.replay = true;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    self.live = None;
                    self.replay = true;
                }
            }
        }
    }

    /// The next event if the feed already holds it (the rest of a replay page): no
    /// waiting and no store read. `None` does not mean the feed ended.
    pub fn next_buffered(&mut self) -> Option<Arc<RunEvent>> {
        while !self.ended {
            let event = self.pending.pop_front()?;
            if self.scope.position(&event) > self.after {
                return Some(self.deliver(event));
            }
        }
        None
    }

    fn deliver(&mut self, event: Arc<RunEvent>) -> Arc<RunEvent> {
        self.after = self.scope.position(&event);
        if matches!(self.scope, Scope::Run(_)) && event.body.is_terminal() {
            self.ended = true;
            self.pending.clear();
        }
        event
    }

    /// Reads the next page from the store; a short page means the feed caught up.
    async fn read_page(&mut self) -> Result<(), StoreError> {
        let page = match &self.scope {
            Scope::Run(run) => self.store.run_events(run, self.after, REPLAY_PAGE).await?,
            Scope::Session(session) => self.store.session_events(session, self.after, REPLAY_PAGE).await?,
        };
        if page.len() < REPLAY_PAGE as usize {
            self.replay = false;
        }
        if page.is_empty() {
            self.check_over().await?;
        }
        self.pending.extend(page.into_iter().map(Arc::new));
        Ok(())
    }

    /// While idle: whether the store holds events this process did not publish (a run
    /// on another replica), or the run is over.
    async fn poll(&mut self) -> Result<(), StoreError> {
        let head = match &self.scope {
            Scope::Run(run) => match self.store.run(None, run).await? {
                Some(run) if run.last_seq <= self.after && run.state.is_final() => {
                    self.ended = true;
                    return Ok(());
                }
                Some(run) => run.last_seq,
                None => return Ok(()),
            },
            Scope::Session(session) => self.store.session_head(session).await?,
        };
        if head > self.after {
            self.replay = true;
        }
        Ok(())
    }

    /// A run feed whose run is over with nothing after its position ends.
    async fn check_over(&mut self) -> Result<(), StoreError> {
        if let Scope::Run(run) = &self.scope
            && let Some(run) = self.store.run(None, run).await?
            && run.state.is_final()
            && run.last_seq <= self.after
        {
            self.ended = true;
        }
        Ok(())
    }
}

impl Drop for Feed {
    fn drop(&mut self) {
        // Drop the receivers first, so the channels count one subscriber fewer.
        self.live = None;
        self.head = None;
        let mut channels = lock(&self.channels);
        match &self.scope {
            Scope::Run(run) => {
                forget_if_unwatched(&mut channels.runs, run);
                forget_head_if_unwatched(&mut channels.run_heads, run);
            }
            Scope::Session(session) => {
                forget_if_unwatched(&mut channels.sessions, session);
                forget_head_if_unwatched(&mut channels.session_heads, session);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use async_trait::async_trait;
    use chrono::Utc;
    use maestro_core::run::{EventBody, Message, MessageId, Run, RunLimits, RunState, RunTotals, Session, Strategy};
    use maestro_core::{Role, TenantId};

    use super::*;

    /// An in-memory run log: events of one session's runs, each run's state.
    #[derive(Debug, Default)]
    struct Log {
        events: Mutex<Vec<RunEvent>>,
        finished: Mutex<Vec<RunId>>,
        reads: AtomicU64,
    }

    fn unused() -> StoreError {
        StoreError::Corrupt("not used by these tests".into())
    }

    fn id<K: maestro_core::id::IdKind>(n: u8) -> maestro_core::id::Id<K> {
        maestro_core::id::Id::from_random([n; 16])
    }

    impl Log {
        /// Appends an event to `run` (positions allocated densely), returning it.
        fn append(&self, run: &RunId, body: EventBody) -> RunEvent {
            let mut events = self.events.lock().expect("lock");
            let seq = events.iter().filter(|e| &e.run == run).count() as i64 + 1;
            let event = RunEvent {
                run: run.clone(),
                session: id(9),
                seq,
                session_seq: events.len() as i64 + 1,
                at: Utc::now(),
                body,
            };
            if event.body.is_terminal() {
                self.finished.lock().expect("lock").push(run.clone());
            }
            events.push(event.clone());
            event
        }
    }

    fn delta(text: &str) -> EventBody {
        EventBody::MessageDelta { step: 1, call: 1, text: text.into() }
    }

    fn done() -> EventBody {
        EventBody::RunCompleted { totals: RunTotals::default() }
    }

    #[async_trait]
    impl RunStore for Log {
        async fn create_session(&self, _: &Session) -> Result<(), StoreError> {
            Err(unused())
        }
        async fn session(&self, _: &TenantId, _: &SessionId) -> Result<Option<Session>, StoreError> {
            Err(unused())
        }
        async fn sessions(&self, _: &TenantId, _: Option<&SessionId>, _: u32) -> Result<Vec<Session>, StoreError> {
            Err(unused())
        }
        async fn messages(&self, _: &TenantId, _: &SessionId, _: i64, _: u32) -> Result<Vec<Message>, StoreError> {
            Err(unused())
        }
        async fn run(&self, _: Option<&TenantId>, run: &RunId) -> Result<Option<Run>, StoreError> {
            let last_seq = self.events.lock().expect("lock").iter().filter(|e| &e.run == run).count() as i64;
            let finished = self.finished.lock().expect("lock").contains(run);
            Ok(Some(Run {
                id: run.clone(),
                session: id(9),
                tenant: id(8),
                trigger: MessageId::from_random([7; 16]),
                key_id: "key".into(),
                role: Role::Member,
                state: if finished { RunState::Completed } else { RunState::Running },
                strategy: Strategy::Sequence,
                limits: RunLimits::default(),
                totals: RunTotals::default(),
                error: None,
                cancel_requested: false,
                last_seq,
                created_at: Utc::now(),
                started_at: None,
                finished_at: None,
            }))
        }
        async fn runs(&self, _: &TenantId, _: &SessionId, _: u32) -> Result<Vec<Run>, StoreError> {
            Err(unused())
        }
        async fn run_events(&self, run: &RunId, after: i64, limit: u32) -> Result<Vec<RunEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let events = self.events.lock().expect("lock");
            Ok(events.iter().filter(|e| &e.run == run && e.seq > after).take(limit as usize).cloned().collect())
        }
        async fn session_events(&self, _: &SessionId, after: i64, limit: u32) -> Result<Vec<RunEvent>, StoreError> {
            self.reads.fetch_add(1, Ordering::Relaxed);
            let events = self.events.lock().expect("lock");
            Ok(events.iter().filter(|e| e.session_seq > after).take(limit as usize).cloned().collect())
        }
        async fn session_head(&self, _: &SessionId) -> Result<i64, StoreError> {
            Ok(self.events.lock().expect("lock").len() as i64)
        }
        async fn request_cancel(&self, _: &TenantId, _: &RunId) -> Result<Option<Run>, StoreError> {
            Err(unused())
        }
    }

    fn hub() -> (Arc<Log>, EventHub) {
        let log = Arc::new(Log::default());
        let hub = EventHub::new(log.clone()).with_poll_interval(Duration::from_millis(20));
        (log, hub)
    }

    async fn drain(feed: &mut Feed) -> Vec<i64> {
        let mut seen = Vec::new();
        while let Some(event) = feed.next().await.expect("feed") {
            seen.push(event.seq);
        }
        seen
    }

    #[tokio::test]
    async fn a_run_feed_replays_then_follows_live_without_gap_or_duplicate_and_ends_after_the_terminal_event() {
        let (log, hub) = hub();
        let run = id(1);
        let early: Vec<RunEvent> = (0..3).map(|i| log.append(&run, delta(&i.to_string()))).collect();
        let mut feed = hub.run_feed(&run, 1);
        // Published again after the feed subscribed: replay and live overlap.
        hub.publish(&early);
        let mut later = Vec::new();
        for i in 3..6 {
            later.push(log.append(&run, delta(&i.to_string())));
        }
        later.push(log.append(&run, done()));
        // Published out of order: the feed sees a gap and replays.
        hub.publish(&later[2..]);
        hub.publish(&later[..2]);
        assert_eq!(drain(&mut feed).await, vec![2, 3, 4, 5, 6, 7]);
        drop(feed);
        assert_eq!(hub.watched(), (0, 0), "the last feed's drop forgets the channel");
        // A finished run opened at its head ends at once.
        assert!(hub.run_feed(&run, 7).next().await.expect("feed").is_none());
    }

    #[tokio::test]
    async fn a_feed_that_is_not_read_never_blocks_publish_and_replays_what_it_missed() {
        let (log, hub) = hub();
        let run = id(2);
        let mut feed = hub.run_feed(&run, 0);
        hub.publish(&[log.append(&run, delta("first"))]);
        assert_eq!(feed.next().await.expect("feed").expect("an event").seq, 1);
        let reads = log.reads.load(Ordering::Relaxed);
        // Now following live; the reader stops reading while far more than its buffer
        // is published.
        let total = LIVE_BUFFER * 3;
        for i in 0..total {
            hub.publish(&[log.append(&run, delta(&i.to_string()))]);
        }
        hub.publish(&[log.append(&run, done())]);
        let seen = drain(&mut feed).await;
        assert_eq!(seen, (2..=total as i64 + 2).collect::<Vec<_>>());
        assert!(log.reads.load(Ordering::Relaxed) > reads, "the lagging feed replayed from the store");
        assert!(hub.lagged() >= 1);
    }

    #[tokio::test]
    async fn an_idle_feed_polls_the_store_for_events_published_elsewhere() {
        let (log, hub) = hub();
        let run = id(3);
        let mut feed = hub.run_feed(&run, 0);
        let writer = {
            let log = log.clone();
            let run = run.clone();
            tokio::spawn(async move {
                for i in 0..5 {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                    // Never published on this hub: another replica wrote it.
                    log.append(&run, delta(&i.to_string()));
                }
                log.append(&run, done());
            })
        };
        assert_eq!(drain(&mut feed).await, vec![1, 2, 3, 4, 5, 6]);
        writer.await.expect("writer");
    }

    type Listener = Arc<dyn Fn(EventNotice) + Send + Sync>;

    /// Another replica's signals, as the test sends them; and this hub's.
    #[derive(Default)]
    struct Signals {
        listener: Mutex<Option<Listener>>,
        sent: Mutex<Vec<EventNotice>>,
    }

    impl std::fmt::Debug for Signals {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("Signals")
        }
    }

    impl EventSignal for Signals {
        fn notify(&self, notice: EventNotice) {
            self.sent.lock().expect("lock").push(notice);
        }

        fn listen(&self, on_notice: Arc<dyn Fn(EventNotice) + Send + Sync>) {
            *self.listener.lock().expect("lock") = Some(on_notice);
        }

        fn notify_document(&self, _notice: maestro_core::DocumentNotice) {}

        fn listen_documents(&self, _on_notice: Arc<dyn Fn(maestro_core::DocumentNotice) + Send + Sync>) {}
    }

    #[tokio::test]
    async fn a_signal_from_another_replica_wakes_idle_feeds_and_publish_signals_the_last_positions() {
        let log = Arc::new(Log::default());
        let signals = Arc::new(Signals::default());
        // Polling an hour: only the signal can wake the feed in time.
        let hub = EventHub::new(log.clone()).with_poll_interval(Duration::from_secs(3600)).with_signal(signals.clone());
        let run = id(6);
        let mut feed = hub.run_feed(&run, 0);
        let reader = tokio::spawn(async move { drain(&mut feed).await });
        while log.reads.load(Ordering::Relaxed) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // The feed replayed nothing and waits; another replica commits and signals.
        let events: Vec<RunEvent> =
            vec![log.append(&run, delta("a")), log.append(&run, delta("b")), log.append(&run, done())];
        let listener = signals.listener.lock().expect("lock").clone().expect("the hub listens");
        listener(EventNotice { run: id(7), session: id(8), seq: 9, session_seq: 9 });
        listener(EventNotice { run: run.clone(), session: id(9), seq: 3, session_seq: 3 });
        let seen = tokio::time::timeout(Duration::from_secs(10), reader).await.expect("woken").expect("reader");
        assert_eq!(seen, vec![1, 2, 3]);
        assert_eq!(hub.watched(), (0, 0));

        hub.publish(&events);
        let sent = signals.sent.lock().expect("lock").clone();
        assert_eq!(sent, vec![EventNotice { run, session: id(9), seq: 3, session_seq: 3 }], "one notice per run");
    }

    #[tokio::test]
    async fn a_session_feed_follows_every_run_of_the_session_by_session_seq() {
        let (log, hub) = hub();
        let (a, b) = (id(4), id(5));
        let mut feed = hub.session_feed(&id(9), 0);
        for i in 0..4 {
            let run = if i % 2 == 0 { &a } else { &b };
            let event = log.append(run, delta("x"));
            hub.publish(&[event]);
        }
        let mut seen = Vec::new();
        for _ in 0..4 {
            let event = feed.next().await.expect("feed").expect("an event");
            seen.push((event.session_seq, event.run.clone(), event.seq));
        }
        assert_eq!(seen, vec![(1, a.clone(), 1), (2, b.clone(), 1), (3, a, 2), (4, b, 2)]);
        assert_eq!(feed.position(), 4);
    }
}

//! The passage follower: keeps the vectors of messages and documents (their current
//! version) in step with the search outbox, the feed the full-text index follows (see
//! [`maestro_core::passage`] and `search/indexer.rs`).
//!
//! Unlike the index, which every replica keeps for itself, passages live in the shared
//! database, so there is one follower position, stored beside them. A step reads
//! settled outbox rows after the position, fetches the changed objects' current content
//! ([`SearchStore::searchables`]), cuts it into passages ([`passages_of`]), embeds the
//! passages whose text changed (an unchanged text keeps its vector) with the configured
//! [`Embedder`] in batches of [`FollowerSettings::embed_batch`], and writes the objects'
//! passages and the position's advance in one transaction that first moves the
//! position from the value it read ([`PassageStore::write_passages`]): of two replicas
//! following at once, one writes and the other re-reads, so nothing is written twice
//! and the position never goes back. An object gone from the tables loses its passages.
//!
//! A **reconcile** walks every message and document ([`SearchStore::searchable_page`])
//! and rewrites the passages of objects whose stored passages differ from their
//! content or were made by another embedder, and deletes passages of objects that are
//! gone. It runs in the follower task itself, a page at a time between steps, when the
//! position has never moved (a first start over existing rows), when it fell behind
//! the outbox's pruning (rows were missed; steps are refused by the store until the
//! reconcile moves the position to where the outbox had settled when it began), and
//! when passages of another embedder exist (the configured one changed). Why the
//! follower task rather than jobs: the reconcile's writes take part in the same
//! compare-and-set on the position as the steps' (a page read before a step wrote must
//! not overwrite it), which one task interleaving both keeps simple; and a restart
//! resumes cheaply, since pages already current are compared, not re-embedded.
//!
//! **One replica embeds at a time.** With [`PassageFollower::with_lease`] (the server
//! sets it on both backends), the follower task holds the [`LEASE`] lease
//! ([`LeaseStore`]) while it works: it takes or renews it, for
//! [`FollowerSettings::lease_for`], before every unit of work, and gives it up when it
//! stops. Every other replica's follower stands by, looking every
//! [`FollowerSettings::poll_interval`], and takes the lease over once it expired or was
//! given up; since the position is in the database and moved by compare-and-set, the new
//! holder goes on from where the last write left it, and a holder that lost its lease
//! mid-step (a pause past the lease's end) loses only its write, not a change. A step is
//! bounded by [`FollowerSettings::write_budget`], so the lease, renewed between steps,
//! must outlast one step's embedding (256 passages take about 12 s on the offline model
//! on 2 cores; the default lease is 60 s). On SQLite a single process usually holds it,
//! through the same code.
//!
//! The embedder decides the pace: while it is loading the follower waits; while it is
//! unavailable or failing it backs off (doubling up to [`FollowerSettings::max_backoff`])
//! and retries the same rows: nothing is dropped.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use maestro_core::StoreError;
use maestro_core::embed::{EmbedError, Embedder, EmbedderStatus};
use maestro_core::passage::{FollowerState, Passage, PassageWrite, StoredPassage, passages_of};
use maestro_core::ports::{LeaseStore, PassageStore, SearchStore};
use maestro_core::search::{OutboxPosition, SearchKind, Searchable};
use serde::Serialize;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The name of the lease the following replica holds.
pub const LEASE: &str = "passages.follower";

/// The kinds that have passages.
const KINDS: [SearchKind; 2] = [SearchKind::Message, SearchKind::Document];

/// How the follower paces itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowerSettings {
    /// How often it looks for new outbox rows when idle (and while the embedder loads).
    pub poll_interval: Duration,
    /// Outbox rows read per step.
    pub outbox_batch: u32,
    /// Passages embedded per write, about (a step or page stops taking objects past it;
    /// one object is always taken).
    pub write_budget: usize,
    /// Texts per embedder call.
    pub embed_batch: usize,
    /// Objects read per reconcile page.
    pub reconcile_page: u32,
    /// The longest pause after failures.
    pub max_backoff: Duration,
    /// How long the follower's lease lasts past each renewal (see the module docs).
    pub lease_for: Duration,
}

impl Default for FollowerSettings {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(200),
            outbox_batch: 256,
            write_budget: 256,
            embed_batch: 32,
            reconcile_page: 500,
            max_backoff: Duration::from_secs(30),
            lease_for: Duration::from_secs(60),
        }
    }
}

/// What the follower has done, as this process saw it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FollowerStatus {
    /// The position after this process's last look (`None`: not looked yet).
    pub position: Option<OutboxPosition>,
    /// Whether a reconcile is under way.
    pub reconciling: bool,
    /// Reconciles this process finished.
    pub reconciles: u64,
    /// Passages this process embedded.
    pub embedded: u64,
    /// Writes this process made.
    pub writes: u64,
    /// Writes refused because another follower moved the position first.
    pub lost_races: u64,
    /// Why it is waiting, when it is (the embedder loading or unavailable, or another
    /// replica holding the lease).
    pub waiting: Option<String>,
    /// Whether this process holds the follower's lease (always `true` without one once
    /// it ran).
    pub leading: bool,
}

/// Why a follower step did not finish.
#[derive(Debug, thiserror::Error)]
pub enum PassagesError {
    /// The embedder is still loading: wait and try again.
    #[error("the embedder is loading")]
    Loading,
    /// The embedder failed or is unavailable: back off and try again.
    #[error("the embedder failed")]
    Embedding(#[source] EmbedError),
    /// The store failed.
    #[error("the passage store failed")]
    Store(#[from] StoreError),
}

/// What one unit of work did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Wrote (or lost a race and must re-read): more may be waiting.
    More,
    /// Nothing to do now.
    Idle,
}

/// A reconcile under way.
#[derive(Debug, Clone)]
struct Reconcile {
    /// Where the outbox had settled when it began: the position it leaves.
    settled: OutboxPosition,
    /// Index into [`KINDS`].
    kind: usize,
    /// The last object id done of that kind.
    after: Option<String>,
    started: Instant,
    rewritten: usize,
}

/// The passage follower (see the module docs). Cheap to clone.
#[derive(Clone)]
pub struct PassageFollower {
    inner: Arc<Inner>,
}

struct Inner {
    search: Arc<dyn SearchStore>,
    passages: Arc<dyn PassageStore>,
    embedder: Arc<dyn Embedder>,
    settings: FollowerSettings,
    status: watch::Sender<FollowerStatus>,
    /// The reconcile under way, and whether the start's checks were made.
    work: tokio::sync::Mutex<Work>,
    /// The lease the follower task holds while it works, and its holder name.
    lease: std::sync::OnceLock<(Arc<dyn LeaseStore>, String)>,
}

#[derive(Debug)]
struct Work {
    reconcile: Option<Reconcile>,
    /// Whether the start's checks are still to be made.
    first_look: bool,
}

impl std::fmt::Debug for PassageFollower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassageFollower").field("embedder", self.inner.embedder.info()).finish_non_exhaustive()
    }
}

impl PassageFollower {
    /// A follower of `search`'s outbox writing to `passages`, embedding with `embedder`.
    pub fn new(
        search: Arc<dyn SearchStore>,
        passages: Arc<dyn PassageStore>,
        embedder: Arc<dyn Embedder>,
        settings: FollowerSettings,
    ) -> Self {
        let inner = Inner {
            search,
            passages,
            embedder,
            settings,
            status: watch::Sender::new(FollowerStatus::default()),
            work: tokio::sync::Mutex::new(Work { reconcile: None, first_look: true }),
            lease: std::sync::OnceLock::new(),
        };
        Self { inner: Arc::new(inner) }
    }

    /// Makes the follower task work only while it holds the [`LEASE`] lease of
    /// `leases` (see the module docs); call before [`spawn`](Self::spawn) (a second call
    /// keeps the first lease).
    #[must_use]
    pub fn with_lease(self, leases: Arc<dyn LeaseStore>) -> Self {
        let holder = format!("follower-{}", hex::encode(crate::random::random_bytes::<8>()));
        // Set once: a second call keeps the first lease.
        let _ = self.inner.lease.set((leases, holder));
        self
    }

    /// What this process's follower has done.
    pub fn status(&self) -> FollowerStatus {
        self.inner.status.borrow().clone()
    }

    /// The status, as it changes.
    pub fn watch(&self) -> watch::Receiver<FollowerStatus> {
        self.inner.status.subscribe()
    }

    /// Starts the follower task; it ends soon after `stop` is cancelled.
    pub fn spawn(&self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let follower = self.clone();
        tokio::spawn(async move { follower.run(stop).await })
    }

    async fn run(self, stop: CancellationToken) {
        let settings = &self.inner.settings;
        let mut failures = 0u32;
        while !stop.is_cancelled() {
            let leading = match self.lead().await {
                Ok(leading) => leading,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot take the passage follower's lease; retrying");
                    false
                }
            };
            let wait = if !leading {
                self.set_waiting(Some("another replica follows the outbox".to_owned()));
                settings.poll_interval
            } else {
                match self.step().await {
                    Ok(Progress::More) => {
                        failures = 0;
                        continue;
                    }
                    Ok(Progress::Idle) => {
                        failures = 0;
                        settings.poll_interval
                    }
                    Err(PassagesError::Loading) => {
                        self.set_waiting(Some("the embedder is loading".to_owned()));
                        settings.poll_interval
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        let why = crate::telemetry::error_chain(&err);
                        tracing::warn!(error = %why, failures, "the passage follower failed; retrying");
                        self.set_waiting(Some(why));
                        let doubled = settings.poll_interval.saturating_mul(1u32 << failures.min(16));
                        doubled.min(settings.max_backoff)
                    }
                }
            };
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(wait) => {}
            }
        }
        if let Some((leases, holder)) = self.inner.lease.get()
            && self.inner.status.borrow().leading
            && let Err(err) = leases.release_lease(LEASE, holder, chrono::Utc::now()).await
        {
            tracing::warn!(error = %err, "cannot give up the passage follower's lease; it expires later");
        }
    }

    /// Takes or renews the lease (always held without one); notes the change.
    async fn lead(&self) -> Result<bool, StoreError> {
        let leading = match self.inner.lease.get() {
            None => true,
            Some((leases, holder)) => {
                let now = chrono::Utc::now();
                let lease_for = chrono::Duration::from_std(self.inner.settings.lease_for)
                    .unwrap_or_else(|_| chrono::Duration::seconds(60));
                leases.take_lease(LEASE, holder, now, now + lease_for).await?
            }
        };
        self.inner.status.send_if_modified(|status| {
            let changed = status.leading != leading;
            if changed {
                tracing::info!(leading, "passage follower lease");
            }
            status.leading = leading;
            changed
        });
        Ok(leading)
    }

    fn set_waiting(&self, why: Option<String>) {
        self.inner.status.send_if_modified(|status| {
            let changed = status.waiting != why;
            status.waiting = why;
            changed
        });
    }

    /// One unit of work: a reconcile page when one is under way (and a step after it
    /// unless the position is behind the pruning), else a step of the outbox.
    pub async fn step(&self) -> Result<Progress, PassagesError> {
        let inner = &self.inner;
        let mut work = inner.work.lock().await;
        let state = inner.passages.passage_follower().await?;
        // At start: a position that never moved (existing rows may predate the outbox),
        // or passages of another embedder; at every step: a position behind pruning.
        let never_moved = work.first_look && state.position == OutboxPosition::START;
        let start_reconcile = work.reconcile.is_none()
            && (never_moved
                || state.behind_pruning()
                || (work.first_look && inner.passages.has_stale_passages(inner.embedder.info()).await?));
        if start_reconcile {
            let settled = inner.search.outbox_settled().await?;
            if never_moved || state.behind_pruning() {
                tracing::info!(position = %state.position, pruned_through = %state.pruned_through, "reconciling passages with the tables");
            } else {
                tracing::info!(embedder = %inner.embedder.info(), "passages of another embedder found: re-embedding them");
            }
            work.reconcile = Some(Reconcile { settled, kind: 0, after: None, started: Instant::now(), rewritten: 0 });
            inner.status.send_modify(|s| s.reconciling = true);
        }
        work.first_look = false;
        if let Some(reconcile) = work.reconcile.as_mut() {
            let finished = self.reconcile_page(reconcile).await?;
            if finished {
                let done = work.reconcile.take().expect("a reconcile is under way");
                self.finish_reconcile(&done).await?;
            }
            let state = inner.passages.passage_follower().await?;
            if state.behind_pruning() {
                self.note_position(state.position);
                return Ok(Progress::More);
            }
            self.follow(state).await?;
            return Ok(Progress::More);
        }
        self.follow(state).await
    }

    /// Steps until nothing is left to do now (tests, benches, catching up offline).
    pub async fn catch_up(&self) -> Result<(), PassagesError> {
        while self.step().await? == Progress::More {}
        Ok(())
    }

    fn note_position(&self, position: OutboxPosition) {
        self.inner.status.send_if_modified(|status| {
            let changed = status.position != Some(position) || status.waiting.is_some();
            status.position = Some(position);
            status.waiting = None;
            changed
        });
    }

    /// Applies the outbox rows after `state`'s position (a batch, cut at the write
    /// budget); whether more may be waiting.
    async fn follow(&self, state: FollowerState) -> Result<Progress, PassagesError> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let batch = settings.outbox_batch.max(1);
        let entries = inner.search.outbox_after(state.position, batch).await?;
        let Some(last) = entries.last() else {
            self.note_position(state.position);
            return Ok(Progress::Idle);
        };
        let full = entries.len() == batch as usize;
        let mut wanted: HashMap<SearchKind, Vec<String>> = HashMap::new();
        let mut seen = HashSet::new();
        for entry in &entries {
            let key = (entry.change.kind, entry.change.object.clone());
            if KINDS.contains(&key.0) && seen.insert(key.clone()) {
                wanted.entry(key.0).or_default().push(key.1);
            }
        }
        let (current, stored) = self.read_objects(&wanted).await?;
        // Take rows in order until the passages to embed pass the budget.
        let mut next = last.position;
        let mut objects: Vec<(SearchKind, String)> = Vec::new();
        let mut taken = HashSet::new();
        let mut plans = Vec::new();
        let mut to_embed = 0usize;
        let mut cut = false;
        for entry in &entries {
            let key = (entry.change.kind, entry.change.object.clone());
            if KINDS.contains(&key.0) && !taken.contains(&key) {
                let plan = self.plan(current.get(&key), stored.get(&key).map(Vec::as_slice));
                if to_embed > 0 && to_embed + plan.missing() > settings.write_budget {
                    cut = true;
                    break;
                }
                to_embed += plan.missing();
                taken.insert(key.clone());
                objects.push(key);
                plans.push(plan);
            }
            next = entry.position;
        }
        let passages = self.embed(plans).await?;
        let write = PassageWrite {
            expected: state.position,
            next,
            follows_outbox: true,
            objects,
            embedder: inner.embedder.info().clone(),
            passages,
        };
        if !self.write(&write).await? {
            return Ok(Progress::More);
        }
        Ok(if full || cut { Progress::More } else { Progress::Idle })
    }

    /// The current content and the stored passages of objects, by (kind, id).
    #[allow(clippy::type_complexity)]
    async fn read_objects(
        &self,
        wanted: &HashMap<SearchKind, Vec<String>>,
    ) -> Result<
        (HashMap<(SearchKind, String), Searchable>, HashMap<(SearchKind, String), Vec<StoredPassage>>),
        PassagesError,
    > {
        let inner = &self.inner;
        let mut current = HashMap::new();
        let mut stored: HashMap<(SearchKind, String), Vec<StoredPassage>> = HashMap::new();
        for (kind, ids) in wanted {
            for object in inner.search.searchables(*kind, ids).await? {
                current.insert((object.kind, object.id.clone()), object);
            }
            for passage in inner.passages.stored_passages(*kind, ids).await? {
                stored.entry((passage.passage.kind, passage.passage.object.clone())).or_default().push(passage);
            }
        }
        Ok((current, stored))
    }

    /// What an object's passages should be, with the vectors that can be kept.
    fn plan(&self, current: Option<&Searchable>, stored: Option<&[StoredPassage]>) -> Plan {
        let info = self.inner.embedder.info();
        let passages = current.map(passages_of).unwrap_or_default();
        let stored = stored.unwrap_or_default();
        let unchanged = stored.len() == passages.len()
            && stored.iter().zip(&passages).all(|(old, new)| old.passage == *new && old.embedder == *info);
        let reusable: HashMap<&str, &Vec<f32>> = stored
            .iter()
            .filter(|old| old.embedder == *info)
            .map(|old| (old.passage.text.as_str(), &old.vector))
            .collect();
        let vectors = passages.iter().map(|p| reusable.get(p.text.as_str()).map(|v| (*v).clone())).collect();
        Plan { passages, vectors, unchanged }
    }

    /// The plans' passages with their vectors: kept ones reused, the others embedded in
    /// batches. A passage the embedder refuses even alone is left out (and logged).
    async fn embed(&self, plans: Vec<Plan>) -> Result<Vec<(Passage, Vec<f32>)>, PassagesError> {
        let batch = self.inner.settings.embed_batch.max(1);
        let mut missing: Vec<(usize, usize)> = Vec::new();
        for (p, plan) in plans.iter().enumerate() {
            for (i, vector) in plan.vectors.iter().enumerate() {
                if vector.is_none() {
                    missing.push((p, i));
                }
            }
        }
        let mut plans = plans;
        for group in missing.chunks(batch) {
            let texts: Vec<String> = group.iter().map(|&(p, i)| plans[p].passages[i].text.clone()).collect();
            let vectors = self.embed_texts(&texts).await?;
            for (&(p, i), vector) in group.iter().zip(vectors) {
                plans[p].vectors[i] = vector;
            }
        }
        Ok(plans
            .into_iter()
            .flat_map(|plan| plan.passages.into_iter().zip(plan.vectors))
            .filter_map(|(passage, vector)| vector.map(|v| (passage, v)))
            .collect())
    }

    /// One vector per text (`None`: the embedder refuses that text even alone).
    async fn embed_texts(&self, texts: &[String]) -> Result<Vec<Option<Vec<f32>>>, PassagesError> {
        let embedder = &self.inner.embedder;
        match embedder.status() {
            EmbedderStatus::Ready => {}
            EmbedderStatus::Loading => return Err(PassagesError::Loading),
            EmbedderStatus::Unavailable(why) => return Err(PassagesError::Embedding(EmbedError::Unavailable(why))),
        }
        let vectors = match embedder.embed(texts).await {
            Ok(vectors) => vectors.into_iter().map(Some).collect::<Vec<_>>(),
            Err(EmbedError::Invalid(reason)) if texts.len() > 1 => {
                tracing::warn!(%reason, texts = texts.len(), "the embedder refused a batch of passages; embedding them one by one");
                let mut one_by_one = Vec::with_capacity(texts.len());
                for text in texts {
                    one_by_one.push(Box::pin(self.embed_texts(std::slice::from_ref(text))).await?.pop().flatten());
                }
                one_by_one
            }
            Err(EmbedError::Invalid(reason)) => {
                tracing::warn!(%reason, "the embedder refused a passage; it is left without a vector");
                vec![None]
            }
            Err(err) => return Err(PassagesError::Embedding(err)),
        };
        let dims = embedder.info().dimensions as usize;
        if vectors.len() != texts.len() || vectors.iter().flatten().any(|v| v.len() != dims) {
            return Err(PassagesError::Embedding(EmbedError::Failed(
                "the embedder answered vectors of the wrong number or dimension".into(),
            )));
        }
        let embedded = vectors.iter().flatten().count() as u64;
        self.inner.status.send_modify(|s| s.embedded += embedded);
        Ok(vectors)
    }

    /// Writes `write`; whether it was written (else the position moved: re-read).
    async fn write(&self, write: &PassageWrite) -> Result<bool, PassagesError> {
        let written = self.inner.passages.write_passages(write).await?;
        self.inner.status.send_modify(|s| {
            if written {
                s.writes += 1;
                s.position = Some(write.next);
                s.waiting = None;
            } else {
                s.lost_races += 1;
            }
        });
        Ok(written)
    }

    /// Reconciles one page of objects; whether the reconcile went through every kind.
    async fn reconcile_page(&self, reconcile: &mut Reconcile) -> Result<bool, PassagesError> {
        let inner = &self.inner;
        let settings = &inner.settings;
        let Some(&kind) = KINDS.get(reconcile.kind) else { return Ok(true) };
        // The position is read before the content: a step written in between refuses
        // this page's write, which is then read again.
        let state = inner.passages.passage_follower().await?;
        let size = settings.reconcile_page.max(1);
        let page = inner.search.searchable_page(kind, reconcile.after.as_deref(), size).await?;
        let full = page.len() == size as usize;
        let ids: Vec<String> = page.iter().map(|o| o.id.clone()).collect();
        let mut stored: HashMap<String, Vec<StoredPassage>> = HashMap::new();
        for passage in inner.passages.stored_passages(kind, &ids).await? {
            stored.entry(passage.passage.object.clone()).or_default().push(passage);
        }
        let mut objects = Vec::new();
        let mut plans = Vec::new();
        let mut to_embed = 0usize;
        let mut taken = page.len();
        for (i, object) in page.iter().enumerate() {
            let plan = self.plan(Some(object), stored.get(&object.id).map(Vec::as_slice));
            if to_embed > 0 && to_embed + plan.missing() > settings.write_budget {
                taken = i;
                break;
            }
            to_embed += plan.missing();
            if !plan.unchanged {
                objects.push((kind, object.id.clone()));
                plans.push(plan);
            }
        }
        // Passages of objects in the range this page covers that the tables no longer
        // have (the last page of a kind covers everything after it).
        let through = if taken == page.len() && !full {
            None
        } else {
            // `taken` ≥ 1 here: the first object is always taken, and a full page is not empty.
            page.get(taken.saturating_sub(1)).map(|o| o.id.as_str())
        };
        let present: HashSet<&str> = ids.iter().map(String::as_str).collect();
        for id in inner.passages.passage_objects_between(kind, reconcile.after.as_deref(), through).await? {
            if !present.contains(id.as_str()) {
                objects.push((kind, id));
            }
        }
        if !objects.is_empty() {
            let rewritten = objects.len();
            let passages = self.embed(plans).await?;
            let write = PassageWrite {
                expected: state.position,
                next: state.position,
                follows_outbox: false,
                objects,
                embedder: inner.embedder.info().clone(),
                passages,
            };
            if !self.write(&write).await? {
                return Ok(false);
            }
            reconcile.rewritten += rewritten;
        }
        match through {
            Some(id) => reconcile.after = Some(id.to_owned()),
            None => {
                reconcile.kind += 1;
                reconcile.after = None;
            }
        }
        Ok(reconcile.kind == KINDS.len())
    }

    /// Moves the position to where the outbox had settled when the reconcile began
    /// (unless a step already passed it).
    async fn finish_reconcile(&self, reconcile: &Reconcile) -> Result<(), PassagesError> {
        loop {
            let state = self.inner.passages.passage_follower().await?;
            if state.position >= reconcile.settled {
                break;
            }
            let write = PassageWrite {
                expected: state.position,
                next: reconcile.settled,
                follows_outbox: false,
                objects: Vec::new(),
                embedder: self.inner.embedder.info().clone(),
                passages: Vec::new(),
            };
            if self.write(&write).await? {
                break;
            }
        }
        self.inner.status.send_modify(|s| {
            s.reconciling = false;
            s.reconciles += 1;
        });
        tracing::info!(
            objects = reconcile.rewritten,
            position = %reconcile.settled,
            elapsed_ms = reconcile.started.elapsed().as_millis() as u64,
            "passages reconciled with the tables"
        );
        Ok(())
    }
}

/// An object's passages as they should be.
#[derive(Debug)]
struct Plan {
    passages: Vec<Passage>,
    /// Each passage's vector when one can be kept.
    vectors: Vec<Option<Vec<f32>>>,
    /// Whether the stored passages are exactly these, of the configured embedder.
    unchanged: bool,
}

impl Plan {
    /// How many passages need embedding.
    fn missing(&self) -> usize {
        self.vectors.iter().filter(|v| v.is_none()).count()
    }
}

//! Background jobs: the use-cases over the [`JobStore`] port, the worker that runs them,
//! and the recurring schedule (the hold-expiry sweep).
//!
//! Holds only ports (`Arc<dyn JobStore>`, `Arc<dyn Clock>`). A [`Worker`] claims due jobs
//! under a lease, runs each with the [`JobHandler`] registered for its kind, extends the
//! lease while the handler runs (a third of the lease), and completes or fails the job
//! only while it still holds the lease. Several `maestro serve` processes on one Postgres
//! run side by side: the store hands each job to one worker (`FOR UPDATE SKIP LOCKED`),
//! and a worker that dies leaves its lease to expire, after which another takes the job
//! over. Recurring work is enqueued by every replica under a key per time slot
//! (`credits.expire_holds:<slot>`), so it runs once per slot whatever the replica count.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use maestro_core::jobs::backoff;
use maestro_core::{Clock, Enqueued, InvalidJob, Job, JobFailure, JobPage, JobQuery, JobStore, NewJob, StoreError};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use crate::random::random_bytes;

/// The kind of the hold-expiry sweep.
pub const EXPIRE_HOLDS: &str = "credits.expire_holds";
/// The kind of the retention sweep: deletes jobs finished more than [`RETENTION`] ago.
pub const PRUNE: &str = "jobs.prune";
/// How long finished jobs (and so their keys) are kept.
pub const RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);
/// A harmless built-in kind: succeeds after sleeping `sleep_ms` (payload
/// `{"sleep_ms": N}`, at most ten minutes; `{}` succeeds at once). Used to check a
/// deployment's workers end to end.
pub const NOOP: &str = "noop";

/// Why a handler did not finish its job.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// Worth another attempt (after a backoff), while attempts remain.
    #[error("{0}")]
    Retry(String),
    /// Never worth another attempt: the job fails for good.
    #[error("{0}")]
    Permanent(String),
}

/// Runs jobs of one kind.
#[async_trait]
pub trait JobHandler: Send + Sync {
    /// Does the job's work. May run more than once for one job (a worker that died after
    /// finishing but before recording it), so it must be idempotent.
    async fn handle(&self, job: &Job) -> Result<(), JobError>;
}

/// Handlers by kind.
#[derive(Clone, Default)]
pub struct Registry {
    handlers: HashMap<String, Arc<dyn JobHandler>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut kinds: Vec<&String> = self.handlers.keys().collect();
        kinds.sort();
        f.debug_struct("Registry").field("kinds", &kinds).finish()
    }
}

impl Registry {
    /// Registers the handler of `kind` (replacing an earlier one).
    pub fn register(mut self, kind: &str, handler: Arc<dyn JobHandler>) -> Self {
        self.handlers.insert(kind.to_owned(), handler);
        self
    }

    /// The built-in kinds: [`EXPIRE_HOLDS`] over `credits`, [`PRUNE`] over `jobs`, and
    /// [`NOOP`].
    pub fn builtin(credits: Arc<crate::credits::Credits>, jobs: Arc<dyn JobStore>, clock: Arc<dyn Clock>) -> Self {
        Self::default()
            .register(EXPIRE_HOLDS, Arc::new(ExpireHolds(credits)))
            .register(PRUNE, Arc::new(Prune { jobs, clock }))
            .register(NOOP, Arc::new(Noop))
    }

    fn get(&self, kind: &str) -> Option<&Arc<dyn JobHandler>> {
        self.handlers.get(kind)
    }
}

/// The job use-cases: enqueue and list.
#[derive(Debug, Clone)]
pub struct Jobs {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
}

impl Jobs {
    /// The use-cases over the job port and a clock.
    pub fn new(store: Arc<dyn JobStore>, clock: Arc<dyn Clock>) -> Self {
        Self { store, clock }
    }

    /// Enqueues a job, or returns the one already stored under its key.
    pub async fn enqueue(&self, job: &NewJob) -> Result<Enqueued, StoreError> {
        self.store.enqueue(job, self.clock.now()).await
    }

    /// A page of jobs, newest first.
    pub async fn list(&self, query: &JobQuery) -> Result<JobPage, StoreError> {
        self.store.jobs(query).await
    }

    /// Enqueues `kind` once per slot of `every` until `stop`: every replica runs this,
    /// and the key `<kind>:<slot>` makes the job exist once per slot.
    pub fn schedule_every(&self, kind: &'static str, every: Duration, stop: CancellationToken) {
        let jobs = self.clone();
        let every_ms = i64::try_from(every.as_millis()).unwrap_or(i64::MAX).max(1_000);
        tokio::spawn(async move {
            loop {
                let now = jobs.clock.now();
                let slot = now.timestamp_millis() / every_ms;
                match slot_job(kind, slot, every_ms) {
                    Ok(job) => {
                        if let Err(err) = jobs.enqueue(&job).await {
                            tracing::warn!(error = %err, kind, "cannot enqueue recurring job");
                        }
                    }
                    Err(err) => tracing::error!(error = %err, kind, "invalid recurring job"),
                }
                let next = (slot + 1) * every_ms - now.timestamp_millis();
                let wait = Duration::from_millis(u64::try_from(next).unwrap_or(0)) + Duration::from_millis(50);
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(wait) => {}
                }
            }
        });
    }
}

/// The job of `kind` for time slot `slot` (of `every_ms` milliseconds), due at its start.
fn slot_job(kind: &str, slot: i64, every_ms: i64) -> Result<NewJob, InvalidJob> {
    let start = DateTime::from_timestamp_millis(slot.saturating_mul(every_ms)).unwrap_or_default();
    NewJob::new(kind, &format!("{kind}:{}", slot.saturating_mul(every_ms) / 1000), &serde_json::json!({}), start)?
        .with_max_attempts(3)
}

/// How a worker runs.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// This worker's name in `lease_owner` (unique per process).
    pub owner: String,
    /// Jobs run at once.
    pub concurrency: usize,
    /// How long a claim holds a job before another worker may take it over; the
    /// worker extends it every third of this while the handler runs.
    pub lease: Duration,
    /// How often an idle worker looks for due jobs.
    pub poll_interval: Duration,
    /// The first retry's delay (doubled per attempt, with jitter).
    pub retry_base: Duration,
    /// The longest retry delay.
    pub retry_cap: Duration,
    /// How long shutdown waits for running jobs before leaving them to their leases.
    pub shutdown_grace: Duration,
}

impl WorkerSettings {
    /// Defaults with a fresh owner name (`<pid>-<random>`).
    pub fn new(concurrency: usize, lease: Duration, poll_interval: Duration) -> Self {
        let suffix: [u8; 4] = random_bytes();
        Self {
            owner: format!("{}-{}", std::process::id(), hex::encode(suffix)),
            concurrency: concurrency.max(1),
            lease,
            poll_interval,
            retry_base: Duration::from_secs(1),
            retry_cap: Duration::from_secs(300),
            shutdown_grace: Duration::from_secs(10),
        }
    }
}

/// Claims and runs jobs until stopped.
#[derive(Debug)]
pub struct Worker {
    store: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
    registry: Registry,
    settings: WorkerSettings,
}

impl Worker {
    /// A worker over the job port.
    pub fn new(store: Arc<dyn JobStore>, clock: Arc<dyn Clock>, registry: Registry, settings: WorkerSettings) -> Self {
        Self { store, clock, registry, settings }
    }

    /// Runs the poll loop on the runtime until `stop`; then stops claiming, waits up to
    /// the shutdown grace for running jobs, and leaves the rest to their leases.
    pub fn spawn(self, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        tokio::spawn(Arc::new(self).run(stop))
    }

    async fn run(self: Arc<Self>, stop: CancellationToken) {
        tracing::info!(
            owner = %self.settings.owner,
            concurrency = self.settings.concurrency,
            lease = ?self.settings.lease,
            "job worker started"
        );
        let permits = Arc::new(Semaphore::new(self.settings.concurrency));
        let mut running = JoinSet::new();
        while !stop.is_cancelled() {
            while let Some(done) = running.try_join_next() {
                report_panic(done);
            }
            let free = permits.available_permits();
            let mut claimed = 0;
            if free > 0 {
                match self.claim(free).await {
                    Ok(jobs) => {
                        claimed = jobs.len();
                        for job in jobs {
                            let permit = permits.clone().acquire_owned().await.expect("the semaphore is never closed");
                            let span =
                                tracing::info_span!("job", id = job.id, kind = %job.kind, attempt = job.attempts);
                            running.spawn(self.clone().run_job(job, permit).instrument(span));
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot claim jobs"),
                }
            }
            if claimed > 0 && claimed == free {
                // Every free slot was filled: more may be due; claim again when one frees.
                tokio::select! {
                    () = stop.cancelled() => {}
                    Some(done) = running.join_next() => report_panic(done),
                }
                continue;
            }
            tokio::select! {
                () = stop.cancelled() => {}
                () = tokio::time::sleep(self.settings.poll_interval) => {}
                Some(done) = running.join_next(), if !running.is_empty() && free == 0 => report_panic(done),
            }
        }
        let drained = tokio::time::timeout(self.settings.shutdown_grace, async {
            while let Some(done) = running.join_next().await {
                report_panic(done);
            }
        })
        .await;
        if drained.is_err() {
            tracing::warn!(left = running.len(), "jobs still running at shutdown are left to their leases");
            running.abort_all();
        }
        tracing::info!(owner = %self.settings.owner, "job worker stopped");
    }

    async fn claim(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let now = self.clock.now();
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        self.store.claim(&self.settings.owner, limit, self.lease_from(now), now).await
    }

    fn lease_from(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        now + chrono::Duration::from_std(self.settings.lease).unwrap_or(chrono::Duration::MAX)
    }

    /// Runs one claimed job while extending its lease, then records the outcome.
    async fn run_job(self: Arc<Self>, job: Job, _permit: OwnedSemaphorePermit) {
        let owner = self.settings.owner.as_str();
        let work = async {
            match self.registry.get(&job.kind) {
                Some(handler) => handler.handle(&job).await,
                None => Err(JobError::Retry(format!("no handler for job kind `{}` on this worker", job.kind))),
            }
        };
        let heartbeat = async {
            loop {
                tokio::time::sleep(self.settings.lease / 3).await;
                let now = self.clock.now();
                match self.store.heartbeat(job.id, owner, self.lease_from(now), now).await {
                    Ok(true) => {}
                    Ok(false) => return,
                    Err(err) => tracing::warn!(error = %err, "cannot extend the job's lease"),
                }
            }
        };
        let outcome = tokio::select! {
            outcome = work => Some(outcome),
            () = heartbeat => None,
        };
        let now = self.clock.now();
        let recorded = match outcome {
            None => {
                tracing::warn!("lost the job's lease to another worker; stopped running it");
                return;
            }
            Some(Ok(())) => self.store.complete(job.id, owner, now).await.map(|done| done.then_some("succeeded")),
            Some(Err(err)) => {
                let retry_at = match &err {
                    JobError::Retry(_) => {
                        let random = u64::from_le_bytes(random_bytes());
                        let delay = backoff(job.attempts, self.settings.retry_base, self.settings.retry_cap, random);
                        Some(now + chrono::Duration::from_std(delay).unwrap_or(chrono::Duration::MAX))
                    }
                    JobError::Permanent(_) => None,
                };
                let failure = JobFailure { error: err.to_string(), retry_at };
                self.store.fail(job.id, owner, &failure, now).await.map(|state| state.map(|s| s.as_str()))
            }
        };
        match recorded {
            Ok(Some(state)) => tracing::debug!(state, "job finished"),
            Ok(None) => tracing::warn!("the job's lease was taken over; its outcome is not recorded"),
            Err(err) => tracing::warn!(error = %err, "cannot record the job's outcome"),
        }
    }
}

fn report_panic(done: Result<(), tokio::task::JoinError>) {
    if let Err(err) = done
        && err.is_panic()
    {
        tracing::error!("a job handler panicked; the job is retried when its lease expires");
    }
}

/// [`EXPIRE_HOLDS`]: expires credit holds past their time.
struct ExpireHolds(Arc<crate::credits::Credits>);

#[async_trait]
impl JobHandler for ExpireHolds {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        match self.0.expire_holds().await {
            Ok(0) => Ok(()),
            Ok(expired) => {
                tracing::info!(expired, "expired credit holds");
                Ok(())
            }
            Err(err) => Err(JobError::Retry(format!("cannot expire credit holds: {err}"))),
        }
    }
}

/// [`PRUNE`]: deletes jobs finished more than [`RETENTION`] ago, in batches.
struct Prune {
    jobs: Arc<dyn JobStore>,
    clock: Arc<dyn Clock>,
}

#[async_trait]
impl JobHandler for Prune {
    async fn handle(&self, _job: &Job) -> Result<(), JobError> {
        const BATCH: u32 = 1000;
        let cutoff = self.clock.now() - chrono::Duration::from_std(RETENTION).unwrap_or(chrono::Duration::MAX);
        let mut pruned = 0;
        loop {
            let deleted = self
                .jobs
                .prune(cutoff, BATCH)
                .await
                .map_err(|err| JobError::Retry(format!("cannot prune finished jobs: {err}")))?;
            pruned += deleted;
            if deleted < u64::from(BATCH) {
                break;
            }
        }
        if pruned > 0 {
            tracing::info!(pruned, "pruned finished jobs");
        }
        Ok(())
    }
}

/// [`NOOP`]: sleeps `sleep_ms`, then succeeds.
struct Noop;

/// The longest a [`NOOP`] job sleeps.
const NOOP_MAX_SLEEP_MS: u64 = 10 * 60 * 1000;

#[async_trait]
impl JobHandler for Noop {
    async fn handle(&self, job: &Job) -> Result<(), JobError> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Payload {
            #[serde(default)]
            sleep_ms: u64,
        }
        let payload: Payload = serde_json::from_str(&job.payload)
            .map_err(|e| JobError::Permanent(format!("invalid noop payload: {e}")))?;
        if payload.sleep_ms > NOOP_MAX_SLEEP_MS {
            return Err(JobError::Permanent(format!("sleep_ms {} exceeds {NOOP_MAX_SLEEP_MS}", payload.sleep_ms)));
        }
        tokio::time::sleep(Duration::from_millis(payload.sleep_ms)).await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recurring_jobs_are_keyed_by_their_slot() {
        let job = slot_job(EXPIRE_HOLDS, 10, 30_000).expect("valid");
        assert_eq!(job.key, "credits.expire_holds:300");
        assert_eq!(job.run_at.timestamp(), 300);
        assert_eq!(slot_job(EXPIRE_HOLDS, 10, 30_000).expect("valid"), job, "every replica builds the same job");
        assert_ne!(slot_job(EXPIRE_HOLDS, 11, 30_000).expect("valid").key, job.key);
    }
}

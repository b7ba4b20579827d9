//! Background jobs: what the job store keeps, how a new job is validated, and the
//! retry rule (exponential backoff with jitter).
//!
//! A job is enqueued once per key (enqueueing an existing key returns the existing
//! job), claimed by one worker at a time under a lease, and finished by the worker that
//! holds the lease: `succeeded`; `failed` (the handler refused it for good); or back to
//! `queued` with a later `run_at` after a failed attempt, until `max_attempts`, then
//! `dead`. A worker that dies leaves its lease to expire; another worker then takes the
//! job over (another attempt). `cancelled` jobs never run.

use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for `run_at` and a worker.
    Queued,
    /// Held by a worker until its lease expires.
    Running,
    /// Done.
    Succeeded,
    /// Its handler refused it for good (no retry).
    Failed,
    /// Every attempt failed.
    Dead,
    /// Cancelled before it ran.
    Cancelled,
}

impl JobState {
    /// Every state, in the order above.
    pub const ALL: [JobState; 6] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Dead,
        JobState::Cancelled,
    ];

    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Dead => "dead",
            JobState::Cancelled => "cancelled",
        }
    }

    /// A state by its stored name.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == name)
    }

    /// Whether the job will never run again.
    pub fn is_final(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Failed | JobState::Dead | JobState::Cancelled)
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a new job was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidJob {
    /// The key is empty, longer than 200 characters, or not printable ASCII.
    #[error("invalid job key: must be 1 to 200 printable ascii characters")]
    Key,
    /// The kind is not 1 to 64 of `a-z0-9._-`.
    #[error("invalid job kind `{0}`: must be 1 to 64 of a-z, 0-9, `.`, `_`, `-`")]
    Kind(String),
    /// The payload is not JSON or too large.
    #[error("invalid job payload: {0}")]
    Payload(String),
    /// `max_attempts` must be 1 to 100.
    #[error("invalid max_attempts {0}: must be 1 to 100")]
    Attempts(u32),
}

/// The largest payload a job carries (JSON text).
pub const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Attempts a job gets unless it asks otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 5;

/// A job to enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    /// Unique key: enqueueing it again returns the job already stored.
    pub key: String,
    /// Which handler runs it.
    pub kind: String,
    /// JSON text handed to the handler.
    pub payload: String,
    /// Not before this time.
    pub run_at: DateTime<Utc>,
    /// Attempts before the job is `dead`.
    pub max_attempts: u32,
}

impl NewJob {
    /// A validated job due at `run_at` with [`DEFAULT_MAX_ATTEMPTS`].
    pub fn new(kind: &str, key: &str, payload: &serde_json::Value, run_at: DateTime<Utc>) -> Result<Self, InvalidJob> {
        let kind_ok = (1..=64).contains(&kind.len())
            && kind.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'_' | b'-'));
        if !kind_ok {
            return Err(InvalidJob::Kind(kind.chars().take(64).collect()));
        }
        if !(1..=200).contains(&key.len()) || !key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') {
            return Err(InvalidJob::Key);
        }
        let payload = payload.to_string();
        if payload.len() > MAX_PAYLOAD_BYTES {
            return Err(InvalidJob::Payload(format!("{} bytes, at most {MAX_PAYLOAD_BYTES}", payload.len())));
        }
        Ok(Self { key: key.to_owned(), kind: kind.to_owned(), payload, run_at, max_attempts: DEFAULT_MAX_ATTEMPTS })
    }

    /// The same job with another attempt budget.
    pub fn with_max_attempts(mut self, max_attempts: u32) -> Result<Self, InvalidJob> {
        if !(1..=100).contains(&max_attempts) {
            return Err(InvalidJob::Attempts(max_attempts));
        }
        self.max_attempts = max_attempts;
        Ok(self)
    }
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Job {
    /// Store-assigned, increasing.
    pub id: i64,
    /// The idempotency key.
    pub key: String,
    /// Which handler runs it.
    pub kind: String,
    /// JSON text.
    pub payload: String,
    /// Where it is.
    pub state: JobState,
    /// Attempts started so far (a takeover after an expired lease counts as one).
    pub attempts: u32,
    /// Attempts before `dead`.
    pub max_attempts: u32,
    /// Not run before this time.
    pub run_at: DateTime<Utc>,
    /// The worker holding it (running), or that last held it.
    pub lease_owner: Option<String>,
    /// When the running worker's lease ends.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// The last failed attempt's error.
    pub last_error: Option<String>,
    /// Enqueued at.
    pub created_at: DateTime<Utc>,
    /// Last changed at.
    pub updated_at: DateTime<Utc>,
}

/// The outcome of an enqueue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// The stored job (the earlier one when the key existed).
    pub job: Job,
    /// Whether this call created it.
    pub created: bool,
}

/// How an attempt failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobFailure {
    /// What went wrong (kept as `last_error`).
    pub error: String,
    /// When to try again; `None` fails the job for good. A job out of attempts is `dead`
    /// whatever this says.
    pub retry_at: Option<DateTime<Utc>>,
}

/// A filter and page of the job listing, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobQuery {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only jobs of this kind.
    pub kind: Option<String>,
    /// Only jobs older than this cursor (`next` of the previous page).
    pub before: Option<String>,
    /// Page size (1 to 500, default 50).
    pub limit: Option<u32>,
}

impl JobQuery {
    /// The page size after defaults and bounds.
    pub fn effective_limit(&self) -> u32 {
        self.limit.unwrap_or(50).clamp(1, 500)
    }
}

/// A page of jobs, newest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPage {
    /// The jobs.
    pub jobs: Vec<Job>,
    /// Cursor of the next (older) page; `None` on the last page.
    pub next: Option<String>,
}

/// The delay before retry `attempts + 1` after `attempts` failed attempts: `base`
/// doubled per attempt, capped at `cap`, with "equal jitter" (a uniformly random half of
/// the delay, from `random`) so that jobs that failed together do not retry together.
pub fn backoff(attempts: u32, base: Duration, cap: Duration, random: u64) -> Duration {
    let exponent = attempts.saturating_sub(1).min(30);
    let delay = base.saturating_mul(1u32 << exponent).min(cap);
    let half = delay / 2;
    let half_ms = u64::try_from(half.as_millis()).unwrap_or(u64::MAX);
    let jitter = if half_ms == 0 { 0 } else { random % (half_ms + 1) };
    half + Duration::from_millis(jitter)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_per_attempt_within_jitter_and_is_capped() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(60);
        for attempts in 1..=10u32 {
            let full = (base * 2u32.pow(attempts - 1)).min(cap);
            for random in [0, 1, 499, 12_345, u64::MAX] {
                let delay = backoff(attempts, base, cap, random);
                assert!(
                    delay >= full / 2 && delay <= full,
                    "attempt {attempts}: {delay:?} outside {full:?}/2..{full:?}"
                );
            }
        }
        assert_eq!(backoff(1, base, cap, 0), Duration::from_millis(500));
        assert_eq!(backoff(1, base, cap, 500), Duration::from_secs(1));
        assert_ne!(backoff(3, base, cap, 1), backoff(3, base, cap, 2), "jitter spreads retries");
        assert!(backoff(u32::MAX, base, cap, u64::MAX) <= cap);
    }

    #[test]
    fn new_jobs_validate_kind_key_payload_and_attempts() {
        let now = DateTime::from_timestamp(0, 0).expect("epoch");
        let job = NewJob::new("credits.expire_holds", "k:1", &serde_json::json!({}), now).expect("valid");
        assert_eq!((job.payload.as_str(), job.max_attempts), ("{}", DEFAULT_MAX_ATTEMPTS));
        assert!(matches!(NewJob::new("Bad Kind", "k", &serde_json::json!(null), now), Err(InvalidJob::Kind(_))));
        assert_eq!(NewJob::new("noop", "", &serde_json::json!(null), now), Err(InvalidJob::Key));
        assert_eq!(NewJob::new("noop", "a\nb", &serde_json::json!(null), now), Err(InvalidJob::Key));
        let big = serde_json::json!("x".repeat(MAX_PAYLOAD_BYTES));
        assert!(matches!(NewJob::new("noop", "k", &big, now), Err(InvalidJob::Payload(_))));
        assert_eq!(job.clone().with_max_attempts(0), Err(InvalidJob::Attempts(0)));
        assert_eq!(job.with_max_attempts(2).map(|j| j.max_attempts), Ok(2));
    }

    #[test]
    fn states_round_trip_their_stored_names() {
        for state in JobState::ALL {
            assert_eq!(JobState::parse(state.as_str()), Some(state));
        }
        assert_eq!(JobState::parse("paused"), None);
        assert!(JobState::Dead.is_final() && !JobState::Queued.is_final() && !JobState::Running.is_final());
    }
}

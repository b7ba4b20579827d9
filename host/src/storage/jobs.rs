//! [`maestro_core::JobStore`]: the same SQL on both backends, expanded per store type by
//! [`impl_job_queries!`] (like `shared.rs`). The backend supplies `begin_write` (SQLite:
//! `BEGIN IMMEDIATE`, which excludes every other writer) and the lock clause of the
//! claim's inner select (` FOR UPDATE SKIP LOCKED` on Postgres: concurrent claimers
//! skip each other's rows instead of waiting, and each row goes to one of them).

use chrono::{DateTime, Utc};
use maestro_core::{Job, JobState, StoreError};

/// Columns of `jobs`, read by name into [`JobRow`].
macro_rules! job_columns {
    () => {
        "id, job_key, kind, payload, state, attempts, max_attempts, run_at, lease_owner, lease_expires_at, \
         last_error, created_at, updated_at"
    };
}
pub(super) use job_columns;

/// A raw `jobs` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct JobRow {
    id: i64,
    job_key: String,
    kind: String,
    payload: String,
    state: String,
    attempts: i64,
    max_attempts: i64,
    run_at: DateTime<Utc>,
    lease_owner: Option<String>,
    lease_expires_at: Option<DateTime<Utc>>,
    last_error: Option<String>,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<JobRow> for Job {
    type Error = StoreError;

    fn try_from(row: JobRow) -> Result<Self, StoreError> {
        let corrupt = |what: &str| StoreError::Corrupt(format!("job {}: {what}", row.id));
        Ok(Job {
            state: JobState::parse(&row.state).ok_or_else(|| corrupt(&format!("state {}", row.state)))?,
            attempts: u32::try_from(row.attempts).map_err(|_| corrupt("attempts"))?,
            max_attempts: u32::try_from(row.max_attempts).map_err(|_| corrupt("max_attempts"))?,
            id: row.id,
            key: row.job_key,
            kind: row.kind,
            payload: row.payload,
            run_at: row.run_at,
            lease_owner: row.lease_owner,
            lease_expires_at: row.lease_expires_at,
            last_error: row.last_error,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// Rows to jobs, in order.
pub(super) fn jobs_from_rows(rows: Vec<JobRow>) -> Result<Vec<Job>, StoreError> {
    rows.into_iter().map(Job::try_from).collect()
}

/// The listing cursor (an id: the next page holds older jobs).
pub(super) fn parse_before(cursor: Option<&str>) -> Result<i64, StoreError> {
    cursor.map_or(Ok(i64::MAX), |c| c.parse::<i64>().map_err(|_| StoreError::NotFound(format!("cursor `{c}`"))))
}

/// Implements [`maestro_core::JobStore`] for a store type with a `pool` field and a
/// `begin_write` method; `$lock` ends the claim's inner select.
macro_rules! impl_job_queries {
    ($store:ty, $lock:literal) => {
        impl $store {
            /// Inserts the job unless its key exists; either way the stored job.
            async fn job_enqueue(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                job: &maestro_core::NewJob,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Enqueued, maestro_core::StoreError> {
                let insert = concat!(
                    "INSERT INTO jobs (job_key, kind, payload, state, attempts, max_attempts, run_at, created_at, ",
                    "updated_at) VALUES ($1, $2, $3, 'queued', 0, $4, $5, $6, $6) ",
                    "ON CONFLICT (job_key) DO NOTHING RETURNING ",
                    super::jobs::job_columns!()
                );
                let inserted = sqlx::query_as::<_, super::jobs::JobRow>(insert)
                    .bind(&job.key)
                    .bind(&job.kind)
                    .bind(&job.payload)
                    .bind(i64::from(job.max_attempts))
                    .bind(job.run_at)
                    .bind(now)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!("job {}", job.key)))?;
                if let Some(row) = inserted {
                    return Ok(maestro_core::Enqueued { job: row.try_into()?, created: true });
                }
                let select = concat!("SELECT ", super::jobs::job_columns!(), " FROM jobs WHERE job_key = $1");
                let row = sqlx::query_as::<_, super::jobs::JobRow>(select)
                    .bind(&job.key)
                    .fetch_optional(&mut *conn)
                    .await
                    .map_err(super::backend_err)?
                    .ok_or_else(|| maestro_core::StoreError::NotFound(format!("job {}", job.key)))?;
                Ok(maestro_core::Enqueued { job: row.try_into()?, created: false })
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::JobStore for $store {
            async fn enqueue(
                &self,
                job: &maestro_core::NewJob,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Enqueued, maestro_core::StoreError> {
                let mut conn = self.pool.acquire().await.map_err(super::backend_err)?;
                Self::job_enqueue(&mut conn, job, now).await
            }

            async fn claim(
                &self,
                owner: &str,
                limit: u32,
                lease_until: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Vec<maestro_core::Job>, maestro_core::StoreError> {
                let be = super::backend_err;
                // An idle poll stays a read: no write lock (SQLite) or row locks when
                // nothing is due.
                let due = sqlx::query_scalar::<_, i64>(
                    "SELECT id FROM jobs WHERE (state = 'queued' AND run_at <= $1) \
                     OR (state = 'running' AND lease_expires_at < $1) LIMIT 1",
                )
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(be)?;
                if due.is_none() {
                    return Ok(Vec::new());
                }
                let mut tx = self.begin_write().await?;
                // A job whose worker died on its last attempt gets no further attempt.
                let bury = concat!(
                    "UPDATE jobs SET state = 'dead', last_error = 'lease expired on the last attempt', ",
                    "lease_expires_at = NULL, updated_at = $1 WHERE id IN (SELECT id FROM jobs ",
                    "WHERE state = 'running' AND lease_expires_at < $1 AND attempts >= max_attempts LIMIT 100",
                    $lock,
                    ")"
                );
                sqlx::query(bury).bind(now).execute(&mut *tx).await.map_err(be)?;
                let claim = concat!(
                    "UPDATE jobs SET state = 'running', attempts = attempts + 1, lease_owner = $1, ",
                    "lease_expires_at = $2, updated_at = $3 WHERE id IN (SELECT id FROM jobs ",
                    "WHERE (state = 'queued' AND run_at <= $3) ",
                    "OR (state = 'running' AND lease_expires_at < $3 AND attempts < max_attempts) ",
                    "ORDER BY run_at, id LIMIT $4",
                    $lock,
                    ") RETURNING ",
                    super::jobs::job_columns!()
                );
                let rows = sqlx::query_as::<_, super::jobs::JobRow>(claim)
                    .bind(owner)
                    .bind(lease_until)
                    .bind(now)
                    .bind(i64::from(limit))
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(be)?;
                tx.commit().await.map_err(be)?;
                let mut jobs = super::jobs::jobs_from_rows(rows)?;
                jobs.sort_by(|a, b| (a.run_at, a.id).cmp(&(b.run_at, b.id)));
                Ok(jobs)
            }

            async fn heartbeat(
                &self,
                id: i64,
                owner: &str,
                lease_until: chrono::DateTime<chrono::Utc>,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, maestro_core::StoreError> {
                let updated = sqlx::query(
                    "UPDATE jobs SET lease_expires_at = $3, updated_at = $4 \
                     WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(lease_until)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?;
                Ok(updated.rows_affected() == 1)
            }

            async fn complete(
                &self,
                id: i64,
                owner: &str,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, maestro_core::StoreError> {
                let updated = sqlx::query(
                    "UPDATE jobs SET state = 'succeeded', lease_expires_at = NULL, updated_at = $3 \
                     WHERE id = $1 AND state = 'running' AND lease_owner = $2",
                )
                .bind(id)
                .bind(owner)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?;
                Ok(updated.rows_affected() == 1)
            }

            async fn fail(
                &self,
                id: i64,
                owner: &str,
                failure: &maestro_core::JobFailure,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<maestro_core::JobState>, maestro_core::StoreError> {
                let state = sqlx::query_scalar::<_, String>(
                    "UPDATE jobs SET state = CASE WHEN $4 IS NULL THEN 'failed' \
                     WHEN attempts >= max_attempts THEN 'dead' ELSE 'queued' END, \
                     run_at = COALESCE($4, run_at), last_error = $3, lease_expires_at = NULL, updated_at = $5 \
                     WHERE id = $1 AND state = 'running' AND lease_owner = $2 RETURNING state",
                )
                .bind(id)
                .bind(owner)
                .bind(&failure.error)
                .bind(failure.retry_at)
                .bind(now)
                .fetch_optional(&self.pool)
                .await
                .map_err(super::backend_err)?;
                state
                    .map(|s| {
                        maestro_core::JobState::parse(&s)
                            .ok_or_else(|| maestro_core::StoreError::Corrupt(format!("job {id}: state {s}")))
                    })
                    .transpose()
            }

            async fn cancel(
                &self,
                id: i64,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, maestro_core::StoreError> {
                let updated = sqlx::query(
                    "UPDATE jobs SET state = 'cancelled', updated_at = $2 WHERE id = $1 AND state = 'queued'",
                )
                .bind(id)
                .bind(now)
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?;
                Ok(updated.rows_affected() == 1)
            }

            async fn prune(
                &self,
                finished_before: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<u64, maestro_core::StoreError> {
                let deleted = sqlx::query(
                    "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs \
                     WHERE state IN ('succeeded', 'failed', 'dead', 'cancelled') AND updated_at < $1 \
                     ORDER BY id LIMIT $2)",
                )
                .bind(finished_before)
                .bind(i64::from(limit))
                .execute(&self.pool)
                .await
                .map_err(super::backend_err)?;
                Ok(deleted.rows_affected())
            }

            async fn job(&self, id: i64) -> Result<Option<maestro_core::Job>, maestro_core::StoreError> {
                let sql = concat!("SELECT ", super::jobs::job_columns!(), " FROM jobs WHERE id = $1");
                sqlx::query_as::<_, super::jobs::JobRow>(sql)
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::Job::try_from)
                    .transpose()
            }

            async fn job_by_key(&self, key: &str) -> Result<Option<maestro_core::Job>, maestro_core::StoreError> {
                let sql = concat!("SELECT ", super::jobs::job_columns!(), " FROM jobs WHERE job_key = $1");
                sqlx::query_as::<_, super::jobs::JobRow>(sql)
                    .bind(key)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::Job::try_from)
                    .transpose()
            }

            async fn jobs(
                &self,
                query: &maestro_core::JobQuery,
            ) -> Result<maestro_core::JobPage, maestro_core::StoreError> {
                let sql = concat!(
                    "SELECT ",
                    super::jobs::job_columns!(),
                    " FROM jobs WHERE ($1 IS NULL OR state = $1) AND ($2 IS NULL OR kind = $2) AND id < $3 ",
                    "ORDER BY id DESC LIMIT $4"
                );
                let limit = query.effective_limit();
                let rows = sqlx::query_as::<_, super::jobs::JobRow>(sql)
                    .bind(query.state.map(|s| s.as_str()))
                    .bind(query.kind.as_deref())
                    .bind(super::jobs::parse_before(query.before.as_deref())?)
                    .bind(i64::from(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                let jobs = super::jobs::jobs_from_rows(rows)?;
                let next = (jobs.len() == limit as usize).then(|| jobs.last().map(|j| j.id.to_string())).flatten();
                Ok(maestro_core::JobPage { jobs, next })
            }
        }
    };
}

pub(super) use impl_job_queries;

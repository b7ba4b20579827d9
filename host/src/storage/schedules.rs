//! [`maestro_core::ScheduleStore`] and the schedule half of the unit of work
//! (`schedule_advance`: the compare-and-set of `next_fire_at`; `schedule_record_fire`:
//! a fire recorded once). The same SQL on both backends, expanded per store type by
//! [`impl_schedule_queries!`].

use chrono::{DateTime, Utc};
use maestro_core::run::{RunId, SessionId};
use maestro_core::schedule::{CatchUp, Schedule, ScheduleFire, ScheduleId, ScheduleTarget};
use maestro_core::{Role, StoreError, TenantId};

/// Columns of `schedules`, read by name into [`ScheduleRow`].
macro_rules! schedule_columns {
    () => {
        "id, tenant_id, cron, time_zone, target, message, catch_up, paused, next_fire_at, created_by, role, \
         created_at, updated_at"
    };
}

pub(super) const INSERT_SCHEDULE: &str = "INSERT INTO schedules (id, tenant_id, cron, time_zone, target, message, \
     catch_up, paused, next_fire_at, created_by, role, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)";
/// A schedule ($1), of a tenant ($2) unless NULL.
pub(super) const SCHEDULE: &str =
    concat!("SELECT ", schedule_columns!(), " FROM schedules WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)");
/// A tenant's ($1) newest schedules, at most $2.
pub(super) const SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM schedules WHERE tenant_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
);
/// The same, older than one of the tenant's schedules ($3). A cursor that is not one of
/// the tenant's schedules compares with NULL: an empty page.
pub(super) const SCHEDULES_BEFORE: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM schedules WHERE tenant_id = $1",
    " AND (created_at, id) < (SELECT created_at, id FROM schedules WHERE id = $3 AND tenant_id = $1)",
    " ORDER BY created_at DESC, id DESC LIMIT $2"
);
/// Pauses ($3 true, `next_fire_at` kept) or resumes ($3 false, `next_fire_at` = $4) a
/// schedule ($1) of a tenant ($2) at $5.
pub(super) const SET_PAUSED: &str = concat!(
    "UPDATE schedules SET paused = $3, next_fire_at = CASE WHEN $3 THEN next_fire_at ELSE $4 END, ",
    "updated_at = $5 WHERE id = $1 AND tenant_id = $2 RETURNING ",
    schedule_columns!()
);
pub(super) const DELETE_SCHEDULE: &str = "DELETE FROM schedules WHERE id = $1 AND tenant_id = $2";
/// Active schedules due at $1, soonest first, at most $2.
pub(super) const DUE_SCHEDULES: &str = concat!(
    "SELECT ",
    schedule_columns!(),
    " FROM schedules WHERE paused = FALSE AND next_fire_at IS NOT NULL AND next_fire_at <= $1 ",
    "ORDER BY next_fire_at LIMIT $2"
);
/// Moves `next_fire_at` of $1 from $2 to $3 at $4, if it is still $2 and not paused.
pub(super) const ADVANCE: &str = "UPDATE schedules SET next_fire_at = $3, updated_at = $4 \
     WHERE id = $1 AND next_fire_at = $2 AND paused = FALSE";
pub(super) const RECORD_FIRE: &str = "INSERT INTO schedule_fires (schedule_id, fire_at, session_id, run_id, at) \
     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (schedule_id, fire_at) DO NOTHING";
/// A schedule's ($1) latest fires, at most $2.
pub(super) const FIRES: &str = "SELECT schedule_id, fire_at, session_id, run_id, at FROM schedule_fires \
     WHERE schedule_id = $1 ORDER BY fire_at DESC LIMIT $2";

/// A raw `schedules` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct ScheduleRow {
    id: String,
    tenant_id: String,
    cron: String,
    time_zone: String,
    target: String,
    message: String,
    catch_up: String,
    paused: bool,
    next_fire_at: Option<DateTime<Utc>>,
    created_by: String,
    role: String,
    created_at: DateTime<Utc>,
    updated_at: DateTime<Utc>,
}

impl TryFrom<ScheduleRow> for Schedule {
    type Error = StoreError;

    fn try_from(row: ScheduleRow) -> Result<Self, StoreError> {
        let what = format!("schedule {}", row.id);
        let corrupt = |e: String| StoreError::Corrupt(format!("{what}: {e}"));
        Ok(Schedule {
            id: ScheduleId::parse(&row.id).map_err(|e| corrupt(e.to_string()))?,
            tenant: TenantId::parse(&row.tenant_id).map_err(|e| corrupt(e.to_string()))?,
            cron: row.cron,
            time_zone: row.time_zone,
            target: serde_json::from_str::<ScheduleTarget>(&row.target).map_err(|e| corrupt(format!("target: {e}")))?,
            message: row.message,
            catch_up: CatchUp::parse(&row.catch_up).ok_or_else(|| corrupt(format!("catch_up {}", row.catch_up)))?,
            paused: row.paused,
            next_fire_at: row.next_fire_at,
            created_by: row.created_by,
            role: row.role.parse::<Role>().map_err(|e| corrupt(e.to_string()))?,
            created_at: row.created_at,
            updated_at: row.updated_at,
        })
    }
}

/// A raw `schedule_fires` row.
#[derive(Debug, sqlx::FromRow)]
pub(super) struct FireRow {
    schedule_id: String,
    fire_at: DateTime<Utc>,
    session_id: String,
    run_id: String,
    at: DateTime<Utc>,
}

impl TryFrom<FireRow> for ScheduleFire {
    type Error = StoreError;

    fn try_from(row: FireRow) -> Result<Self, StoreError> {
        let corrupt = |e: maestro_core::IdError| StoreError::Corrupt(format!("fire of {}: {e}", row.schedule_id));
        Ok(ScheduleFire {
            schedule: ScheduleId::parse(&row.schedule_id).map_err(corrupt)?,
            fire_at: row.fire_at,
            session: SessionId::parse(&row.session_id).map_err(corrupt)?,
            run: RunId::parse(&row.run_id).map_err(corrupt)?,
            at: row.at,
        })
    }
}

/// Implements [`maestro_core::ScheduleStore`] and the unit of work's schedule writes
/// (`schedule_advance`, `schedule_record_fire`, called by `unit.rs`) for a store type
/// with a `pool` field.
macro_rules! impl_schedule_queries {
    ($store:ty) => {
        impl $store {
            /// Compare-and-set of a schedule's next fire.
            pub(super) async fn schedule_advance(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                id: &maestro_core::schedule::ScheduleId,
                from: chrono::DateTime<chrono::Utc>,
                to: Option<chrono::DateTime<chrono::Utc>>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, maestro_core::StoreError> {
                let done = sqlx::query(super::schedules::ADVANCE)
                    .bind(id.as_str())
                    .bind(super::runs::ms(from))
                    .bind(to.map(super::runs::ms))
                    .bind(super::runs::ms(at))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::backend_err)?;
                Ok(done.rows_affected() == 1)
            }

            /// Records a fire unless recorded already.
            pub(super) async fn schedule_record_fire(
                conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                fire: &maestro_core::schedule::ScheduleFire,
            ) -> Result<bool, maestro_core::StoreError> {
                let done = sqlx::query(super::schedules::RECORD_FIRE)
                    .bind(fire.schedule.as_str())
                    .bind(super::runs::ms(fire.fire_at))
                    .bind(fire.session.as_str())
                    .bind(fire.run.as_str())
                    .bind(super::runs::ms(fire.at))
                    .execute(&mut *conn)
                    .await
                    .map_err(super::map_err(&format!("schedule {}", fire.schedule)))?;
                Ok(done.rows_affected() == 1)
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::ScheduleStore for $store {
            async fn create_schedule(
                &self,
                schedule: &maestro_core::schedule::Schedule,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::schedules::INSERT_SCHEDULE)
                    .bind(schedule.id.as_str())
                    .bind(schedule.tenant.as_str())
                    .bind(&schedule.cron)
                    .bind(&schedule.time_zone)
                    .bind(super::runs::to_json(&schedule.target)?)
                    .bind(&schedule.message)
                    .bind(schedule.catch_up.as_str())
                    .bind(schedule.paused)
                    .bind(schedule.next_fire_at.map(super::runs::ms))
                    .bind(&schedule.created_by)
                    .bind(schedule.role.as_str())
                    .bind(super::runs::ms(schedule.created_at))
                    .bind(super::runs::ms(schedule.updated_at))
                    .execute(&self.pool)
                    .await
                    .map_err(super::map_err(&format!("schedule {}", schedule.id)))?;
                Ok(())
            }

            async fn schedule(
                &self,
                tenant: Option<&maestro_core::TenantId>,
                id: &maestro_core::schedule::ScheduleId,
            ) -> Result<Option<maestro_core::schedule::Schedule>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::schedules::ScheduleRow>(super::schedules::SCHEDULE)
                    .bind(id.as_str())
                    .bind(tenant.map(|t| t.as_str()))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::schedule::Schedule::try_from)
                    .transpose()
            }

            async fn schedules(
                &self,
                tenant: &maestro_core::TenantId,
                before: Option<&maestro_core::schedule::ScheduleId>,
                limit: u32,
            ) -> Result<Vec<maestro_core::schedule::Schedule>, maestro_core::StoreError> {
                let sql =
                    if before.is_some() { super::schedules::SCHEDULES_BEFORE } else { super::schedules::SCHEDULES };
                let mut query = sqlx::query_as::<_, super::schedules::ScheduleRow>(sql)
                    .bind(tenant.as_str())
                    .bind(super::runs::page(limit));
                if let Some(before) = before {
                    query = query.bind(before.as_str());
                }
                let rows = query.fetch_all(&self.pool).await.map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn set_schedule_paused(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::schedule::ScheduleId,
                paused: bool,
                next_fire_at: Option<chrono::DateTime<chrono::Utc>>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<Option<maestro_core::schedule::Schedule>, maestro_core::StoreError> {
                sqlx::query_as::<_, super::schedules::ScheduleRow>(super::schedules::SET_PAUSED)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .bind(paused)
                    .bind(next_fire_at.map(super::runs::ms))
                    .bind(super::runs::ms(at))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(super::backend_err)?
                    .map(maestro_core::schedule::Schedule::try_from)
                    .transpose()
            }

            async fn delete_schedule(
                &self,
                tenant: &maestro_core::TenantId,
                id: &maestro_core::schedule::ScheduleId,
            ) -> Result<bool, maestro_core::StoreError> {
                let done = sqlx::query(super::schedules::DELETE_SCHEDULE)
                    .bind(id.as_str())
                    .bind(tenant.as_str())
                    .execute(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                Ok(done.rows_affected() == 1)
            }

            async fn due_schedules(
                &self,
                now: chrono::DateTime<chrono::Utc>,
                limit: u32,
            ) -> Result<Vec<maestro_core::schedule::Schedule>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::schedules::ScheduleRow>(super::schedules::DUE_SCHEDULES)
                    .bind(super::runs::ms(now))
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }

            async fn schedule_fires(
                &self,
                id: &maestro_core::schedule::ScheduleId,
                limit: u32,
            ) -> Result<Vec<maestro_core::schedule::ScheduleFire>, maestro_core::StoreError> {
                let rows = sqlx::query_as::<_, super::schedules::FireRow>(super::schedules::FIRES)
                    .bind(id.as_str())
                    .bind(super::runs::page(limit))
                    .fetch_all(&self.pool)
                    .await
                    .map_err(super::backend_err)?;
                super::runs::from_rows(rows)
            }
        }
    };
}
pub(super) use impl_schedule_queries;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every read and conditional write is one indexed search on SQLite (no table scan,
    /// no sort step): the tick stays cheap however many schedules there are.
    #[tokio::test]
    async fn every_query_searches_an_index_on_sqlite() {
        let queries = [
            ("SCHEDULE", SCHEDULE),
            ("SCHEDULES", SCHEDULES),
            ("SCHEDULES_BEFORE", SCHEDULES_BEFORE),
            ("SET_PAUSED", SET_PAUSED),
            ("DELETE_SCHEDULE", DELETE_SCHEDULE),
            ("DUE_SCHEDULES", DUE_SCHEDULES),
            ("ADVANCE", ADVANCE),
            ("FIRES", FIRES),
        ];
        crate::storage::assert_indexed_on_sqlite(&queries).await;
    }
}

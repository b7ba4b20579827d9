//! [`maestro_core::UnitOfWork`]: one store transaction through which several ports write
//! (a ledger posting and a job today; a run's event and its credit settlement next).
//! Expanded per store type by [`impl_unit_of_work!`]; the transaction is the backend's
//! `begin_ledger` (SQLite: `BEGIN IMMEDIATE`; Postgres: `synchronous_commit = on`), so a
//! unit that posts credits is as durable as a posting on its own.
//!
//! A posting inside a unit runs under a savepoint: when it is refused (insufficient
//! credits, a closed hold, a reused key) its partial writes are rolled back to the
//! savepoint and the unit stays usable, answering exactly as [`maestro_core::LedgerStore::post`]
//! would. Dropping a unit without committing rolls it back (sqlx rolls back a dropped
//! transaction).

/// Implements [`maestro_core::UnitOfWork`] for `$store` with `$tx` as its transaction.
macro_rules! impl_unit_of_work {
    ($store:ty, $tx:ident) => {
        /// An open unit of work on this backend.
        pub struct $tx {
            tx: sqlx::Transaction<'static, <$store as super::Backend>::Db>,
        }

        impl std::fmt::Debug for $tx {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.debug_struct(stringify!($tx)).finish_non_exhaustive()
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::UnitOfWork for $store {
            async fn begin(&self) -> Result<Box<dyn maestro_core::Tx>, maestro_core::StoreError> {
                Ok(Box::new($tx { tx: self.begin_ledger().await? }))
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::Tx for $tx {
            async fn post(
                &mut self,
                posting: &maestro_core::Posting,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Posted, maestro_core::LedgerError> {
                let be = super::backend_err;
                posting.check()?;
                let fingerprint = posting.fingerprint();
                sqlx::query("SAVEPOINT maestro_post").execute(&mut *self.tx).await.map_err(be)?;
                match <$store>::ledger_apply(&mut *self.tx, posting, &fingerprint, at).await {
                    Ok(posted) => {
                        sqlx::query("RELEASE SAVEPOINT maestro_post").execute(&mut *self.tx).await.map_err(be)?;
                        Ok(posted)
                    }
                    Err(err) => {
                        sqlx::query("ROLLBACK TO SAVEPOINT maestro_post").execute(&mut *self.tx).await.map_err(be)?;
                        sqlx::query("RELEASE SAVEPOINT maestro_post").execute(&mut *self.tx).await.map_err(be)?;
                        <$store>::ledger_after_failure(&mut *self.tx, posting, &fingerprint, err).await
                    }
                }
            }

            async fn enqueue(
                &mut self,
                job: &maestro_core::NewJob,
                now: chrono::DateTime<chrono::Utc>,
            ) -> Result<maestro_core::Enqueued, maestro_core::StoreError> {
                <$store>::job_enqueue(&mut *self.tx, job, now).await
            }

            async fn insert_message(
                &mut self,
                message: &maestro_core::run::Message,
            ) -> Result<maestro_core::run::Message, maestro_core::StoreError> {
                <$store>::run_insert_message(&mut *self.tx, message).await
            }

            async fn insert_run(&mut self, run: &maestro_core::run::Run) -> Result<(), maestro_core::StoreError> {
                <$store>::run_insert(&mut *self.tx, run).await
            }

            async fn update_run(&mut self, run: &maestro_core::run::Run) -> Result<(), maestro_core::StoreError> {
                <$store>::run_update(&mut *self.tx, run).await
            }

            async fn append_event(
                &mut self,
                event: &maestro_core::run::NewEvent,
            ) -> Result<maestro_core::run::RunEvent, maestro_core::StoreError> {
                <$store>::run_append_event(&mut *self.tx, event).await
            }

            async fn insert_session(
                &mut self,
                session: &maestro_core::run::Session,
            ) -> Result<(), maestro_core::StoreError> {
                sqlx::query(super::runs::INSERT_SESSION)
                    .bind(session.id.as_str())
                    .bind(session.tenant.as_str())
                    .bind(&session.title)
                    .bind(super::runs::to_json(&session.personas)?)
                    .bind(session.strategy.as_str())
                    .bind(super::runs::to_json(&session.limits)?)
                    .bind(&session.created_by)
                    .bind(super::runs::ms(session.created_at))
                    .execute(&mut *self.tx)
                    .await
                    .map_err(super::map_err(&format!("session {}", session.id)))?;
                Ok(())
            }

            async fn advance_schedule(
                &mut self,
                id: &maestro_core::schedule::ScheduleId,
                from: chrono::DateTime<chrono::Utc>,
                to: Option<chrono::DateTime<chrono::Utc>>,
                at: chrono::DateTime<chrono::Utc>,
            ) -> Result<bool, maestro_core::StoreError> {
                <$store>::schedule_advance(&mut *self.tx, id, from, to, at).await
            }

            async fn record_fire(
                &mut self,
                fire: &maestro_core::schedule::ScheduleFire,
            ) -> Result<bool, maestro_core::StoreError> {
                <$store>::schedule_record_fire(&mut *self.tx, fire).await
            }

            async fn commit(self: Box<Self>) -> Result<(), maestro_core::StoreError> {
                self.tx.commit().await.map_err(super::backend_err)
            }

            async fn rollback(self: Box<Self>) -> Result<(), maestro_core::StoreError> {
                self.tx.rollback().await.map_err(super::backend_err)
            }

            async fn update_run_if(
                &mut self,
                run: &maestro_core::run::Run,
                expected: maestro_core::run::RunState,
            ) -> Result<bool, maestro_core::StoreError> {
                <$store>::run_update_if(&mut *self.tx, run, expected).await
            }

            async fn record_search_change(
                &mut self,
                change: &maestro_core::search::SearchChange,
            ) -> Result<(), maestro_core::StoreError> {
                <$store>::search_record(&mut *self.tx, change).await
            }
        }
    };
}

pub(super) use impl_unit_of_work;

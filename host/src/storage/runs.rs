//! [`maestro_core::RunStore`] and the run half of the unit of work. TEMPORARY: every
//! method answers a backend error until the storage work for issue 10 lands.

macro_rules! impl_run_queries {
    ($store:ty) => {
        impl $store {
            pub(super) async fn run_insert_message(
                _conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                _message: &maestro_core::run::Message,
            ) -> Result<maestro_core::run::Message, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            pub(super) async fn run_insert(
                _conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                _run: &maestro_core::run::Run,
            ) -> Result<(), maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            pub(super) async fn run_update(
                _conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                _run: &maestro_core::run::Run,
            ) -> Result<(), maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            pub(super) async fn run_append_event(
                _conn: &mut <<$store as super::Backend>::Db as sqlx::Database>::Connection,
                _event: &maestro_core::run::NewEvent,
            ) -> Result<maestro_core::run::RunEvent, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
        }

        #[async_trait::async_trait]
        impl maestro_core::RunStore for $store {
            async fn create_session(&self, _s: &maestro_core::run::Session) -> Result<(), maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn session(
                &self,
                _t: &maestro_core::TenantId,
                _id: &maestro_core::run::SessionId,
            ) -> Result<Option<maestro_core::run::Session>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn sessions(
                &self,
                _t: &maestro_core::TenantId,
                _b: Option<&maestro_core::run::SessionId>,
                _l: u32,
            ) -> Result<Vec<maestro_core::run::Session>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn messages(
                &self,
                _t: &maestro_core::TenantId,
                _s: &maestro_core::run::SessionId,
                _a: i64,
                _l: u32,
            ) -> Result<Vec<maestro_core::run::Message>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn run(
                &self,
                _t: Option<&maestro_core::TenantId>,
                _id: &maestro_core::run::RunId,
            ) -> Result<Option<maestro_core::run::Run>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn runs(
                &self,
                _t: &maestro_core::TenantId,
                _s: &maestro_core::run::SessionId,
                _l: u32,
            ) -> Result<Vec<maestro_core::run::Run>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn run_events(
                &self,
                _r: &maestro_core::run::RunId,
                _a: i64,
                _l: u32,
            ) -> Result<Vec<maestro_core::run::RunEvent>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn session_events(
                &self,
                _s: &maestro_core::run::SessionId,
                _a: i64,
                _l: u32,
            ) -> Result<Vec<maestro_core::run::RunEvent>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn session_head(&self, _s: &maestro_core::run::SessionId) -> Result<i64, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
            async fn request_cancel(
                &self,
                _t: &maestro_core::TenantId,
                _id: &maestro_core::run::RunId,
            ) -> Result<Option<maestro_core::run::Run>, maestro_core::StoreError> {
                Err(super::runs::pending())
            }
        }
    };
}
pub(super) use impl_run_queries;

pub(super) fn pending() -> maestro_core::StoreError {
    maestro_core::StoreError::Backend("run storage is not built yet".into())
}
